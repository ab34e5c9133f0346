"""Prompt rendering: the policy's prompt in completions mode, the policy's messages in chat mode,
and the inputs of both PRM kinds (a pooling PRM's as chat messages when the server renders).

Rules:
- transformers (and jinja2, which renders chat templates) are imported lazily: the `hf` extra.
  Without them `prompt_format` still works; asking for a chat template then is a `ConfigError`
  that says what to install.
- Prompts travel as text and vLLM tokenizes them with `add_special_tokens=True`. When the
  tokenizer adds a BOS itself, a BOS that the template writes is dropped from the text, or the
  model would see two.
- The partial solution is appended to the rendered template, never passed through it: templates
  that `trim` message bodies (Llama 3) would eat the trailing "\\n\\n" of the last step, and the
  model would continue a different prefix from the one it wrote.
- With a tokenizer, the completions prompt travels as token ids: the prefix encoded as vLLM
  encodes text, then each step encoded on its own as it reads when text follows it. GPT-2-style
  tokenizers (SmolLM2) encode a trailing "\\n\\n" as one merged token but "\\n\\n" before text
  as two "\\n" tokens, and the model wrote the two; fed the merged one as a text prompt, real
  SmolLM2 on vLLM continued in a different style and a small trained model derailed (".\\n\\n."
  steps). Token ids give the model back the boundary it generated.
- Earlier turns (`Path.turns`: an earlier solution, then a request to revise it) are rendered
  as assistant and user messages between the problem and the path's own assistant turn, in
  chat mode and through a chat template alike; the completions prefix is cached per (problem,
  system prompt, turns). A `prompt_format` has no place for them: asking it to render turns
  is a `ConfigError` naming `prompt_format`. The PRM inputs never contain turns.
- Nothing here mutates a tokenizer (search-and-learn rewrote the shared tokenizer's template).
- Text that would make a PRM input ambiguous (a step containing the step tag) raises
  `PromptRenderError` rather than being scored wrongly.
- A tokenizer is looked for locally first (a directory, or the Hugging Face cache); the hub is
  asked only when `asynctts.hub.hub_unavailable()` says it answers, so an unreachable hub fails
  in one short probe rather than after the hub client's half minute of retries.
- A pooling PRM with neither `tokenizer=` nor `prompt_format=` renders on the client when the
  model's own tokenizer can be had, and otherwise sends the conversation as chat `messages` for
  the server to render with the model's template (one conversation per request).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from asynctts.errors import AsyncttsError, ConfigError
from asynctts.hub import hub_unavailable
from asynctts.protocols import STEP_DELIMITER

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from asynctts.endpoint import Endpoint

INSTALL_HINT = "pip install 'asynctts[hf]'"

# The system prompt Qwen2.5-Math-PRM was trained with (its model card's usage example).
PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# Stands in for each assistant label while the template renders, so the label's character
# position can be found afterwards. Private-use characters: no math text contains them, and
# `trim` does not strip them.
_LABEL_PLACEHOLDER = "\ue000label\ue001"

Message = dict[str, str]


class PromptRenderError(AsyncttsError, ValueError):
    """A problem or step that cannot be rendered faithfully (it contains the PRM's step tag,
    or the template lost or duplicated a step's marker)."""


class TokenizerUnavailable(ConfigError):
    """No tokenizer could be loaded for a name. `reason` says why, without the advice on what
    to pass instead (which depends on who needed the tokenizer)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            f"cannot load tokenizer {name!r}: {reason}; point `tokenizer=` at a local directory "
            "holding the tokenizer files, or set `prompt_format=` to render prompts without a "
            "tokenizer"
        )
        self.name = name
        self.reason = reason


@functools.lru_cache(maxsize=16)
def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) of a model, loaded once per name: from a local
    directory or the Hugging Face cache, else from the hub if it answers (see the rules).

    Raises:
        TokenizerUnavailable: transformers is not installed, or the tokenizer cannot be loaded.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise TokenizerUnavailable(
            name_or_path, f"transformers is not installed ({INSTALL_HINT})"
        ) from exc
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            name_or_path, local_files_only=True
        )
        return tokenizer
    except (OSError, ValueError) as exc:
        local_error: Exception = exc
    except ImportError as exc:
        raise TokenizerUnavailable(name_or_path, str(exc)) from exc
    if _names_a_path(name_or_path):
        if os.path.isdir(name_or_path):
            reason = f"the local directory does not hold a loadable tokenizer ({local_error})"
        else:
            reason = "no such local directory"
        raise TokenizerUnavailable(name_or_path, reason) from local_error
    unreachable = hub_unavailable()
    if unreachable is not None:
        raise TokenizerUnavailable(
            name_or_path,
            "it is neither a local directory nor in the Hugging Face cache, and the hub "
            f"cannot be asked ({unreachable})",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, ImportError) as exc:
        raise TokenizerUnavailable(name_or_path, f"the Hugging Face hub answered: {exc}") from exc
    return tokenizer


def _names_a_path(name: str) -> bool:
    """A directory, or a name written as a path: never a hub repository id."""
    return os.path.isdir(name) or os.path.isabs(name) or name.startswith((".", "~"))


class _ChatRenderer:
    """A tokenizer's chat template rendered to text, with the doubled BOS removed."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"tokenizer {self.name!r} has no chat template: set `prompt_format=` "
                "(policy: {system} and {problem}; PRM: {problem} and {solution})"
            )
        self._leading_bos = _bos_added_by(tokenizer)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        try:
            from jinja2 import TemplateError
        except ImportError as exc:
            raise ConfigError(f"chat templates need jinja2: {INSTALL_HINT}") from exc
        try:
            text = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as exc:
            roles = [m["role"] for m in messages]
            raise ConfigError(
                f"the chat template of {self.name!r} failed for roles {roles}: {exc}"
            ) from exc
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, not str")
        return self.drop_doubled_bos(text)

    def drop_doubled_bos(self, text: str) -> str:
        if self._leading_bos is not None and text.startswith(self._leading_bos):
            return text[len(self._leading_bos) :]
        return text


def _bos_added_by(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The BOS text when encoding with special tokens (as vLLM does) prepends the BOS token."""
    bos_text, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if not isinstance(bos_text, str) or not bos_text or bos_id is None:
        return None
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return bos_text if ids and ids[0] == bos_id else None


def _check_format(pattern: str, fields: Mapping[str, str], what: str) -> None:
    try:
        pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{what} prompt_format {pattern!r} is not a valid pattern: {exc!r}; "
            f"its fields are {sorted('{' + f + '}' for f in fields)}"
        ) from exc


def turns_refusal(prompt_format: str) -> str:
    """Why earlier turns cannot be asked of a plain `prompt_format` policy prompt."""
    return (
        f"the policy's prompt_format {prompt_format!r} renders one problem and one answer, not"
        " a conversation with earlier turns (a solution, then a request to revise it): use chat"
        " mode, or completions mode with a tokenizer's chat template (no prompt_format)"
    )


class PolicyPrompt:
    """The completions-mode prompt: the chat template rendered up to the start of the assistant
    turn (the prefix, cached per problem, system prompt and earlier turns), then the partial
    solution raw."""

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        prompt_format: str | None = None,
        cache_size: int = 1024,
    ) -> None:
        if prompt_format is not None:
            _check_format(prompt_format, {"system": "", "problem": ""}, "policy")
            self._renderer: _ChatRenderer | None = None
        elif tokenizer is not None:
            self._renderer = _ChatRenderer(tokenizer)
        else:
            raise ConfigError("PolicyPrompt needs a tokenizer or a prompt_format")
        self._format = prompt_format
        # Bound per instance: the prefix is rendered for every request of a problem.
        self._cached_prefix = functools.lru_cache(maxsize=cache_size)(self._render_prefix)
        self._cached_prefix_ids = functools.lru_cache(maxsize=cache_size)(self._prefix_ids)
        # steps repeat across siblings' requests at every later depth
        self._cached_step_ids = functools.lru_cache(maxsize=64 * cache_size)(self._step_ids)

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint) -> PolicyPrompt:
        if endpoint.prompt_format is not None:
            return cls(prompt_format=endpoint.prompt_format)
        return cls(tokenizer=load_tokenizer(endpoint.tokenizer_name))

    @property
    def renders_turns(self) -> bool:
        """Whether earlier turns can be rendered: a chat template can, a `prompt_format` not."""
        return self._renderer is not None

    def prefix(self, problem: str, system: str | None, turns: tuple[str, ...] = ()) -> str:
        """Raises:
        ConfigError: `turns` asked of a `prompt_format`.
        PromptRenderError: `turns` that do not pair an assistant turn with a user turn."""
        return self._cached_prefix(problem, system, turns)

    def render(
        self, problem: str, system: str | None, partial: str, turns: tuple[str, ...] = ()
    ) -> str:
        """The prompt that continues `partial` (the concatenated steps so far) after `turns`."""
        return self.prefix(problem, system, turns) + partial

    def token_ids(
        self,
        problem: str,
        system: str | None,
        steps: Sequence[str],
        turns: tuple[str, ...] = (),
    ) -> list[int] | None:
        """The prompt that continues `steps`, as the token ids the model saw and wrote (see the
        module rules); None without a tokenizer (`prompt_format`): send `render`'s text then."""
        if self._renderer is None:
            return None
        ids = list(self._cached_prefix_ids(problem, system, turns))
        for step in steps:
            ids.extend(self._cached_step_ids(step))
        return ids

    def _prefix_ids(
        self, problem: str, system: str | None, turns: tuple[str, ...]
    ) -> tuple[int, ...]:
        assert self._renderer is not None
        # as vLLM encodes a text prompt: special tokens (BOS) added, the doubled one already gone
        prefix = self.prefix(problem, system, turns)
        encoded = self._renderer.tokenizer(prefix, add_special_tokens=True)
        return tuple(encoded["input_ids"])

    def _step_ids(self, step: str) -> tuple[int, ...]:
        assert self._renderer is not None
        return continued_ids(self._renderer.tokenizer, step)

    def _render_prefix(self, problem: str, system: str | None, turns: tuple[str, ...]) -> str:
        if self._format is not None:
            if turns:
                raise ConfigError(turns_refusal(self._format))
            return self._format.format(system=system or "", problem=problem)
        assert self._renderer is not None
        return self._renderer.render(
            conversation(problem, system, turns), add_generation_prompt=True
        )


# Appended after a step to learn how its end is encoded when text follows: a letter starts a
# new pre-token after whitespace in byte-level (GPT-2, Llama 3) and SentencePiece tokenizers.
_FOLLOWING_TEXT = "x"


def continued_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    """The ids of `text` as it is encoded when more text follows it (no special tokens).

    Differs from plain encoding only at the end: e.g. GPT-2-style tokenizers merge a trailing
    "\\n\\n" into one token but keep "\\n\\n" before text as two. If the follower merges
    into the text's last token, the plain encoding is the best there is.
    """
    encoded = tokenizer(
        text + _FOLLOWING_TEXT, add_special_tokens=False, return_offsets_mapping=True
    )
    ids: list[int] = encoded["input_ids"]
    offsets: list[tuple[int, int]] = encoded["offset_mapping"]
    end = len(text)
    if any(start < end < stop for start, stop in offsets):
        plain: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tuple(plain)
    return tuple(i for i, (_, stop) in zip(ids, offsets, strict=True) if stop <= end)


def _system_messages(system: str | None) -> list[Message]:
    return [{"role": "system", "content": system}] if system else []


def conversation(problem: str, system: str | None, turns: Sequence[str] = ()) -> list[Message]:
    """The messages before the path's own assistant turn: the system prompt, the problem, then
    the earlier turns as assistant and user messages in turn.

    Raises:
        PromptRenderError: an odd number of turns (the last would be a second assistant
            message in a row, before the path's own).
    """
    if len(turns) % 2:
        raise PromptRenderError(
            f"{len(turns)} earlier turns: they alternate assistant and user and end with the"
            " user's, so their number is even"
        )
    roles = ("assistant", "user")
    return [
        *_system_messages(system),
        {"role": "user", "content": problem},
        *({"role": roles[i % 2], "content": turn} for i, turn in enumerate(turns)),
    ]


def chat_fields(
    problem: str, system: str | None, partial: str, turns: Sequence[str] = ()
) -> dict[str, Any]:
    """The chat-mode request fields: the conversation (earlier turns included), continuing the
    partial solution as the final assistant message (vLLM keeps its trailing whitespace). At
    the start of the path's turn there is no assistant message yet, so the server opens one."""
    messages = conversation(problem, system, turns)
    if partial:
        messages.append({"role": "assistant", "content": partial})
    return {
        "messages": messages,
        "add_generation_prompt": not partial,
        "continue_final_message": bool(partial),
    }


def bare_step(step: str, delimiter: str) -> str:
    """A step as the PRMs were trained on it: the delimiter that ended it and surrounding
    whitespace removed (a solution split on "\\n\\n")."""
    return step.removesuffix(delimiter).strip()


Rendering = Literal["client", "server"]


class PoolingPrompt:
    """The input of a `*ForProcessRewardModel` served with STEP pooling (Qwen2.5-Math-PRM): the
    conversation with the step tag after every step, so the server returns one row per step.

    Rendered here (`rendering == "client"`: a tokenizer's chat template, or `prompt_format`),
    or with neither sent as chat `messages` for the server to render (`"server"`). `how` says
    which, and why, for the logs.
    """

    def __init__(
        self,
        *,
        step_tag: str,
        delimiter: str = STEP_DELIMITER,
        tokenizer: PreTrainedTokenizerBase | None = None,
        prompt_format: str | None = None,
        system_prompt: str | None = PRM_SYSTEM_PROMPT,
    ) -> None:
        if not step_tag:
            raise ConfigError("PoolingPrompt step_tag is empty")
        self._renderer: _ChatRenderer | None = None
        if prompt_format is not None:
            _check_format(prompt_format, {"problem": "", "solution": ""}, "PRM")
            if step_tag in prompt_format:
                raise ConfigError(
                    f"PRM prompt_format {prompt_format!r} contains the step tag {step_tag!r}; "
                    "the tags come from {solution}, one after every step"
                )
            self.rendering: Rendering = "client"
            self.how = "prompt_format"
        elif tokenizer is not None:
            self._renderer = _ChatRenderer(tokenizer)
            self.rendering = "client"
            self.how = f"the chat template of tokenizer {self._renderer.name!r}"
        else:
            self.rendering = "server"
            self.how = "the server's chat template"
        self.step_tag = step_tag
        self._delimiter = delimiter
        self._format = prompt_format
        self._system = system_prompt

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint, *, delimiter: str = STEP_DELIMITER) -> PoolingPrompt:
        """`prompt_format` or an explicit `tokenizer` render on the client (a tokenizer that
        cannot be loaded is an error); with neither, the served model's tokenizer renders on
        the client when it can be had (see `load_tokenizer`), else the server renders."""
        settings: dict[str, Any] = {"step_tag": endpoint.step_tag, "delimiter": delimiter}
        if endpoint.prompt_format is not None:
            return cls(prompt_format=endpoint.prompt_format, **settings)
        if endpoint.tokenizer is not None:
            return cls(tokenizer=load_tokenizer(endpoint.tokenizer), **settings)
        try:
            tokenizer = load_tokenizer(endpoint.model)
        except TokenizerUnavailable as exc:
            prompt = cls(**settings)
            prompt.how = f"the server's chat template (no tokenizer here: {exc.reason})"
            return prompt
        return cls(tokenizer=tokenizer, **settings)

    def messages(self, problem: str, steps: Sequence[str]) -> list[Message]:
        """The conversation: the PRM's system prompt, the problem, and the steps as the
        assistant's message, each followed by the step tag.

        Raises:
            PromptRenderError: the problem or a step contains the step tag.
        """
        tag = self.step_tag
        if tag in problem:
            raise PromptRenderError(f"the problem contains the PRM step tag {tag!r}")
        for i, step in enumerate(steps):
            if tag in step:
                raise PromptRenderError(f"step {i} contains the PRM step tag {tag!r}: {step!r}")
        return [
            *_system_messages(self._system),
            {"role": "user", "content": problem},
            {"role": "assistant", "content": self._solution(steps)},
        ]

    def render(self, problem: str, steps: Sequence[str]) -> str:
        """The conversation rendered here, with exactly one step tag per step.

        Raises:
            PromptRenderError: the problem or a step contains the step tag, or the template
                changed the number of tags.
            ConfigError: this prompt renders on the server (no tokenizer, no prompt_format).
        """
        messages = self.messages(problem, steps)
        if self._format is not None:
            return self._format.format(problem=problem, solution=self._solution(steps))
        if self._renderer is None:
            raise ConfigError("this PRM prompt renders on the server: send `messages`")
        text = self._renderer.render(messages, add_generation_prompt=False)
        tag = self.step_tag
        if text.count(tag) != len(steps):
            raise PromptRenderError(
                f"the chat template of {self._renderer.name!r} rendered {text.count(tag)} "
                f"step tags for {len(steps)} steps"
            )
        return text

    def _solution(self, steps: Sequence[str]) -> str:
        return "".join(bare_step(step, self._delimiter) + self.step_tag for step in steps)


@dataclass(frozen=True, slots=True)
class LabelledPrompt:
    """A generative PRM's prompt and, per step, the index of its "+" label among the prompt's
    tokens as vLLM sees them (BOS included): the index into `prompt_logprobs`."""

    prompt: str
    label_positions: tuple[int, ...]


class LogprobPrompt:
    """The input of a generative PRM judged by P("+") (RLHFlow/Llama3.1-8B-PRM-Deepseek-Data):
    user = problem + " " + step 1, assistant "+", user = step 2, assistant "+", ..."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        delimiter: str = STEP_DELIMITER,
        label: str = "+",
    ) -> None:
        self._renderer = _ChatRenderer(tokenizer)
        if not tokenizer.is_fast:
            raise ConfigError(
                f"tokenizer {self._renderer.name!r} is not a fast tokenizer: locating the PRM "
                "labels needs token offsets (`return_offsets_mapping`)"
            )
        self._tokenizer = tokenizer
        self._delimiter = delimiter
        self.label = label
        self.rendering: Rendering = "client"  # the label positions need the tokens
        self.how = f"the chat template of tokenizer {self._renderer.name!r}"

    @classmethod
    def for_endpoint(cls, endpoint: Endpoint, *, delimiter: str = STEP_DELIMITER) -> LogprobPrompt:
        if endpoint.prompt_format is not None:
            raise ConfigError(
                f"PRM endpoint {endpoint.base_url}: scoring='logprob' locates the labels with "
                "the tokenizer's chat template; prompt_format is not supported there"
            )
        try:
            tokenizer = load_tokenizer(endpoint.tokenizer_name)
        except TokenizerUnavailable as exc:
            raise ConfigError(
                f"PRM endpoint {endpoint.base_url}: scoring='logprob' needs the PRM's tokenizer "
                "here, to find each label's position among the prompt's tokens (prompt_format "
                "cannot stand in for it): pass `tokenizer=` a local directory holding the "
                f"tokenizer files of {endpoint.model!r}. Tokenizer {exc.name!r}: {exc.reason}"
            ) from exc
        return cls(tokenizer, delimiter=delimiter)

    def render(self, problem: str, steps: Sequence[str]) -> LabelledPrompt:
        """Raises:
        PromptRenderError: the template lost or duplicated an assistant turn, or the text
            contains the internal placeholder.
        ConfigError: the tokenizer merges the label with its neighbours, so no prompt
            position holds the label alone.
        """
        if not steps:
            raise PromptRenderError("a PRM prompt needs at least one step")
        texts = [problem + " " + bare_step(steps[0], self._delimiter)]
        texts += [bare_step(step, self._delimiter) for step in steps[1:]]
        if any(_LABEL_PLACEHOLDER in text for text in texts):
            raise PromptRenderError("the problem or a step contains the label placeholder")
        messages: list[Message] = []
        for text in texts:
            messages.append({"role": "user", "content": text})
            messages.append({"role": "assistant", "content": _LABEL_PLACEHOLDER})
        rendered = self._renderer.render(messages, add_generation_prompt=False)
        pieces = rendered.split(_LABEL_PLACEHOLDER)
        if len(pieces) != len(steps) + 1:
            raise PromptRenderError(
                f"the chat template of {self._renderer.name!r} rendered {len(pieces) - 1} "
                f"assistant labels for {len(steps)} steps"
            )
        char_positions: list[int] = []
        prompt = pieces[0]
        for piece in pieces[1:]:
            char_positions.append(len(prompt))
            prompt += self.label + piece
        return LabelledPrompt(prompt, self._token_positions(prompt, char_positions))

    def _token_positions(self, prompt: str, char_positions: Sequence[int]) -> tuple[int, ...]:
        # Encoded as vLLM encodes a text prompt, so special tokens it adds (BOS) are counted.
        encoding = self._tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
        offsets: list[tuple[int, int]] = encoding["offset_mapping"]
        positions: list[int] = []
        token = 0
        for char in char_positions:
            while token < len(offsets) and not offsets[token][0] <= char < offsets[token][1]:
                token += 1
            if token == len(offsets):
                raise ConfigError(
                    f"tokenizer {self._renderer.name!r}: no token covers the PRM label at "
                    f"character {char}"
                )
            start, end = offsets[token]
            if prompt[start:end].strip() != self.label:
                raise ConfigError(
                    f"tokenizer {self._renderer.name!r} merges the PRM label {self.label!r} "
                    f"into the token {prompt[start:end]!r}: its logprob is not the label's"
                )
            positions.append(token)
        return tuple(positions)
