"""Step generation over an OpenAI-compatible endpoint (vLLM's /v1/completions or
/v1/chat/completions): the k children of a path come from one request with `n=k`.

Rules:
- `encode_*` and `decode_*` are pure (sans-I/O) and tested on JSON fixtures; `PolicyClient` only
  renders, calls `transport.post_json` and maps failures.
- Finish mapping (search-and-learn mapped a missing stop reason to EOS, so truncation looked like
  a finish; here every case is explicit):
  "length" -> LENGTH; "stop" with stop_reason == delimiter -> STEP; "stop" with stop_reason null
  (or a stop token id) -> EOS. Servers that send no `stop_reason` key at all cannot tell a step
  boundary from EOS: "stop" is then taken as STEP (the delimiter appended if missing), and a
  solution that had ended yields an empty next step, which ends it. New text that is empty or
  whitespace -> EMPTY, with no step added (nothing to score).
- Seeds: the request for children [offset, offset + m) of a path carries
  `derive_seed(...) + offset`. vLLM gives child j of a request `seed + j`, so children draw the
  same seeds however `k` is split across requests.
- Greedy requests (`greedy=True`, for lookahead rollouts) are sent at temperature 0; their
  seed is sent as usual and changes nothing.
- A failed request, or one the batch budget cannot cover (`BudgetGate`), loses the branch
  (`BranchLost`), except that a prompt over the context length is an honest truncation of a
  partial solution (LENGTH children) and, at the root, means the problem itself does not fit
  (`PromptTooLong`). Cancellation always propagates.
- Chat mode and templates that trim message bodies (Llama 3.x: `content | trim`): the final
  assistant message loses its trailing delimiter, the model writes the delimiter first, and
  the step stop would fire at once on an empty step. Before its first continuation a client
  asks the server once whether its template keeps the delimiter: two 1-token requests
  continuing "2" and "2" + delimiter; the same `usage.prompt_tokens` for both means it was
  trimmed (charged to the problem that asked, under no branch). A server that ignores
  `min_tokens` still stops at once (empty steps end those solutions). Against such a template a
  continuation sends `min_tokens` = the delimiter's UTF-8 length (vLLM ignores a stop string
  that ends within the first `min_tokens` tokens, and a delimiter of b bytes is at most b
  tokens) and the leading delimiter of each returned text is dropped: the previous step
  already ends with it, so the steps read as in completions mode. Costs: the model cannot
  end (EOS) within those first tokens, and `usage` counts the delimiter it wrote again.
  Templates that keep the delimiter get requests and decoding exactly as before.
- A path's earlier turns (`Path.turns`) go into the conversation before its own assistant
  turn (templates.py); a completions endpoint with a plain `prompt_format` cannot write them,
  and a solve whose strategy sends turns is refused before any request (`check_turns`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any

import structlog

from asynctts.backends.context import (
    BatchBudgetExhausted,
    PostJson,
    ProblemContext,
    Sampling,
    derive_seed,
    in_index_order,
    type_name,
)
from asynctts.backends.templates import PolicyPrompt, chat_fields, turns_refusal
from asynctts.endpoint import Endpoint
from asynctts.errors import (
    AsyncttsError,
    BadResponse,
    BranchLost,
    ConfigError,
    ContextLengthExceeded,
    PromptTooLong,
    TransportError,
    format_key,
)
from asynctts.ledger import Charge
from asynctts.protocols import STEP_DELIMITER, Finish, Path

COMPLETIONS_ROUTE = "/v1/completions"
CHAT_ROUTE = "/v1/chat/completions"

log = structlog.get_logger("asynctts.backends.policy")

NewSteps = tuple[tuple[str, ...], Finish]


def sampling_fields(
    sampling: Sampling,
    *,
    n: int,
    delimiter: str,
    to_end: bool,
    seed: int | None,
    min_tokens: int = 0,
) -> dict[str, Any]:
    """The sampling part of a request body, shared by both modes."""
    body: dict[str, Any] = {
        "n": n,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if not to_end:
        body["stop"] = [delimiter]
    if min_tokens:
        body["min_tokens"] = min_tokens
    body["include_stop_str_in_output"] = True
    if seed is not None:
        body["seed"] = seed
    return body


def encode_completions(
    *,
    model: str,
    prompt: str | list[int],
    sampling: Sampling,
    n: int,
    delimiter: str = STEP_DELIMITER,
    to_end: bool = False,
    seed: int | None = None,
) -> dict[str, Any]:
    """The body of POST /v1/completions; `prompt` is text or token ids (vLLM takes both)."""
    return {
        "model": model,
        "prompt": prompt,
        **sampling_fields(sampling, n=n, delimiter=delimiter, to_end=to_end, seed=seed),
    }


def encode_chat(
    *,
    model: str,
    problem: str,
    system: str | None,
    partial: str,
    sampling: Sampling,
    n: int,
    delimiter: str = STEP_DELIMITER,
    to_end: bool = False,
    seed: int | None = None,
    trimmed: bool = False,
    turns: Sequence[str] = (),
) -> dict[str, Any]:
    """The body of POST /v1/chat/completions (vLLM reads the extra fields at top level).
    `trimmed`: the server's template drops the partial's trailing delimiter, so a step must
    not stop on the delimiter the model writes first (`trim_min_tokens`). `turns`: the
    earlier turns before the partial's own (see `chat_fields`)."""
    min_tokens = trim_min_tokens(sampling, delimiter) if trimmed and partial and not to_end else 0
    return {
        "model": model,
        **chat_fields(problem, system, partial, turns),
        **sampling_fields(
            sampling, n=n, delimiter=delimiter, to_end=to_end, seed=seed, min_tokens=min_tokens
        ),
    }


def check_turns(endpoint: Endpoint, asker: str) -> None:
    """Refuses, before any request, a policy endpoint that cannot render the earlier turns
    (`Path.turns`) `asker` will send: completions mode with a plain `prompt_format` (chat mode
    and chat templates render them).

    Raises:
        ConfigError: names the endpoint, `asker` and the prompt_format.
    """
    if endpoint.mode == "completions" and endpoint.prompt_format is not None:
        raise ConfigError(
            f"{asker} sends earlier turns to policy endpoint {endpoint.base_url}, but "
            + turns_refusal(endpoint.prompt_format)
        )


def trim_min_tokens(sampling: Sampling, delimiter: str) -> int:
    """Tokens a continuation must write before the step stop may fire when the template
    trimmed the delimiter: at most one token per byte (vLLM rejects min_tokens > max_tokens)."""
    return min(len(delimiter.encode()), sampling.max_tokens)


# The conversation the trim probe continues: tiny, so the two requests cost a few tokens.
_PROBE_PROBLEM = "1 + 1"
_PROBE_PARTIAL = "2"


def encode_trim_probe(*, model: str, delimiter: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two chat bodies that tell whether a template keeps the final message's trailing
    `delimiter`: continuing "2" and "2" + delimiter, one greedy token each."""

    def body(partial: str) -> dict[str, Any]:
        fields = {"n": 1, "max_tokens": 1, "temperature": 0.0}
        return {"model": model, **chat_fields(_PROBE_PROBLEM, None, partial), **fields}

    return body(_PROBE_PARTIAL), body(_PROBE_PARTIAL + delimiter)


def decode_trim_probe(without: Mapping[str, Any], with_delimiter: Mapping[str, Any]) -> bool:
    """True when the template trimmed the delimiter: both prompts have the same token count.

    Raises:
        BadResponse: a response has no integer `usage.prompt_tokens`.
    """
    counts = [_prompt_tokens(response) for response in (without, with_delimiter)]
    return counts[1] <= counts[0]


def _prompt_tokens(response: Mapping[str, Any]) -> int:
    usage = response.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        raise BadResponse(
            f"{CHAT_ROUTE}: usage.prompt_tokens is {type_name(tokens)}, expected an int: "
            "needed to tell whether the chat template trims message bodies"
        )
    return tokens


def split_steps(text: str, delimiter: str = STEP_DELIMITER) -> tuple[str, ...]:
    """Split generated text into steps that keep their delimiter: "a\\n\\nb\\n\\nc" ->
    ("a\\n\\n", "b\\n\\n", "c"). Whitespace-only pieces join their neighbour, so no step is
    empty and the steps concatenate back to `text`; all-whitespace text has no steps."""
    parts = text.split(delimiter)
    pieces = [part + delimiter for part in parts[:-1]]
    if parts[-1]:
        pieces.append(parts[-1])
    steps: list[str] = []
    pending = ""
    for piece in pieces:
        if piece.strip():
            steps.append(pending + piece)
            pending = ""
        elif steps:
            steps[-1] += piece
        else:
            pending += piece
    return tuple(steps)


def decode_choices(
    response: Mapping[str, Any],
    *,
    n: int,
    route: str,
    delimiter: str = STEP_DELIMITER,
    to_end: bool = False,
    trimmed: bool = False,
) -> list[NewSteps]:
    """The new steps and finish of each choice, in index order. `trimmed`: the prompt lost the
    partial's trailing delimiter, so a leading delimiter in a text is dropped (the previous
    step already ends with it).

    Raises:
        BadResponse: the response does not hold `n` well-formed choices (names the field).
    """
    return [
        _decode_choice(choice, i, route=route, delimiter=delimiter, to_end=to_end, trimmed=trimmed)
        for i, choice in enumerate(in_index_order(response, "choices", n, route))
    ]


def _decode_choice(
    choice: Mapping[str, Any],
    index: int,
    *,
    route: str,
    delimiter: str,
    to_end: bool,
    trimmed: bool,
) -> NewSteps:
    text = _choice_text(choice, index, route)
    if trimmed:
        text = text.removeprefix(delimiter)
    reason = choice.get("finish_reason")
    if reason == "length":
        finish = Finish.LENGTH
    elif reason != "stop":
        raise BadResponse(
            f"{route}: choices[{index}].finish_reason is {reason!r}, expected 'stop' or 'length'"
        )
    elif to_end:
        # No stop string was sent: "stop" can only be the end of the solution.
        finish = Finish.EOS
    elif "stop_reason" not in choice:
        finish = Finish.STEP  # a server without vLLM's stop_reason: see the module docstring
    else:
        stop_reason = choice["stop_reason"]
        if stop_reason == delimiter:
            finish = Finish.STEP
        elif stop_reason is None or isinstance(stop_reason, int):
            finish = Finish.EOS  # null at EOS; a token id when another stop token fired
        else:
            raise BadResponse(
                f"{route}: choices[{index}].stop_reason is {stop_reason!r}, expected "
                f"{delimiter!r}, null or a token id"
            )
    if not text.strip():
        return (), Finish.EMPTY
    if finish is Finish.STEP and not text.endswith(delimiter):
        text += delimiter  # a server that dropped the stop string despite the request
    if to_end:
        return split_steps(text, delimiter), finish
    return (text,), finish


def _choice_text(choice: Mapping[str, Any], index: int, route: str) -> str:
    if "message" in choice:
        message = choice["message"]
        if not isinstance(message, Mapping):
            raise BadResponse(f"{route}: choices[{index}].message is {type_name(message)}")
        text = message.get("content")
        if text is None:
            return ""  # OpenAI sends null content for an empty message
        field = "message.content"
    else:
        text = choice.get("text")
        field = "text"
    if not isinstance(text, str):
        kind = type_name(text)
        raise BadResponse(f"{route}: choices[{index}].{field} is {kind}, expected a string")
    return text


# Module-level rather than comprehensions inside `PolicyClient._request`: a comprehension
# that reads a local makes it a closure cell, one more object per request in flight.
def branch_ids(key: tuple[int, ...], indexes: range) -> tuple[str, ...]:
    """`format_key((*key, i))` for each index, the shared prefix formatted once."""
    if not key:
        return tuple(map(str, indexes))
    prefix = format_key(key) + "."
    return tuple([prefix + str(i) for i in indexes])


def children(path: Path, indexes: range, decoded: Sequence[NewSteps]) -> list[Path]:
    """Child `i` of `path` for each index, with its new steps and finish."""
    return [
        path.extend(i, steps, finish) for i, (steps, finish) in zip(indexes, decoded, strict=True)
    ]


class PolicyClient:
    """Step generation for one policy endpoint (implements `GenerateSteps` once bound to a
    problem's `ProblemContext`)."""

    def __init__(
        self,
        endpoint: Endpoint,
        transport: PostJson,
        *,
        sampling: Sampling,
        delimiter: str = STEP_DELIMITER,
    ) -> None:
        if not delimiter:
            raise ConfigError("PolicyClient delimiter is empty: steps need a delimiter")
        self._endpoint = endpoint
        self._transport = transport
        self._sampling = sampling
        self._greedy_sampling = replace(sampling, temperature=0.0)
        self._delimiter = delimiter
        # Completions mode renders the template here, so a missing tokenizer fails at
        # construction, before any request.
        self._prompt = (
            PolicyPrompt.for_endpoint(endpoint) if endpoint.mode == "completions" else None
        )
        # chat mode: whether the server's template trims the delimiter (None: not asked yet)
        self._trims: bool | None = None
        self._probe_lock = asyncio.Lock()

    def generate(
        self,
        ctx: ProblemContext,
        path: Path,
        k: int,
        *,
        to_end: bool = False,
        greedy: bool = False,
    ) -> Coroutine[Any, Any, list[Path]]:
        """Awaits to the `k` children of `path` in index order (child i has key
        `path.key + (i,)`); `greedy`: decoded at temperature 0.

        A plain method returning the request's coroutine, so that no coroutine of its own
        stays alive while the request is in flight (benchmarks/overhead.py).

        Raises:
            ValueError: `k` < 1 (at once, before anything is awaited).
            PromptTooLong: the problem's prompt alone exceeds the endpoint's context.
            BranchLost: a request failed for good.
        """
        if k < 1:
            raise ValueError(f"k={k}: need >= 1")
        seed = None if ctx.seed is None else derive_seed(ctx.seed, ctx.problem_id, path.key)
        if k <= self._endpoint.max_n_per_request:
            return self._request(ctx, path, 0, k, seed, to_end, greedy)
        return self._request_chunks(ctx, path, k, seed, to_end, greedy)

    async def _request_chunks(
        self,
        ctx: ProblemContext,
        path: Path,
        k: int,
        seed: int | None,
        to_end: bool,
        greedy: bool,
    ) -> list[Path]:
        # Apart from `generate`: its comprehensions would give every call of `generate` (one
        # per request, alive while it is in flight) a closure cell per captured variable.
        per_request = self._endpoint.max_n_per_request
        chunks = [(offset, min(per_request, k - offset)) for offset in range(0, k, per_request)]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._request(ctx, path, offset, n, seed, to_end, greedy))
                    for offset, n in chunks
                ]
        except ExceptionGroup as failed:
            # Every failure here concerns this one branch: report the first, as one request would.
            if all(isinstance(exc, AsyncttsError) for exc in failed.exceptions):
                raise failed.exceptions[0] from None
            raise
        return [child for task in tasks for child in task.result()]

    async def _request(
        self,
        ctx: ProblemContext,
        path: Path,
        offset: int,
        n: int,
        seed: int | None,
        to_end: bool,
        greedy: bool,
    ) -> list[Path]:
        request_seed = None if seed is None else seed + offset
        trimmed = False
        if self._prompt is None and path.steps:
            trimmed = self._trims if self._trims is not None else await self._probe(ctx, path)
        route, body, prompt_chars = self._encode(
            ctx, path, n, request_seed, to_end, trimmed, greedy
        )
        indexes = range(offset, offset + n)
        charge = Charge(ctx.ledger, branch_ids(path.key, indexes))
        try:
            async with ctx.hold(n * self._sampling.max_tokens):
                response = await self._transport.post_json(
                    route,
                    body,
                    charges=(charge,),
                    tokens_hint=prompt_chars // 4 + n * self._sampling.max_tokens,
                    affinity=ctx.problem_id,
                )
            decoded = decode_choices(
                response,
                n=n,
                route=route,
                delimiter=self._delimiter,
                to_end=to_end,
                trimmed=trimmed,
            )
        except ContextLengthExceeded as exc:
            if not path.steps:
                raise PromptTooLong(", ".join(self._endpoint.urls), str(exc)) from exc
            log.info(
                "context_full",
                problem_id=ctx.problem_id,
                branch=format_key(path.key),
                steps=len(path.steps),
            )
            return children(path, indexes, [((), Finish.LENGTH)] * n)
        except (TransportError, BatchBudgetExhausted) as exc:
            raise BranchLost(path.key, "generating", exc) from exc
        return children(path, indexes, decoded)

    async def _probe(self, ctx: ProblemContext, path: Path) -> bool:
        """Whether the server's chat template trims the delimiter, asked once (see the module
        rules); a failed probe loses this branch and the next continuation asks again."""
        async with self._probe_lock:
            if self._trims is not None:
                return self._trims
            bodies = encode_trim_probe(model=self._endpoint.model, delimiter=self._delimiter)
            charge = Charge(ctx.ledger, ())
            try:
                async with ctx.hold(len(bodies)):  # one token each
                    without, with_delimiter = [
                        await self._transport.post_json(
                            CHAT_ROUTE, body, charges=(charge,), affinity=ctx.problem_id
                        )
                        for body in bodies
                    ]
                self._trims = decode_trim_probe(without, with_delimiter)
            except (TransportError, BatchBudgetExhausted) as exc:
                raise BranchLost(path.key, "generating", exc) from exc
            log.info(
                "chat_template_trims" if self._trims else "chat_template_keeps_delimiter",
                endpoint=self._endpoint.base_url,
                model=self._endpoint.model,
            )
            return self._trims

    def _encode(
        self,
        ctx: ProblemContext,
        path: Path,
        n: int,
        seed: int | None,
        to_end: bool,
        trimmed: bool,
        greedy: bool,
    ) -> tuple[str, dict[str, Any], int]:
        common: dict[str, Any] = {
            "sampling": self._greedy_sampling if greedy else self._sampling,
            "n": n,
            "delimiter": self._delimiter,
            "to_end": to_end,
            "seed": seed,
        }
        partial = path.text
        if self._prompt is not None:
            ids = self._prompt.token_ids(ctx.problem, ctx.system_prompt, path.steps, path.turns)
            if ids is not None:  # the step boundaries the model wrote: see templates.py
                body = encode_completions(model=self._endpoint.model, prompt=ids, **common)
                return COMPLETIONS_ROUTE, body, 4 * len(ids)
            prompt = self._prompt.render(ctx.problem, ctx.system_prompt, partial, path.turns)
            body = encode_completions(model=self._endpoint.model, prompt=prompt, **common)
            return COMPLETIONS_ROUTE, body, len(prompt)
        body = encode_chat(
            model=self._endpoint.model,
            problem=ctx.problem,
            system=ctx.system_prompt,
            partial=partial,
            trimmed=trimmed,
            turns=path.turns,
            **common,
        )
        chars = len(ctx.problem) + len(ctx.system_prompt or "") + len(partial)
        chars += sum(map(len, path.turns))
        return CHAT_ROUTE, body, chars
