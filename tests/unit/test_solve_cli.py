"""`asynctts solve`: bad input is named and exits 2 before any request (a listening socket
that must never see a connection proves it); every command's --help shows its defaults."""

from __future__ import annotations

import argparse
import io
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from asynctts.cli import add_eval_arguments, main
from asynctts.cli.arguments import HelpFormatter
from asynctts.cli.report import add_report_arguments
from asynctts.cli.solve import add_solve_arguments, prepare_solve


@pytest.fixture
def endpoints(listener: socket.socket, tmp_path: Path) -> Path:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    path = tmp_path / "endpoints.json"
    path.write_text(
        json.dumps(
            {"policy": {"base_url": url, "model": "m"}, "prm": {"base_url": url, "model": "p"}}
        ),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "dvts", "--n", "6"], "strategy 'dvts': n=6 is not a multiple of width=4"),
        (
            ["--strategy", "beam_search", "--n", "8", "--width", "3"],
            "strategy 'beam_search': n=8 is not a multiple of width=3",
        ),
        (
            ["--strategy", "majority", "--n", "4", "--temperature", "-1"],
            "Sampling temperature=-1.0: need a finite value >= 0",
        ),
        (
            ["--strategy", "revise", "--n", "5", "--threshold", "1.5"],
            "strategy 'revise' with {'threshold': 1.5}: threshold=1.5: need a value in [0, 1]",
        ),
        (
            ["--strategy", "particle_filter", "--n", "4", "--weight-temperature", "0"],
            "strategy 'particle_filter' with {'weight_temperature': 0.0}: weight_temperature=0.0:"
            " need > 0",
        ),
        (
            ["--strategy", "rebase", "--n", "4", "--weight-temperature", "-1"],
            "weight_temperature=-1.0: need > 0",
        ),
        (
            ["--strategy", "particle_filter", "--n", "4", "--ess-threshold", "2"],
            "ess_threshold=2.0: need a value in [0, 1]",
        ),
        (
            ["--strategy", "revise", "--n", "4"],
            "n=4: one solution and its revisions take up to 1 + continuations * rounds",
        ),
        (
            ["--strategy", "majority", "--n", "4", "--trace", "tree.txt"],
            "--trace tree.txt: name a .json file (the tree) or a .png, .svg, .pdf file",
        ),
        (
            ["--strategy", "majority", "--n", "4", "--trace", "nowhere/tree.png"],
            "--trace nowhere/tree.png: the directory nowhere does not exist",
        ),
        (
            ["--strategy", "majority", "--n", "4", "--policy-url", "http://h/v1"],
            "--endpoints and --policy-url both given",
        ),
    ],
)
def test_bad_input_exits_2_before_any_request(
    endpoints: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["solve", "What is $1+1$?", "--endpoints", str(endpoints), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"asynctts solve: error: {captured.err.split('error: ', 1)[1]}"
    assert captured.err.count("\n") == 1  # one line, no traceback
    assert message in captured.err
    assert captured.out == ""


def test_problems_that_cannot_be_solved_are_named(
    listener: socket.socket, endpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    assert main(
        ["solve", "  ", "--strategy", "majority", "--n", "2", "--endpoints", str(endpoints)]
    )
    assert capsys.readouterr().err == "asynctts solve: error: problem is empty\n"
    no_prm = ["--policy-url", url, "--policy-model", "m", "--strategy", "dvts", "--n", "8"]
    assert main(["solve", "What is 1+1?", *no_prm]) == 2
    assert "strategy 'dvts' needs a PRM endpoint" in capsys.readouterr().err
    assert main(["solve", "What is 1+1?", "--strategy", "majority", "--n", "2"]) == 2
    assert "give --policy-url and --policy-model (or --endpoints FILE)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["solve", "q", "--strategy", "nope", "--n", "4"], "invalid choice: 'nope'"),
        (["solve", "q", "--strategy", "dvts"], "the following arguments are required: --n"),
        (["solve", "q", "--n", "4"], "the following arguments are required: --strategy"),
        (["solve", "q", "--strategy", "dvts", "--n", "0"], "0 is not >= 1"),
        (["solve", "q", "--strategy", "dvts", "--n", "8", "--top", "-1"], "-1 is not >= 0"),
        (["solve", "--strategy", "dvts", "--n", "8"], "required: PROBLEM"),
    ],
)
def test_malformed_flags_exit_2_with_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: asynctts solve")
    assert message in err


def test_the_problem_can_come_from_standard_input(endpoints: Path) -> None:
    parser = argparse.ArgumentParser()
    add_solve_arguments(parser)
    args = parser.parse_args(
        ["-", "--strategy", "dvts", "--n", "8", "--width", "2", "--endpoints", str(endpoints)]
    )
    request = prepare_solve(args, io.StringIO("What is $1+1$?\n"))
    assert request.problem == "What is $1+1$?"
    assert request.settings_line() == (
        "dvts n=8 (width=2, max_depth=40, aggregate=last, seed=0, temperature=0.8, top_p=1.0,"
        " max_tokens=2048)"
    )
    assert request.prm is not None and request.prm.model == "p"


def test_lookahead_reaches_beam_search(endpoints: Path) -> None:
    parser = argparse.ArgumentParser()
    add_solve_arguments(parser)
    argv = ["What is $1+1$?", "--strategy", "beam_search", "--n", "8", "--lookahead", "2"]
    args = parser.parse_args([*argv, "--endpoints", str(endpoints)])
    request = prepare_solve(args, io.StringIO())
    assert getattr(request.strategy, "lookahead", None) == 2
    assert "lookahead=2" in request.settings_line()


@pytest.mark.parametrize(
    ("flags", "strategy", "settings"),
    [
        (
            [
                "--weight-temperature",
                "0.5",
                "--resampling",
                "systematic",
                "--ess-threshold",
                "0.5",
                "--no-resample-inactive",
                "--anneal-below",
                "0.25",
            ],
            "particle_filter",
            {
                "weight_temperature": 0.5,
                "resampling": "systematic",
                "ess_threshold": 0.5,
                "resample_inactive": False,
                "anneal_below": 0.25,
            },
        ),
        (["--weight-temperature", "1"], "rebase", {"weight_temperature": 1.0}),
        (
            [
                "--threshold",
                "0.3",
                "--cut",
                "largest_drop",
                "--continuations",
                "3",
                "--rounds",
                "1",
            ],
            "revise",
            {"threshold": 0.3, "cut": "largest_drop", "continuations": 3, "rounds": 1},
        ),
        (
            ["--revision", "prompted", "--critique", "Check it."],
            "revise",
            {"revision": "prompted", "critique": "Check it."},
        ),
        # a strategy without the option keeps its own settings (as --width for majority)
        (["--threshold", "0.3", "--weight-temperature", "2"], "dvts", {"width": 4}),
    ],
)
def test_stepwise_options_reach_their_strategy(
    endpoints: Path, flags: list[str], strategy: str, settings: dict[str, object]
) -> None:
    parser = argparse.ArgumentParser()
    add_solve_arguments(parser)
    argv = ["What is $1+1$?", "--strategy", strategy, "--n", "8", *flags]
    request = prepare_solve(
        parser.parse_args([*argv, "--endpoints", str(endpoints)]), io.StringIO()
    )
    assert request.strategy.name == strategy
    for name, value in settings.items():
        assert getattr(request.strategy, name) == value
    line = request.settings_line()
    assert all(f"{name}={value}" in line for name, value in settings.items())


def help_of(add: Callable[[argparse.ArgumentParser], None]) -> tuple[argparse.ArgumentParser, str]:
    parser = argparse.ArgumentParser(prog="asynctts x", formatter_class=HelpFormatter)
    add(parser)
    return parser, parser.format_help()


def one_line(text: str) -> str:
    return " ".join(text.split())


def help_by_flag(text: str) -> dict[str, str]:
    """Each option's entry in a --help text (its lines joined), by its first flag."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        body = line.lstrip()
        indent = len(line) - len(body)
        if indent == 2 and body.startswith("-"):
            current = body.split()[0].rstrip(",")
            entries[current] = body
        elif current is not None and indent > 2:
            entries[current] += " " + body
        else:
            current = None
    return {flag: one_line(entry) for flag, entry in entries.items()}


@pytest.mark.parametrize("add", [add_solve_arguments, add_eval_arguments, add_report_arguments])
def test_every_help_shows_the_defaults_and_no_empty_ones(
    add: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser, text = help_of(add)
    assert "default: None" not in text and "default: False" not in text
    entries = help_by_flag(text)
    for action in parser._actions:
        assert action.help, f"{action.dest} has no help"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            flag = action.option_strings[0]
            assert f"(default: {action.default})" in entries[flag], entries[flag]


@pytest.mark.parametrize(
    ("add", "shown"),
    [
        (
            add_solve_arguments,
            [
                "(beam_search, dvts; default: 4)",
                "(beam_search, dvts; default: 40)",
                "strategies with a PRM; default: last)",
                "sampling temperature (default: 0.8)",
                "request seed: same seed, same result (default: 0)",
                "(0: all) (default: 10)",
                "WARNING shows retries) (default: ERROR)",
                "how the policy is prompted (default: completions)",
                "how the PRM scores steps (default: pooling)",
                "requests in flight per endpoint (default: 512)",
                "(default: OPENAI_API_KEY, may be unset)",
            ],
        ),
        (
            add_eval_arguments,
            [
                "'hub' for HuggingFaceH4/MATH-500",
                "(default: the copy of MATH-500 shipped with asynctts, read with no network)",
                "and the requests' sampling; with `eval --seeds`, the selection only (default: 0)",
                "problems solved at once (default: 64)",
                "processes grading answers (default: 2)",
                "RUN_DIR/eval.log (default: INFO)",
                "most tokens one generation request may produce (default: 2048)",
            ],
        ),
    ],
)
def test_defaults_that_live_elsewhere_are_named(
    add: Callable[[argparse.ArgumentParser], None], shown: list[str]
) -> None:
    _, text = help_of(add)
    for words in shown:
        assert words in one_line(text)


def test_the_console_help_lists_solve_eval_and_report(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "solve solve one problem; print the answer, the candidates and the ledger" in out
    for command in ("solve", "eval", "report"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "default: None" not in capsys.readouterr().out
