"""An append-only record of every HTTP attempt made for one problem; all usage figures
derive from it alone.

One `Attempt` per try of a request. A request that served several branches of the problem
(siblings sharing `n=k`, or a coalesced PRM call) lists them all in `branches`; a coalesced
PRM request shared with other problems carries this problem's `share` of the tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import NamedTuple


class Attempt(NamedTuple):
    """One try of one request. A named tuple: built once per attempt on the hot path, it
    costs a third of a frozen 13-field dataclass (0.5 us against 1.7 us)."""

    endpoint: str  # "policy" or "prm"
    route: str
    branches: tuple[str, ...]
    attempt: int  # 1 for the first try of a request, 2 for its first retry, ...
    start_s: float
    end_s: float
    status: int | None  # HTTP status, None when no response arrived
    error: str | None = None  # exception type and message when the attempt failed
    prompt_tokens: float = 0.0
    cached_tokens: float = 0.0
    completion_tokens: float = 0.0
    share: float = 1.0  # this problem's fraction of a request coalesced across problems


@dataclass(frozen=True, slots=True)
class Usage:
    """Totals over a set of attempts. Token counts of requests shared across problems are
    apportioned by `share`, so the sum over problems equals what the servers billed."""

    requests: int = 0  # first attempts
    retries: int = 0  # later attempts
    failures: int = 0  # attempts that ended in an error
    prompt_tokens: float = 0.0  # policy
    cached_tokens: float = 0.0  # policy prompt tokens served from the prefix cache
    completion_tokens: float = 0.0  # policy
    prm_tokens: float = 0.0  # PRM prompt tokens
    latency_s: float = 0.0  # summed duration of all attempts

    def __add__(self, other: Usage) -> Usage:
        names = (f.name for f in fields(self))
        return Usage(**{n: getattr(self, n) + getattr(other, n) for n in names})

    @staticmethod
    def of(attempts: Iterable[Attempt], *, per_branch: int = 1) -> Usage:
        # Summed in locals, not as one Usage per attempt added up (~4 us per attempt): every
        # solved problem sums its ledger for its log line.
        requests = retries = failures = 0
        prompt = cached = completion = prm = latency = 0.0
        for a in attempts:
            if a.attempt == 1:
                requests += 1
            else:
                retries += 1
            if a.error is not None:
                failures += 1
            if a.endpoint == "prm":
                prm += a.prompt_tokens / per_branch
            else:
                prompt += a.prompt_tokens / per_branch
                cached += a.cached_tokens / per_branch
                completion += a.completion_tokens / per_branch
            latency += a.end_s - a.start_s
        return Usage(
            requests=requests,
            retries=retries,
            failures=failures,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            prm_tokens=prm,
            latency_s=latency,
        )


@dataclass(eq=False)
class Ledger:
    """The attempts of one problem, in the order they ended, plus its wall-clock span."""

    clock: Callable[[], float] = time.monotonic
    attempts: list[Attempt] = field(default_factory=list)
    started_s: float | None = None
    ended_s: float | None = None

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def start(self) -> None:
        self.started_s = self.clock()

    def stop(self) -> None:
        self.ended_s = self.clock()

    @property
    def wall_s(self) -> float:
        if self.started_s is None:
            return 0.0
        end = self.ended_s if self.ended_s is not None else self.clock()
        return end - self.started_s

    def totals(self) -> Usage:
        return Usage.of(self.attempts)

    def by_branch(self) -> dict[str, Usage]:
        """Usage per branch id; a request serving several branches is split evenly between
        them for tokens and counted once for each of them as a request."""
        out: dict[str, Usage] = {}
        for a in self.attempts:
            part = Usage.of((a,), per_branch=len(a.branches) or 1)
            for branch in a.branches:
                out[branch] = out.get(branch, Usage()) + part
        return out

    def summary(self) -> dict[str, float]:
        """Totals and wall time as a flat dict (for logs, JSON reports and printing)."""
        totals = self.totals()
        out: dict[str, float] = {f.name: getattr(totals, f.name) for f in fields(totals)}
        out["wall_s"] = self.wall_s
        return out


@dataclass(frozen=True, slots=True)
class Charge:
    """Whom a request is billed to: one problem's ledger, the branches it served, and the
    problem's share of the request when it was coalesced with other problems."""

    ledger: Ledger
    branches: tuple[str, ...]
    share: float = 1.0
