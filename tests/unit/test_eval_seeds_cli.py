"""`asynctts eval --seeds`: bad seeds, mixed-up directories and seed runs that do not fit are
named, exit status 2, before any request (a listening socket that must never see a connection
proves it) and before any seed run is created."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from asynctts.cli import main
from asynctts.eval.journal import Journal


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
        "--strategy",
        "weighted_best_of_n",
        "--n",
        "2",
        "--limit",
        "2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def write_journal(run_dir: Path, identity: dict[str, object], *events: dict[str, object]) -> None:
    with Journal.open(run_dir / "journal.jsonl", {"identity": identity}, resume=False) as journal:
        for event in events:
            journal.append(event)


def refused(listener: socket.socket, out: Path, capsys: pytest.CaptureFixture[str], *extra: str):
    assert main(eval_args(listener, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("asynctts eval: error: ")
    return err


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        (["3"], "--seeds 3: give two or more seeds (one run's seed is --seed)"),
        (["0", "1", "0"], "--seeds 0 1 0: seed 0 is given twice"),
    ],
)
def test_bad_seeds_are_named(
    listener: socket.socket,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    seeds: list[str],
    message: str,
) -> None:
    assert message in refused(listener, tmp_path / "run", capsys, "--seeds", *seeds)
    assert not (tmp_path / "run").exists()


def test_a_negative_seed_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--strategy", "majority", "--out", "x", "--seeds", "0", "-1"])
    assert caught.value.code == 2
    assert "argument --seeds: -1 is not >= 0" in capsys.readouterr().err


def test_single_runs_and_seeds_directories_are_not_mixed_up(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single = tmp_path / "single"
    write_journal(single, {"seed": 0})
    err = refused(listener, single, capsys, "--seeds", "0", "1", "--resume")
    assert f"{single} holds a single run (journal.jsonl): --seeds needs a directory" in err
    seeds = tmp_path / "seeds"
    write_journal(seeds / "seed-0", {"seed": 0})
    write_journal(seeds / "seed-2", {"seed": 2})
    err = refused(listener, seeds, capsys, "--resume")
    assert f"{seeds} holds runs of request seeds (seed-0, seed-2): continue them with" in err
    assert not (seeds / "journal.jsonl").exists()


def test_a_seed_run_that_does_not_fit_is_refused_before_any_seed_runs(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seeds"
    write_journal(out / "seed-1", {"seed": 1, "format": "another"})
    err = refused(listener, out, capsys, "--seeds", "0", "1", "--resume")
    assert f"cannot resume {out / 'seed-1' / 'journal.jsonl'}" in err
    assert not (out / "seed-0").exists()  # checked before the missing ones are created
    # without --resume, a seed run holding results is refused likewise
    write_journal(out / "seed-1", {"seed": 1}, {"type": "result", "job": "j", "problem_id": "p"})
    err = refused(listener, out, capsys, "--seeds", "0", "1")
    assert f"{out / 'seed-1'} already holds a run (journal.jsonl); pass --resume" in err
    assert not (out / "seed-0").exists()
