"""asynctts.metrics without a server: what one attempt's ledger records add to each metric,
the checks of a metrics port (bad values, prometheus_client missing, a port in use) made
before anything is sent or written."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asynctts import Attempt, ConfigError, Endpoint, Solver
from asynctts.cli import main
from asynctts.metrics import SolverMetrics
from asynctts.solution import LostBranch
from asynctts.transport import TransportStatistics

POLICY = Endpoint(base_url="http://127.0.0.1:9/v1", model="m")


def samples(metrics: SolverMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def attempt(endpoint: str, number: int, *, error: str | None = None, **tokens: float) -> Attempt:
    return Attempt(
        endpoint=endpoint,
        route="/v1/completions" if endpoint == "policy" else "/pooling",
        branches=("0",),
        attempt=number,
        start_s=10.0,
        end_s=10.3,
        status=None if error else 200,
        error=error,
        **tokens,
    )


def test_one_attempt_counts_each_ledger_record_and_its_duration_once() -> None:
    stats = TransportStatistics(
        in_flight=3,
        waiting=7,
        peak_in_flight=9,
        requests=0,
        attempts=0,
        retries=0,
        failures=0,
        max_in_flight=48,
    )
    metrics = SolverMetrics(lambda: {"policy": stats})
    # a PRM request that scored paths of three problems: three ledger records
    metrics.observe([attempt("prm", 1, prompt_tokens=t, share=t / 60) for t in (10, 20, 30)])
    metrics.observe([attempt("policy", 1, prompt_tokens=50, cached_tokens=40)])
    metrics.observe([attempt("policy", 2, error="TimedOut: no answer within 1 s")])
    seen = samples(metrics)
    assert seen[("asynctts_requests_total", (("endpoint", "prm"),))] == 3
    assert seen[("asynctts_requests_total", (("endpoint", "policy"),))] == 1
    assert seen[("asynctts_retries_total", (("endpoint", "policy"),))] == 1
    assert seen[("asynctts_retries_total", (("endpoint", "prm"),))] == 0
    failures = (("endpoint", "policy"), ("reason", "TimedOut"))
    assert seen[("asynctts_attempt_failures_total", failures)] == 1
    assert {dict(k)["kind"]: v for (n, k), v in seen.items() if n == "asynctts_tokens_total"} == {
        "prompt": 50,
        "cached": 40,
        "completion": 0,
        "prm": 60,
    }
    count = "asynctts_request_duration_seconds_count"
    assert seen[(count, (("endpoint", "prm"), ("route", "/pooling")))] == 1
    assert seen[(count, (("endpoint", "policy"), ("route", "/v1/completions")))] == 2
    bucket = "asynctts_request_duration_seconds_bucket"
    below = (("endpoint", "prm"), ("le", "0.25"), ("route", "/pooling"))
    above = (("endpoint", "prm"), ("le", "0.5"), ("route", "/pooling"))
    assert (seen[(bucket, below)], seen[(bucket, above)]) == (0, 1)  # 0.3 s
    assert seen[("asynctts_in_flight", (("endpoint", "policy"),))] == 3
    assert seen[("asynctts_waiting", (("endpoint", "policy"),))] == 7
    assert seen[("asynctts_max_in_flight", (("endpoint", "policy"),))] == 48


def test_problems_and_lost_branches_are_counted_by_class() -> None:
    metrics = SolverMetrics(dict)
    lost = LostBranch(index=2, branch="2", stage="scoring", reason="ServerError: HTTP 500: x")
    metrics.problem_solved([lost])
    metrics.problem_solved([])
    seen = samples(metrics)
    assert seen[("asynctts_problems_done_total", ())] == 2
    key = (("reason", "ServerError"), ("stage", "scoring"))
    assert seen[("asynctts_branches_lost_total", key)] == 1
    assert not [k for k in seen if k[0] == "asynctts_problems_failed_total"]


@pytest.mark.parametrize("port", [-1, 65536, True, "9400", 9400.0])
def test_a_bad_metrics_port_is_refused_at_construction(port: object) -> None:
    with pytest.raises(ConfigError) as raised:
        Solver(policy=POLICY, metrics_port=port)  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"metrics_port={port!r}: need an int in 0..65535 (0: any free port)"
    )


def test_without_prometheus_client_asynctts_imports_and_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if not installed\n"
        "import asynctts\n"
        "policy = asynctts.Endpoint(base_url='http://127.0.0.1:9/v1', model='m')\n"
        "asynctts.Solver(policy=policy)  # no metrics: fine\n"
        "try:\n"
        "    asynctts.Solver(policy=policy, metrics_port=9400)\n"
        "except asynctts.ConfigError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.startswith("metrics_port=9400 needs prometheus_client, which is not installed (")
    assert out.rstrip().endswith("): pip install 'asynctts[metrics]'")


def test_eval_refuses_a_metrics_port_in_use_before_anything(
    listener: socket.socket, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = listener.getsockname()[1]
    argv = [
        "eval",
        "--policy-url",
        f"http://127.0.0.1:{port}/v1",
        "--policy-model",
        "m",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--strategy",
        "majority",
        "--n",
        "2",
        "--metrics-port",
        str(port),
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"asynctts eval: error: metrics port {port} on 127.0.0.1 is in use by another program:"
        " choose another port (metrics_port, --metrics-port), or 0 for any free port\n"
    )
    assert not (tmp_path / "run").exists()  # nothing written either


def test_eval_refuses_a_port_number_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--out", str(tmp_path), "--strategy", "majority", "--metrics-port", "70000"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("error: argument --metrics-port: 70000 is not a TCP port (0..65535)\n")
