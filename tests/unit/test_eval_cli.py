"""asynctts.cli: bad input is named and fails with exit status 2 before any request is sent
(a listening socket that must never see a connection proves it)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from asynctts.cli import main


def eval_args(sock: socket.socket, out: Path, *extra: str) -> list[str]:
    port = sock.getsockname()[1]
    return [
        "eval",
        "--policy-url",
        f"http://127.0.0.1:{port}/v1",
        "--policy-model",
        "m",
        "--prm-model",
        "p",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def write(path: Path, *records: object) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "nope", "--n", "4"], "unknown strategy 'nope'; choose one of"),
        (["--strategy", "dvts", "--n", "2", "4"], "strategy 'dvts' cannot use budget n=2"),
        (["--strategy", "beam_search@4,6"], "strategy 'beam_search' cannot use budget n=6"),
        (
            ["--strategy", "dvts@8", "--width", "3"],
            "strategy 'dvts' cannot use budget n=8: n=8 is not a multiple of width=3",
        ),
        (["--strategy", "majority"], "strategy 'majority' has no budget"),
        (["--strategy", "majority", "--n", "4", "--levels", "9"], "no problem matches levels=[9]"),
        (
            ["--strategy", "majority", "--n", "4", "--subjects", "Topology"],
            "subjects ['topology'] are not in the data",
        ),
        (
            ["--strategy", "majority", "--n", "4", "--retry-errors"],
            "--retry-errors only applies with --resume",
        ),
        (
            ["--strategy", "majority", "--n", "4", "--allow-version-change"],
            "--allow-version-change only applies with --resume",
        ),
        (
            ["--strategy", "majority", "--n", "4", "--temperature", "-1"],
            "Sampling temperature=-1.0: need a finite value >= 0",
        ),
    ],
)
def test_bad_input_fails_before_any_request(
    listener: socket.socket,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(eval_args(listener, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("asynctts eval: error: ")
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing written either


def test_bad_data_files_are_named_with_their_line(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {"problem": "What is 1+1?", "answer": "2", "unique_id": "a"}
    cases = {
        "missing.jsonl": None,
        "no_answer.jsonl": [good, {"problem": "What is 2+2?", "unique_id": "b"}],
        "no_problem.jsonl": [{"answer": "2"}],
    }
    expected = {
        "missing.jsonl": "missing.jsonl does not exist",
        "no_answer.jsonl": "no_answer.jsonl:2: field 'answer' is missing",
        "no_problem.jsonl": "no_problem.jsonl:1: field 'problem' is missing",
    }
    for name, records in cases.items():
        path = tmp_path / name
        if records is not None:
            write(path, *records)
        args = eval_args(listener, tmp_path / "run", "--strategy", "majority", "--n", "2")
        assert main([*args, "--data", str(path)]) == 2
        assert expected[name] in capsys.readouterr().err
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text(json.dumps(good) + "\n{oops\n", encoding="utf-8")
    args = eval_args(listener, tmp_path / "run", "--strategy", "majority", "--n", "2")
    assert main([*args, "--data", str(malformed)]) == 2
    assert "malformed.jsonl:2: not valid JSON" in capsys.readouterr().err


def test_the_hub_offline_fails_at_once_naming_the_packaged_copy(
    listener: socket.socket,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = eval_args(listener, tmp_path / "run", "--strategy", "majority", "--n", "2")
    assert main([*args, "--data", "hub"]) == 2
    assert capsys.readouterr().err == (
        "asynctts eval: error: cannot fetch HuggingFaceH4/MATH-500/test.jsonl from the Hugging"
        " Face hub: HF_HUB_OFFLINE is set; drop `--data hub` to use the MATH-500 copy packaged"
        " with asynctts (load_dataset() with no argument), or pass a local JSONL file\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_prm_strategy_without_a_prm_is_named(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = eval_args(listener, tmp_path / "run", "--strategy", "best_of_n", "--n", "4")
    at = args.index("--prm-model")
    del args[at : at + 2]
    assert main(args) == 2
    assert "strategy 'best_of_n' needs a PRM endpoint" in capsys.readouterr().err


def test_endpoint_flags_are_required_and_exclusive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "--strategy", "majority", "--n", "2", "--out", str(tmp_path / "r")]
    assert main(base) == 2
    assert "give --policy-url and --policy-model" in capsys.readouterr().err
    assert main([*base, "--policy-url", "ftp://x", "--policy-model", "m"]) == 2
    assert "needs a scheme and a host" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--policy-url",
                "http://h/v1",
                "--policy-model",
                "m",
                "--prm-url",
                "http://h/v1",
            ]
        )
        == 2
    )
    assert "--prm-url needs --prm-model" in capsys.readouterr().err
    endpoints = ["--endpoints", str(tmp_path / "e.json")]
    assert main([*base, *endpoints, "--policy-url", "http://h/v1"]) == 2
    assert "--endpoints and --policy-url both given" in capsys.readouterr().err


def test_an_endpoints_file_replaces_the_flags(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    endpoints = write(
        tmp_path / "endpoints.json",
        {"policy": {"base_url": url, "model": "m"}, "prm": {"base_url": url, "model": "p"}},
    )
    base = ["eval", "--out", str(tmp_path / "r"), "--no-progress"]
    # the file is read and the plan checked (dvts@6 is bad), all before any request
    assert main([*base, "--endpoints", str(endpoints), "--strategy", "dvts@6"]) == 2
    assert "strategy 'dvts' cannot use budget n=6" in capsys.readouterr().err
    bad = write(tmp_path / "bad.json", {"policy": {"base_url": url, "model": "m", "x": 1}})
    assert main([*base, "--endpoints", str(bad), "--strategy", "majority@2"]) == 2
    assert "bad.json: policy: unknown key(s) ['x']" in capsys.readouterr().err
    both = ["--endpoints", str(endpoints), "--prompt-format", "{problem}", "--scoring", "logprob"]
    assert main([*base, *both, "--strategy", "majority@2"]) == 2
    assert "--endpoints and --prompt-format, --scoring both given" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--n", "4", "--out", "x"], "the following arguments are required: --strategy"),
        (["eval", "--strategy", "majority", "--n", "0", "--out", "x"], "0 is not >= 1"),
        (["eval", "--strategy", "majority", "--n", "two", "--out", "x"], "'two' is not an integer"),
        (["eval", "--strategy", "majority", "--n", "2"], "required: --out"),
        (["eval", "--strategy", "m", "--out", "x", "--aggregate", "max"], "invalid choice: 'max'"),
        (["report"], "the following arguments are required: RUN_DIR"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_malformed_flags_exit_2_with_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: asynctts")
    assert message in err


def test_report_of_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "asynctts report: error: " in (err := capsys.readouterr().err)
    assert "no journal there" in err
