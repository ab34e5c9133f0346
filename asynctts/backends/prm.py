"""Step scoring over a PRM endpoint: vLLM's /pooling (STEP pooling, Qwen2.5-Math-PRM style) or a
generative PRM read through `prompt_logprobs` (RLHFlow/Llama3.1-8B-PRM-Deepseek-Data style).

Rules:
- `encode_*` and `decode_*` are pure (sans-I/O) and tested on JSON fixtures; the clients render,
  coalesce and call `transport.post_json`.
- Paths from concurrent `score` calls, from any problem, are coalesced into one request
  (`Coalescer`); each problem's ledger is charged its share of the request's input characters.
- A pooling PRM whose prompts the server renders (`PoolingPrompt.rendering == "server"`: no
  tokenizer here) sends chat `messages`, which vLLM takes one conversation per request: the
  coalesced paths then go out as concurrent requests of one path each, and a failed request
  fails its path alone. Which rendering is in use is logged once, when the client is built.
- A response that is wrong for one path (a wrong number of step scores) fails that path only;
  a response of the wrong shape as a whole fails the batch.
- Failures reach the caller as `BranchLost(path.key, "scoring", cause)` for the first failed
  path of the call, after every path of the call has settled. A call the batch budget cannot
  cover (`BudgetGate`: its prompts' characters) sends nothing and loses its first path.
- Logprob scores: P("+") / (P("+") + P("-")) at each label position. When "-" is not among the
  top-K alternatives, P("-") is bounded by the K-th largest probability there: the score is then
  a lower bound (a conservative estimate). If several alternatives decode to the same label
  (e.g. "+" and " +"), the most probable is used.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import structlog

from asynctts.backends.coalesce import Coalescer, CoalescerClosed
from asynctts.backends.context import (
    BatchBudgetExhausted,
    PostJson,
    ProblemContext,
    in_index_order,
)
from asynctts.backends.templates import (
    LabelledPrompt,
    LogprobPrompt,
    Message,
    PoolingPrompt,
    PromptRenderError,
    Rendering,
)
from asynctts.endpoint import Endpoint
from asynctts.errors import BadResponse, BranchLost, ConfigError, TransportError, format_key
from asynctts.ledger import Charge, Ledger
from asynctts.protocols import STEP_DELIMITER, Path

log = structlog.get_logger("asynctts.backends.prm")

POOLING_ROUTE = "/pooling"
COMPLETIONS_ROUTE = "/v1/completions"

Scores = tuple[float, ...]
# One outcome per item of a batch: its scores, or why the response was wrong for it alone.
Outcome = Scores | BadResponse
# What the coalescer hands each path: also a failed request of its own (server rendering).
Result = Scores | TransportError


@dataclass(frozen=True, slots=True)
class ScoreJob:
    """One path to score, rendered, with what its charge and error messages need.

    `prompt` is the input as it travels: the rendered text, or (server rendering) `messages`
    as JSON. Jobs with the same prompt are sent once; its length sets the job's share of a cost.
    """

    ledger: Ledger
    problem_id: str
    path: Path
    prompt: str
    label_positions: tuple[int, ...] = ()  # logprob PRMs only
    messages: tuple[Message, ...] = ()  # pooling PRMs rendered on the server only

    @property
    def name(self) -> str:
        return f"branch {format_key(self.path.key)} of problem {self.problem_id}"


def coalesced_charges(jobs: Sequence[ScoreJob]) -> list[Charge]:
    """One charge per problem ledger in the batch: the branches of its paths, and its share of
    the input characters (the shares sum to 1)."""
    total = sum(len(job.prompt) for job in jobs)
    chars: dict[Ledger, int] = {}
    branches: dict[Ledger, dict[str, None]] = {}
    for job in jobs:
        chars[job.ledger] = chars.get(job.ledger, 0) + len(job.prompt)
        branches.setdefault(job.ledger, {})[format_key(job.path.key)] = None
    return [
        Charge(
            ledger,
            tuple(branches[ledger]),
            share=count / total if total else 1 / len(chars),
        )
        for ledger, count in chars.items()
    ]


def main_problem(jobs: Sequence[ScoreJob]) -> str:
    """The problem a batch is sent for (its affinity): the one with the most input characters.
    A batch mixing problems cannot go to each one's server; its largest part keeps its cache."""
    chars: dict[str, int] = {}
    for job in jobs:
        chars[job.problem_id] = chars.get(job.problem_id, 0) + len(job.prompt)
    return max(chars, key=chars.__getitem__)


def encode_pooling(model: str, prompts: Sequence[str]) -> dict[str, Any]:
    return {"model": model, "input": list(prompts)}


def encode_pooling_messages(model: str, messages: Sequence[Message]) -> dict[str, Any]:
    """One conversation for the server to render with the model's chat template."""
    return {"model": model, "messages": list(messages)}


def decode_pooling(response: Mapping[str, Any], jobs: Sequence[ScoreJob]) -> list[Outcome]:
    """p_pos of every step-tag row, per job.

    Raises:
        BadResponse: `data` is not one entry per input with distinct indexes.
    """
    rows_by_job = in_index_order(response, "data", len(jobs), POOLING_ROUTE)
    outcomes: list[Outcome] = []
    for job, item in zip(jobs, rows_by_job, strict=True):
        rows = item.get("data")
        steps = len(job.path.steps)
        if not isinstance(rows, list):
            outcomes.append(BadResponse(f"{POOLING_ROUTE}: no score rows for {job.name}"))
        elif len(rows) != steps:
            outcomes.append(
                BadResponse(
                    f"PRM returned {len(rows)} scores for {steps} steps of {job.name} "
                    "(is the server's step_tag_id the step tag's id?)"
                )
            )
        else:
            outcomes.append(_pooled_scores(rows, job))
    return outcomes


def _pooled_scores(rows: list[Any], job: ScoreJob) -> Outcome:
    scores: list[float] = []
    for step, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 2 and all(map(_is_probability, row))):
            return BadResponse(
                f"{POOLING_ROUTE}: step {step} of {job.name} has row {row!r}, "
                "expected [p_neg, p_pos] probabilities"
            )
        scores.append(float(row[1]))
    return tuple(scores)


def _is_probability(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def encode_logprob(model: str, prompts: Sequence[str], *, top_k: int) -> dict[str, Any]:
    """One prompt as a string, several as a list (vLLM answers one choice per prompt)."""
    return {
        "model": model,
        "prompt": prompts[0] if len(prompts) == 1 else list(prompts),
        "max_tokens": 1,
        "temperature": 0,
        "prompt_logprobs": top_k,
    }


def decode_logprob(
    response: Mapping[str, Any],
    jobs: Sequence[ScoreJob],
    *,
    top_k: int,
    labels: tuple[str, str] = ("+", "-"),
) -> list[Outcome]:
    """P(good) / (P(good) + P(bad)) at every label position, per job.

    Raises:
        BadResponse: `choices` is not one entry per prompt with distinct indexes.
    """
    choices = in_index_order(response, "choices", len(jobs), COMPLETIONS_ROUTE)
    outcomes: list[Outcome] = []
    for job, choice in zip(jobs, choices, strict=True):
        try:
            outcomes.append(_label_scores(choice.get("prompt_logprobs"), job, top_k, labels))
        except BadResponse as bad:
            outcomes.append(bad)
    return outcomes


def _label_scores(
    prompt_logprobs: object, job: ScoreJob, top_k: int, labels: tuple[str, str]
) -> Scores:
    good, bad = labels
    if not isinstance(prompt_logprobs, list):
        raise BadResponse(f"{COMPLETIONS_ROUTE}: no prompt_logprobs for {job.name}")
    scores: list[float] = []
    for step, position in enumerate(job.label_positions):
        if position >= len(prompt_logprobs):
            raise BadResponse(
                f"{COMPLETIONS_ROUTE}: prompt_logprobs has {len(prompt_logprobs)} entries; "
                f"the label of step {step} of {job.name} is at {position}"
            )
        entry = prompt_logprobs[position]
        where = f"prompt_logprobs[{position}] (step {step} of {job.name})"
        candidates = _label_logprobs(entry, where)
        good_lp = candidates.get(good)
        if good_lp is None:
            raise BadResponse(
                f"{COMPLETIONS_ROUTE}: {where} has no {good!r}: the prompt token there is not "
                "the label (does the server's tokenizer match the client's?)"
            )
        bad_lp = candidates.get(bad)
        if bad_lp is None:
            bad_lp = _top_k_floor(entry, top_k)  # a bound: see the module docstring
        if good_lp == bad_lp == -math.inf:
            raise BadResponse(f"{COMPLETIONS_ROUTE}: {where}: {good!r} and {bad!r} both have p=0")
        scores.append(_sigmoid(good_lp - bad_lp))
    return tuple(scores)


def _label_logprobs(entry: object, where: str) -> dict[str, float]:
    """The best logprob per stripped decoded token of one `prompt_logprobs` entry."""
    if not isinstance(entry, Mapping):
        raise BadResponse(f"{COMPLETIONS_ROUTE}: {where} is {type(entry).__name__}, not an object")
    best: dict[str, float] = {}
    for token_id, info in entry.items():
        logprob = info.get("logprob") if isinstance(info, Mapping) else None
        decoded = info.get("decoded_token") if isinstance(info, Mapping) else None
        if not isinstance(logprob, int | float) or not isinstance(decoded, str):
            raise BadResponse(
                f"{COMPLETIONS_ROUTE}: {where}[{token_id!r}] is {info!r}, expected "
                "{'logprob': number, 'decoded_token': str, ...}"
            )
        text = decoded.strip()
        best[text] = max(best.get(text, -math.inf), float(logprob))
    return best


def _top_k_floor(entry: Mapping[str, Any], top_k: int) -> float:
    """The smallest logprob among the entry's top-K alternatives: any token outside the top K
    (the actual token may be one) is at most this likely."""
    ranked = [
        float(info["logprob"])
        for info in entry.values()
        if not isinstance(info.get("rank"), int) or info["rank"] <= top_k
    ]
    return min(ranked) if ranked else min(float(info["logprob"]) for info in entry.values())


def _sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow: P(good) / (P(good) + P(bad)) from a logprob gap."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


# The rendered prompt kind of each PRM client.
_PromptT = TypeVar("_PromptT", PoolingPrompt, LogprobPrompt)


class _CoalescedPRM(Generic[_PromptT]):
    """What both PRM kinds share: check the endpoint, render per path, coalesce, charge, map
    failures. A subclass names its route, the `Endpoint.scoring` it serves and its prompt."""

    _route: ClassVar[str]
    _scoring: ClassVar[str]
    _prompt_type: type[_PromptT]

    def __init__(
        self,
        endpoint: Endpoint,
        transport: PostJson,
        *,
        max_batch: int = 64,
        window_s: float = 0.002,
        delimiter: str = STEP_DELIMITER,
    ) -> None:
        if endpoint.scoring != self._scoring:
            raise ConfigError(
                f"{type(self).__name__} serves scoring={self._scoring!r}, but endpoint "
                f"{endpoint.base_url} has scoring={endpoint.scoring!r}"
            )
        self._endpoint = endpoint
        self._transport = transport
        self._prompt: _PromptT = self._prompt_type.for_endpoint(endpoint, delimiter=delimiter)
        send = self._send_each if self.rendering == "server" else self._send
        self._coalescer: Coalescer[ScoreJob, Result] = Coalescer(
            send, max_batch=max_batch, window_s=window_s
        )
        log.info(
            "prm rendering",
            endpoint=endpoint.base_url,
            model=endpoint.model,
            rendering=self.rendering,
            rendered_with=self._prompt.how,
        )

    @property
    def rendering(self) -> Rendering:
        """Where prompts are rendered: "client" (several paths per request) or "server"
        (chat messages, one path per request)."""
        return self._prompt.rendering

    async def score(self, ctx: ProblemContext, paths: Sequence[Path]) -> list[Path]:
        """The same paths in the same order, with one score in [0, 1] per step.

        Incremental: a path whose steps all carry scores is returned as it is, without a
        request; a path that extends a scored prefix keeps the prefix's scores and takes
        only its new steps' scores from the response. (The request still holds the whole
        conversation, since a step's score depends on all before it; a PRM server with
        prefix caching prefills only the new tokens.)

        Raises:
            BranchLost: the first path (in order) whose scoring failed for good.
        """
        pending = [path for path in paths if not path.scored]
        jobs: list[ScoreJob] = []
        for path in pending:
            try:
                jobs.append(self._job(ctx, path))
            except PromptRenderError as exc:
                raise BranchLost(path.key, "scoring", exc) from exc
        try:
            async with ctx.hold(sum(len(job.prompt) for job in jobs)):
                outcomes = iter(await self._coalescer.submit_many(jobs))
        except BatchBudgetExhausted as exc:
            raise BranchLost(pending[0].key, "scoring", exc) from exc
        scored: list[Path] = []
        for path in paths:
            if path.scored:
                scored.append(path)  # nothing new to score: no request
                continue
            outcome = next(outcomes)
            if isinstance(outcome, TransportError | CoalescerClosed):
                raise BranchLost(path.key, "scoring", outcome) from outcome
            if isinstance(outcome, Exception):
                raise outcome
            scored.append(path.with_scores(keep_known_scores(path, outcome)))
        return scored

    async def aclose(self) -> None:
        """Finish the batches in flight; later `score` calls raise."""
        await self._coalescer.aclose()

    def _job(self, ctx: ProblemContext, path: Path) -> ScoreJob:
        raise NotImplementedError

    def _encode(self, jobs: Sequence[ScoreJob]) -> dict[str, Any]:
        raise NotImplementedError

    def _encode_one(self, job: ScoreJob) -> dict[str, Any]:
        """The body of a request for one job, when the server renders the prompts."""
        raise NotImplementedError

    def _decode(self, response: Mapping[str, Any], jobs: Sequence[ScoreJob]) -> list[Outcome]:
        raise NotImplementedError

    async def _send(self, jobs: Sequence[ScoreJob]) -> list[Result]:
        unique, first_of = _distinct(jobs)
        response = await self._transport.post_json(
            self._route,
            self._encode(unique),
            charges=coalesced_charges(jobs),
            tokens_hint=sum(len(job.prompt) for job in unique) // 4,
            affinity=main_problem(jobs),
        )
        outcomes = self._decode(response, unique)
        return [outcomes[first_of[job.prompt]] for job in jobs]

    async def _send_each(self, jobs: Sequence[ScoreJob]) -> list[Result]:
        """One request per distinct conversation, all at once; a request that fails is the
        result of its own jobs only."""
        unique, first_of = _distinct(jobs)
        sharing: list[list[ScoreJob]] = [[] for _ in unique]
        for job in jobs:
            sharing[first_of[job.prompt]].append(job)
        results = await asyncio.gather(
            *(self._send_one(job, same) for job, same in zip(unique, sharing, strict=True)),
            return_exceptions=True,
        )
        settled: list[Result] = []
        for result in results:
            if isinstance(result, TransportError) or not isinstance(result, BaseException):
                settled.append(result)
            else:
                raise result  # not a failed exchange: a bug, failing the batch
        return [settled[first_of[job.prompt]] for job in jobs]

    async def _send_one(self, job: ScoreJob, same: Sequence[ScoreJob]) -> Result:
        response = await self._transport.post_json(
            self._route,
            self._encode_one(job),
            charges=coalesced_charges(same),
            tokens_hint=len(job.prompt) // 4,
            affinity=job.problem_id,
        )
        return self._decode(response, [job])[0]


def _distinct(jobs: Sequence[ScoreJob]) -> tuple[list[ScoreJob], dict[str, int]]:
    """The jobs with distinct prompts, and each prompt's place among them: identical prompts
    (sibling paths that wrote the same text) are sent once, and every job shares the cost."""
    first_of: dict[str, int] = {}
    unique: list[ScoreJob] = []
    for job in jobs:
        if job.prompt not in first_of:
            first_of[job.prompt] = len(unique)
            unique.append(job)
    return unique, first_of


class PoolingPRM(_CoalescedPRM[PoolingPrompt]):
    """A `*ForProcessRewardModel` served by vLLM with `--runner pooling` (STEP pooling).
    Prompts rendered here travel several per request (`input`); prompts the server renders
    travel as `messages`, one conversation per request."""

    _route = POOLING_ROUTE
    _scoring = "pooling"
    _prompt_type = PoolingPrompt

    def _job(self, ctx: ProblemContext, path: Path) -> ScoreJob:
        if self.rendering == "server":
            messages = self._prompt.messages(ctx.problem, path.steps)
            as_sent = json.dumps(messages, ensure_ascii=False)
            return ScoreJob(ctx.ledger, ctx.problem_id, path, as_sent, messages=tuple(messages))
        prompt = self._prompt.render(ctx.problem, path.steps)
        return ScoreJob(ctx.ledger, ctx.problem_id, path, prompt)

    def _encode(self, jobs: Sequence[ScoreJob]) -> dict[str, Any]:
        return encode_pooling(self._endpoint.model, [job.prompt for job in jobs])

    def _encode_one(self, job: ScoreJob) -> dict[str, Any]:
        return encode_pooling_messages(self._endpoint.model, job.messages)

    def _decode(self, response: Mapping[str, Any], jobs: Sequence[ScoreJob]) -> list[Outcome]:
        return decode_pooling(response, jobs)


class LogprobPRM(_CoalescedPRM[LogprobPrompt]):
    """A generative PRM judged by P("+") vs P("-") at each assistant label, read from vLLM's
    `prompt_logprobs` in one `max_tokens=1` completion per path (several paths per request)."""

    _route = COMPLETIONS_ROUTE
    _scoring = "logprob"
    _prompt_type = LogprobPrompt

    def _job(self, ctx: ProblemContext, path: Path) -> ScoreJob:
        rendered: LabelledPrompt = self._prompt.render(ctx.problem, path.steps)
        return ScoreJob(ctx.ledger, ctx.problem_id, path, rendered.prompt, rendered.label_positions)

    def _encode(self, jobs: Sequence[ScoreJob]) -> dict[str, Any]:
        prompts = [job.prompt for job in jobs]
        return encode_logprob(self._endpoint.model, prompts, top_k=self._endpoint.prompt_logprobs)

    def _decode(self, response: Mapping[str, Any], jobs: Sequence[ScoreJob]) -> list[Outcome]:
        labels = (self._prompt.label, "-")
        return decode_logprob(response, jobs, top_k=self._endpoint.prompt_logprobs, labels=labels)


def keep_known_scores(path: Path, fresh: Sequence[float]) -> tuple[float, ...]:
    """The scores a path keeps: those it already had, then the fresh ones of its new steps."""
    return (*path.scores, *fresh[len(path.scores) :])
