"""What every backend request needs to know about its problem, the one transport call it makes,
and the shape check both backends apply to a response's list of entries.

Rules:
- Values and pure functions only: nothing here does I/O or holds a session.
- Seeds derive from (base seed, problem id, tree position) through a cryptographic hash, so a
  branch draws the same seed in every process and on every run (`hash()` is salted per process).
- A backend sees the transport only through `PostJson`, so backends type-check and are tested
  without aiohttp.
- A batch token budget (`BudgetGate`, shared by every problem of a run): before a request is
  sent the backend holds an upper bound of what it can cost (a generation: k x max_tokens; a
  scoring: the prompts' characters, as no tokenizer makes more tokens than characters); the
  bound is let go when the request has ended, by which time the problem's `MeteredLedger`
  has added the actual cost to the gate. A bound that does not fit in the budget left
  (budget - spent - held) waits for requests in flight to settle, and once it cannot fit
  even with none in flight (budget - spent: spent only grows) the request is not sent. So
  the run never spends more than its budget. Spend is counted as the calibration table
  counts it: policy generated + PRM prompt tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, cast

from asynctts.errors import AsyncttsError, BadResponse, ConfigError
from asynctts.ledger import Attempt, Charge, Ledger

# The system prompt search-and-learn used for Llama-3.2 Instruct on MATH
# (docs/design.md, section 3).
DEFAULT_SYSTEM_PROMPT = (
    "Solve the following math problem efficiently and clearly:\n\n"
    "- For simple problems (2 steps or fewer):\n"
    "Provide a concise solution with minimal explanation.\n\n"
    "- For complex problems (3 steps or more):\n"
    "Use this step-by-step format:\n\n"
    "## Step 1: [Concise description]\n"
    "[Brief explanation and calculations]\n\n"
    "## Step 2: [Concise description]\n"
    "[Brief explanation and calculations]\n\n"
    "...\n\n"
    "Regardless of the approach, always conclude with:\n\n"
    "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct.\n\n"
    "Where [answer] is just the final number or expression that solves the problem."
)

# vLLM gives child i of an `n`-sample request the seed `seed + i`
# (vllm/v1/engine/parallel_sampling.py), so seeds leave room for 1024 children below 2**31 - 1.
SEED_CHILD_ROOM = 1024
MAX_SEED = 2**31 - 1 - SEED_CHILD_ROOM


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling settings of the policy (search-and-learn's defaults)."""

    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"Sampling temperature={self.temperature}: need a finite value >= 0")
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"Sampling top_p={self.top_p}: need 0 < top_p <= 1")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ConfigError(f"Sampling max_tokens={self.max_tokens!r}: need an int")
        if self.max_tokens < 1:
            raise ConfigError(f"Sampling max_tokens={self.max_tokens}: need >= 1")


class BatchBudgetExhausted(AsyncttsError):
    """A request was not sent: its cost could exceed what is left of the batch budget."""

    def __init__(self, bound: float, left: float, budget: float) -> None:
        super().__init__(
            f"batch budget exhausted: the request may cost up to {bound:.0f} tokens, "
            f"{max(left, 0.0):.0f} of {budget:.0f} are left"
        )
        self.bound = bound
        self.left = left
        self.budget = budget


class BudgetGate:
    """One token budget shared by the requests of a run (see the module rules)."""

    def __init__(self, budget: float) -> None:
        if not (math.isfinite(budget) and budget > 0):
            raise ConfigError(f"budget_tokens={budget}: need a finite number > 0")
        self.budget = float(budget)
        self.spent = 0.0  # the ledgers' actual spend so far
        self.held = 0.0  # upper bounds of the requests in flight
        self._settled = asyncio.Condition()

    @property
    def left(self) -> float:
        return self.budget - self.spent - self.held

    @asynccontextmanager
    async def hold(self, bound: float) -> AsyncIterator[None]:
        """Around one request: hold `bound` tokens while it is in flight, once they fit.

        Raises:
            BatchBudgetExhausted: `bound` cannot fit, even once every request in flight has
                settled (nothing is held).
        """
        async with self._settled:
            while bound > self.left:
                if bound > self.budget - self.spent:
                    raise BatchBudgetExhausted(bound, self.budget - self.spent, self.budget)
                await self._settled.wait()
            self.held += bound
        try:
            yield
        finally:
            self.held -= bound
            async with self._settled:
                self._settled.notify_all()

    def ledger(self) -> MeteredLedger:
        """A problem's ledger whose attempts count against this budget."""
        return MeteredLedger(gate=self)


@dataclass(eq=False)
class MeteredLedger(Ledger):
    """A ledger that adds each attempt's spend (policy generated, PRM prompt tokens) to its
    gate as the attempt is recorded."""

    gate: BudgetGate | None = None

    def record(self, attempt: Attempt) -> None:
        super().record(attempt)
        if self.gate is not None:
            prm = attempt.endpoint == "prm"
            self.gate.spent += attempt.prompt_tokens if prm else attempt.completion_tokens


_NO_GATE: AbstractAsyncContextManager[None] = nullcontext()


@dataclass(frozen=True, slots=True)
class ProblemContext:
    """One problem as the backends see it: its id (for seeds and logs), its text, the system
    prompt of the policy (None: none), the base seed (None: unseeded), its ledger and the
    batch budget its requests draw on (None: no budget)."""

    problem_id: str
    problem: str
    system_prompt: str | None
    seed: int | None
    ledger: Ledger
    gate: BudgetGate | None = None

    def hold(self, bound: float) -> AbstractAsyncContextManager[None]:
        """`gate.hold(bound)` around one request; nothing without a gate."""
        return _NO_GATE if self.gate is None else self.gate.hold(bound)


def derive_seed(base: int, problem_id: str, key: tuple[int, ...]) -> int:
    """The seed of the request that samples the children of the path at `key`.

    Stable across processes and runs, distinct (with overwhelming probability) across problems
    and tree positions, and in [0, MAX_SEED] so that `seed + i` for a path's children stays a
    valid 31-bit seed for up to SEED_CHILD_ROOM children.
    """
    material = f"{base}\x1f{problem_id}\x1f{'.'.join(map(str, key))}".encode()
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") % (MAX_SEED + 1)


class PostJson(Protocol):
    """The part of `asynctts.transport.Transport` the backends use. It retries inside and
    raises `asynctts.errors.TransportError` subclasses when it gives up. `affinity` is the
    problem id a request is sent for: an endpoint with several servers keeps a problem's
    requests on one of them."""

    async def post_json(
        self,
        route: str,
        body: Mapping[str, Any],
        *,
        charges: Sequence[Charge] = (),
        tokens_hint: int = 0,
        affinity: str | None = None,
    ) -> dict[str, Any]: ...


def in_index_order(
    response: Mapping[str, Any], field: str, n: int, route: str
) -> list[Mapping[str, Any]]:
    """`response[field]` (the policy's "choices", the PRM's "data" or "choices"), one object per
    sample or input, ordered by each entry's "index" (default: its position): the wire format
    numbers the entries, so the list's own order is not relied on.

    Raises:
        BadResponse: `field` is not a list of `n` objects with distinct indexes in 0..n-1 (the
            message names the route, the field and the entry).
    """
    items = response.get(field)
    if not isinstance(items, list):
        raise BadResponse(f"{route}: '{field}' is {type_name(items)}, expected a list")
    if len(items) != n:
        raise BadResponse(f"{route}: {len(items)} entries in '{field}', expected {n}")
    ordered: list[Mapping[str, Any] | None] = [None] * n
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise BadResponse(f"{route}: {field}[{position}] is {type_name(item)}, not an object")
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise BadResponse(f"{route}: {field}[{position}].index is {index!r}, need 0..{n - 1}")
        if ordered[index] is not None:
            raise BadResponse(f"{route}: {field}[{position}].index {index} is repeated")
        ordered[index] = item
    # n entries with distinct indexes in 0..n-1 fill every slot
    return cast(list[Mapping[str, Any]], ordered)


def type_name(value: object) -> str:
    """A JSON value's type for error messages; None (an absent field) is "missing"."""
    return "missing" if value is None else type(value).__name__
