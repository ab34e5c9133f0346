"""The flags that `eval` and `solve` share, and what they become: endpoints, sampling, the
system prompt and the strategy settings.

Rules:
- Every flag has help, and the help shows the default: argparse's own value when the flag
  has one, or words in the help text when the real default lives elsewhere (the strategy's
  width, the `Endpoint`'s limits). Defaults are read from those classes, never repeated here.
- Endpoint settings come from an endpoints file or from flags, never both.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asynctts.backends.context import DEFAULT_SYSTEM_PROMPT, Sampling
from asynctts.config import load_endpoints
from asynctts.endpoint import DEFAULT_API_KEY_ENV, Endpoint
from asynctts.errors import ConfigError
from asynctts.eval.plan import StrategySettings
from asynctts.search.particle_filter import RESAMPLINGS, ParticleFilter
from asynctts.search.rebase import Rebase
from asynctts.search.revise import CUTS, REVISIONS, Revise
from asynctts.search.tree_search import TreeSearch

__all__ = [
    "SEARCH_SETTINGS",
    "HelpFormatter",
    "add_endpoint_arguments",
    "add_sampling_arguments",
    "add_search_arguments",
    "add_stepwise_arguments",
    "endpoints_of",
    "escapes",
    "non_negative_int",
    "port_number",
    "positive_int",
    "sampling_of",
    "strategy_settings_of",
    "system_prompt_of",
]

_SAMPLING = Sampling()
_ENDPOINT = {f.name: f.default for f in dataclasses.fields(Endpoint)}
_TREE = TreeSearch()
_FILTER = ParticleFilter()
_REBASE = Rebase()
_REVISE = Revise()


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help when the flag has a default worth showing:
    not None, not the False of a switch, and not already named in the help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def port_number(text: str) -> int:
    """A TCP port, 0..65535 (0: any free one)."""
    value = _int_at_least(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0..65535)")
    return value


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is not >= {least}")
    return value


def escapes(text: str) -> str:
    r"""Prompt formats on a command line: "\n" and "\t" stand for a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


SEARCH_SETTINGS = ("width", "max_depth", "aggregate", "lookahead")


def add_search_arguments(
    group: argparse._ArgumentGroup, *, settings: Sequence[str] = SEARCH_SETTINGS
) -> None:
    """--width, --max-depth, --aggregate, --lookahead (those of `settings`): passed to every
    strategy that has the setting."""
    if "width" in settings:
        group.add_argument(
            "--width",
            type=positive_int,
            help=f"children per expanded path, M (beam_search, dvts; default: {_TREE.width})",
        )
    if "max_depth" in settings:
        group.add_argument(
            "--max-depth",
            type=positive_int,
            help=f"iterations at most (beam_search, dvts; default: {_TREE.max_depth})",
        )
    if "aggregate" in settings:
        group.add_argument(
            "--aggregate",
            choices=("last", "min", "prod"),
            help="how a path's step scores become its value (strategies with a PRM;"
            f" default: {_TREE.aggregate})",
        )
    if "lookahead" in settings:
        group.add_argument(
            "--lookahead",
            type=non_negative_int,
            help="greedy steps rolled out from each candidate to rank it, then dropped"
            " (beam_search; default: 0)",
        )


def add_stepwise_arguments(group: argparse._ArgumentGroup) -> None:
    """The options of particle_filter, rebase and revise (`StrategySettings` fields): passed to
    every strategy that has the setting, checked by the strategy before any request."""
    group.add_argument(
        "--weight-temperature",
        type=float,
        help="T of the search's weights: softmax(logit(r) / T) for particle_filter (default:"
        f" {_FILTER.weight_temperature}), softmax(value / T) for rebase (default:"
        f" {_REBASE.weight_temperature}); the two scales differ, so one run of both with one"
        " T sets both",
    )
    group.add_argument(
        "--resampling",
        choices=RESAMPLINGS,
        help=f"how particle_filter draws its pool (default: {_FILTER.resampling})",
    )
    group.add_argument(
        "--ess-threshold",
        type=float,
        help="particle_filter resamples after a step only when the effective sample size over"
        f" the pool size is <= this, in [0, 1] (default: {_FILTER.ess_threshold}: every step)",
    )
    group.add_argument(
        "--resample-inactive",
        action=argparse.BooleanOptionalAction,
        help="finished particles stay in particle_filter's resampling pool (default:"
        f" {'yes' if _FILTER.resample_inactive else 'no'})",
    )
    group.add_argument(
        "--anneal-below",
        type=float,
        help="particle_filter's entropic annealing: flatten the weights when ESS / pool size"
        f" falls below this, in [0, 1] (default: {_FILTER.anneal_below}: off)",
    )
    group.add_argument(
        "--anneal-until",
        type=float,
        help="particle_filter anneals only while steps / max depth is below this, in [0, 1]"
        f" (default: {_FILTER.anneal_until})",
    )
    group.add_argument(
        "--threshold",
        type=float,
        help="revise revises a solution with a step scored below this, in [0, 1]"
        f" (default: {_REVISE.threshold})",
    )
    group.add_argument(
        "--cut",
        choices=CUTS,
        help=f"where revise cuts a solution (default: {_REVISE.cut})",
    )
    group.add_argument(
        "--continuations",
        type=positive_int,
        help="samples revise draws per round, from the kept prefix or prompted (default:"
        f" {_REVISE.continuations})",
    )
    group.add_argument(
        "--rounds",
        type=non_negative_int,
        help=f"revisions at most per solution (revise; default: {_REVISE.rounds})",
    )
    group.add_argument(
        "--revision",
        choices=REVISIONS,
        help="how revise revises: 'guided' cuts where the PRM says the solution went wrong and"
        " resamples the rest; 'prompted' shows the model its solution and --critique and"
        " samples new solutions (needs chat mode or a chat template, not --prompt-format;"
        f" default: {_REVISE.revision})",
    )
    group.add_argument(
        "--critique",
        help="the request after the solution in prompted revision (default: a request to find"
        " the first mistake and write a corrected solution ending in \\boxed{})",
    )


def strategy_settings_of(args: argparse.Namespace) -> StrategySettings:
    """The strategy knobs given on the command line (None: the strategy's default, or a
    setting the command does not offer)."""
    names = [field.name for field in dataclasses.fields(StrategySettings)]
    return StrategySettings(**{name: getattr(args, name, None) for name in names})


def add_sampling_arguments(group: argparse._ArgumentGroup) -> None:
    """--temperature, --top-p, --max-tokens and the system prompt."""
    group.add_argument(
        "--temperature", type=float, default=_SAMPLING.temperature, help="sampling temperature"
    )
    group.add_argument(
        "--top-p", type=float, default=_SAMPLING.top_p, help="nucleus sampling probability"
    )
    group.add_argument(
        "--max-tokens",
        type=positive_int,
        default=_SAMPLING.max_tokens,
        help="most tokens one generation request may produce",
    )
    prompt = group.add_mutually_exclusive_group()
    prompt.add_argument(
        "--system-prompt",
        help=r"the policy's system prompt, \n for a newline (default: the search-and-learn"
        r" math prompt: '## Step N:' steps, then a \boxed{} answer)",
    )
    prompt.add_argument("--no-system-prompt", action="store_true", help="send no system prompt")


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The endpoints file, or the policy and PRM flags it replaces."""
    ends = parser.add_argument_group(
        "endpoints", "an endpoints file, or the flags below (not both)"
    )
    ends.add_argument(
        "--endpoints",
        type=Path,
        metavar="FILE",
        help="endpoints file (JSON or TOML with 'policy' and optionally 'prm', as"
        " servers/launch.py writes it)",
    )
    ends.add_argument(
        "--policy-url",
        help="the policy's base URL, e.g. http://127.0.0.1:8000/v1; several servers of the"
        " model: their URLs separated by commas (each problem stays on one of them)",
    )
    ends.add_argument("--policy-model", help="the policy's served model name")
    ends.add_argument(
        "--mode",
        choices=("completions", "chat"),
        help=f"how the policy is prompted (default: {_ENDPOINT['mode']})",
    )
    ends.add_argument(
        "--tokenizer", help="policy tokenizer, a hub name or a path (default: the model name)"
    )
    ends.add_argument(
        "--prompt-format",
        type=escapes,
        help=r'policy prompt without a chat template, e.g. "{system}\n\n{problem}\n\n"'
        " (default: the model's chat template)",
    )
    ends.add_argument(
        "--api-key-env",
        metavar="VAR",
        help=f"variable holding the policy's API key (default: {DEFAULT_API_KEY_ENV}, may be"
        " unset)",
    )
    ends.add_argument(
        "--prm-url",
        help="the PRM's base URL, or several separated by commas (default: --policy-url)",
    )
    ends.add_argument("--prm-model", help="the PRM's served model name (default: no PRM)")
    ends.add_argument(
        "--scoring",
        choices=("pooling", "logprob"),
        help=f"how the PRM scores steps (default: {_ENDPOINT['scoring']})",
    )
    ends.add_argument("--prm-tokenizer", help="PRM tokenizer (default: the PRM model name)")
    ends.add_argument(
        "--prm-prompt-format",
        type=escapes,
        help=r'PRM prompt without a chat template, e.g. "{problem}\n\n{solution}"'
        " (default: the PRM's chat template)",
    )
    ends.add_argument(
        "--prm-api-key-env",
        metavar="VAR",
        help=f"variable holding the PRM's API key (default: {DEFAULT_API_KEY_ENV}, may be unset)",
    )
    ends.add_argument(
        "--max-in-flight",
        type=positive_int,
        help=f"requests in flight per endpoint (default: {_ENDPOINT['max_in_flight']})",
    )


_ENDPOINT_FLAGS = (
    "policy_url",
    "policy_model",
    "mode",
    "tokenizer",
    "prompt_format",
    "api_key_env",
    "prm_url",
    "prm_model",
    "scoring",
    "prm_tokenizer",
    "prm_prompt_format",
    "prm_api_key_env",
)


def endpoints_of(args: argparse.Namespace) -> tuple[Endpoint, Endpoint | None]:
    """The policy and PRM (None: no PRM) of `add_endpoint_arguments`' flags.

    Raises:
        ConfigError: both a file and flags, no policy, a bad file or a bad value.
    """
    limits: dict[str, Any] = {}
    if args.max_in_flight is not None:
        limits["max_in_flight"] = args.max_in_flight
    if args.endpoints is not None:
        flags = [f for f in _ENDPOINT_FLAGS if getattr(args, f) is not None]
        if flags:
            named = ", ".join("--" + f.replace("_", "-") for f in flags)
            raise ConfigError(
                f"--endpoints and {named} both given: put every endpoint setting in the file"
            )
        loaded = load_endpoints(args.endpoints)
        prm = loaded.get("prm")
        return (
            dataclasses.replace(loaded["policy"], **limits),
            None if prm is None else dataclasses.replace(prm, **limits),
        )
    if not args.policy_url or not args.policy_model:
        raise ConfigError("give --policy-url and --policy-model (or --endpoints FILE)")
    policy = Endpoint(
        base_url=url_list(args.policy_url),
        model=args.policy_model,
        **_given(mode=args.mode, tokenizer=args.tokenizer, prompt_format=args.prompt_format),
        **_given(api_key_env=args.api_key_env),
        **limits,
    )
    if args.prm_model is None:
        if args.prm_url is not None:
            raise ConfigError("--prm-url needs --prm-model")
        return policy, None
    prm = Endpoint(
        base_url=url_list(args.prm_url or args.policy_url),
        model=args.prm_model,
        **_given(scoring=args.scoring, tokenizer=args.prm_tokenizer),
        **_given(prompt_format=args.prm_prompt_format, api_key_env=args.prm_api_key_env),
        **limits,
    )
    return policy, prm


def url_list(text: str) -> str | list[str]:
    """A URL flag's value: one URL, or a list of the comma-separated ones (blanks ignored, so
    "a, b" and "a,b," read alike; an empty list is the `Endpoint` check's error)."""
    if "," not in text:
        return text
    return [url.strip() for url in text.split(",") if url.strip()]


def _given(**fields: Any) -> dict[str, Any]:
    """The flags that were given; the others keep `Endpoint`'s defaults."""
    return {name: value for name, value in fields.items() if value is not None}


def sampling_of(args: argparse.Namespace) -> Sampling:
    """The `Sampling` of `add_sampling_arguments`' flags (checked by `Sampling`)."""
    return Sampling(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)


def system_prompt_of(args: argparse.Namespace) -> str | None:
    """The system prompt of `add_sampling_arguments`' flags (None: none)."""
    if args.no_system_prompt:
        return None
    if args.system_prompt is not None:
        return escapes(args.system_prompt)
    return DEFAULT_SYSTEM_PROMPT
