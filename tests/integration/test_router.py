"""Simulated servers behind a real vllm-router (the launcher starts it), over loopback: the
X-Session-ID header keeps a problem on one worker, a worker killed mid-run loses no problem,
bad workers and routers give clear errors, and the launcher's start/status/stop cycle with a
stand-in `vllm` (a simulated server under vLLM's command line).

The router comes from the vLLM venv (`make venv-vllm` installs it), or $ASYNCTTS_VLLM_ROUTER.
Without it these tests are skipped, except under CI, where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from asynctts import Endpoint, EndpointUnreachable, ModelNotFound, Solver
from asynctts.config import load_endpoints
from asynctts.equivalence import Equivalence
from asynctts.errors import RequestRejected
from asynctts.testing import LatencyModel, SimProblem, SimulatedServer
from asynctts.transport import Transport

import launch
from helpers_endpoints import (
    COMPLETIONS,
    beam_search_all,
    closed_port,
    endpoints_at,
    numbered,
    server_pair,
    servers_by_problem,
)

pytestmark = pytest.mark.router


SIM = launch.ServerSpec(role="policy", model="sim", served_name="sim-policy")


@pytest.fixture(scope="session")
def router_bin() -> Path:
    path: Path = launch.router_executable(launch.VLLM_PYTHON)
    if not path.is_file():
        message = (
            f"vllm-router missing at {path}: `make venv-vllm` installs it (or set "
            f"{launch.ROUTER_ENV} to one)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.asynccontextmanager
async def router(router_bin: Path, workers: Sequence[str], run_dir: Path) -> AsyncIterator[Any]:
    """A consistent_hash router the launcher starts (its checks and flags), in a thread: the
    simulated workers answer its checks from this event loop."""
    spec = launch.RouterSpec(
        upstream=SIM,
        workers=tuple(workers),
        port=launch.free_port("127.0.0.1"),
        metrics_port=launch.free_port("127.0.0.1"),
    )
    (started,) = await asyncio.to_thread(
        launch.start_routers, [spec], run_dir=run_dir, router=router_bin, say=lambda _: None
    )
    try:
        yield started
    finally:
        await asyncio.to_thread(launch.stop_servers, [started], say=lambda _: None)


def router_metric(front: Any, name: str) -> float:
    """The sum of a counter of the router's own Prometheus metrics (0 when absent)."""
    url = f"http://127.0.0.1:{front.spec.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in "{ "
    )


@pytest.fixture
def problems(math500: list[dict[str, Any]]) -> dict[str, SimProblem]:
    return {r["problem"]: SimProblem(answer=r["answer"], n_steps=3) for r in math500[200:220]}


@pytest.fixture
async def pair(problems: dict[str, SimProblem]) -> AsyncIterator[list[SimulatedServer]]:
    async with server_pair(problems, jitter_s=0.005) as servers:
        yield servers


# --- affinity ------------------------------------------------------------------------------


async def test_the_session_header_keeps_each_problem_on_one_worker(
    pair: list[SimulatedServer],
    problems: dict[str, SimProblem],
    equivalence: Equivalence,
    router_bin: Path,
    tmp_path: Path,
) -> None:
    async with router(router_bin, [s.url for s in pair], tmp_path) as front:
        sticky = await beam_search_all(front.base_url, problems, equivalence)
        seen = servers_by_problem(pair)
        for server in pair:
            server.reset_stats()
        scattered = await beam_search_all(
            front.base_url, problems, equivalence, affinity_header=None
        )
        unsticky = servers_by_problem(pair)
    for solutions in (sticky, scattered):
        assert len(solutions) == 20 and all(s.ok and not s.lost for s in solutions.values())
    # with the header: every generation of a problem on one worker, both workers used
    assert len(seen) == 20 and all(len(where) == 1 for where in seen.values()), seen
    counts = [sum(where == {i} for where in seen.values()) for i in (0, 1)]
    assert min(counts) >= 3, counts
    # without it the router hashes each text prompt whole: a problem's generations scatter
    assert sum(len(where) == 2 for where in unsticky.values()) >= 12, unsticky


async def test_token_id_prompts_of_one_length_share_a_worker_without_the_header(
    pair: list[SimulatedServer], router_bin: Path, tmp_path: Path
) -> None:
    """The router's key for a token-id prompt without a header is "token_ids:<length>": twenty
    different prompts of one length all reach one worker; with the header they spread. (The
    simulated server answers token ids with a 400, which the router passes on unretried.)"""
    async with router(router_bin, [s.url for s in pair], tmp_path) as front:
        for server in pair:
            server.reset_stats()  # the launcher's smoke test went through
        for header in (None, "X-Session-ID"):
            endpoint = Endpoint(base_url=front.base_url, model="sim-policy", affinity_header=header)
            async with Transport(endpoint, name="policy") as transport:
                for i in range(20):
                    body = {"model": "sim-policy", "prompt": [i, i + 1, i + 2], "max_tokens": 1}
                    with pytest.raises(RequestRejected, match="HTTP 400: prompt must be a string"):
                        await transport.post_json(COMPLETIONS, body, affinity=f"q{i}")
            hits = [sum(r.route == COMPLETIONS for r in s.reset_stats().records) for s in pair]
            if header is None:
                assert sorted(hits) == [0, 20], hits
            else:
                assert min(hits) >= 1 and sum(hits) == 20, hits


# --- failover ------------------------------------------------------------------------------


@contextlib.contextmanager
def sim_process(problems: dict[str, SimProblem], tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A simulated server in a process of its own (so it can be SIGKILLed): (URL, pid)."""
    rows = tmp_path / "problems.jsonl"
    rows.write_text(
        "".join(json.dumps({"problem": p, "answer": s.answer, "n_steps": 3}) + "\n"
                for p, s in problems.items())
    )  # fmt: skip
    port = launch.free_port("127.0.0.1")
    args = ["--port", str(port), "--prm-model", "sim-prm", "--problems", str(rows), "--seed", "2"]
    args += ["--latency", "h200_1b", "--time-scale", "8"]
    log = (tmp_path / "victim.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "asynctts.testing.server", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            assert process.poll() is None, (tmp_path / "victim.log").read_text()
            assert time.monotonic() < deadline, "the simulated worker did not start"
            time.sleep(0.1)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()


async def test_a_worker_killed_mid_run_loses_no_problem(
    problems: dict[str, SimProblem], equivalence: Equivalence, router_bin: Path, tmp_path: Path
) -> None:
    """The victim runs in its own process and is SIGKILLed once the survivor has answered some
    requests: its problems move to the survivor, through the router's retries (generations)
    and asynctts's (the PRM's /pooling, which the router proxies without retrying)."""
    latency = LatencyModel.h200_1b(time_scale=8)
    survivor = SimulatedServer(prm_model="sim-prm", problems=problems, latency=latency, seed=1)
    async with survivor:
        with sim_process(problems, tmp_path) as (victim_url, victim_pid):
            async with router(router_bin, [survivor.url, victim_url], tmp_path) as front:
                run = asyncio.create_task(
                    beam_search_all(front.base_url, problems, equivalence, backoff_base_s=0.1)
                )
                async with asyncio.timeout(60):
                    while len(survivor.stats.records) < 30:  # noqa: ASYNC110 - watching a server
                        await asyncio.sleep(0.01)
                assert not run.done()
                os.kill(victim_pid, signal.SIGKILL)
                killed_s = time.monotonic()
                solutions = await run
                router_retries = router_metric(front, "vllm_router_retries_total")
    assert len(solutions) == 20 and all(s.ok and not s.lost for s in solutions.values())
    before = {r.problem for r in survivor.stats.records if r.start_s < killed_s}
    after = {r.problem for r in survivor.stats.records if r.start_s > killed_s}
    moved = after - before
    assert moved, "no problem moved to the survivor"
    # the router retried the generations sent to the dead worker (its metrics count them);
    # the PRM's /pooling, which it proxies in one attempt, came back as a 502 until the dead
    # worker's circuit opened, and asynctts retried it (its ledgers count those)
    assert router_retries >= 1
    failed = [a.error or "" for s in solutions.values() for a in s.ledger.attempts if a.error]
    assert sum(s.ledger.totals().retries for s in solutions.values()) == len(failed)
    assert all(
        e.startswith(f"ServerError: {front.root_url}/pooling: HTTP 502: Backend request failed")
        for e in failed
    ), failed


# --- bad input -----------------------------------------------------------------------------


async def test_workers_serving_another_model_and_routers_that_do_not_answer(
    pair: list[SimulatedServer],
    problems: dict[str, SimProblem],
    equivalence: Equivalence,
    router_bin: Path,
    tmp_path: Path,
) -> None:
    good = pair[0]
    async with SimulatedServer(model="other-model") as other:
        # the launcher refuses a worker serving another model before starting the router
        with pytest.raises(launch.LaunchError) as caught:
            async with router(router_bin, [good.url, other.url], tmp_path):
                pass
        assert str(caught.value) == (
            f"policy-router: worker {other.url} serves ['other-model'], not 'sim-policy': "
            "every worker of a role must serve the same model under the same name"
        )
        # one added later behind the launcher's back: the router answers /v1/models from one
        # worker, whichever it lists first (not always the same). So asynctts either refuses
        # the open, naming the model it saw, or opens, and the problems the router hashes to
        # the other worker fail at once with that worker's 404 (not retried): never a hang
        async with router(router_bin, [good.url], tmp_path) as front:
            request = urllib.request.Request(
                f"{front.root_url}/add_worker?url={other.url}", method="POST"
            )
            await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).close())
            policy = endpoints_at(front.base_url)["policy"]
            try:
                async with Solver(policy=policy, equivalence=equivalence) as solver:
                    runs = solver.solve_many(numbered(problems), strategy="majority", n=2, seed=0)
                    solutions = [sol async for sol in runs]
            except ModelNotFound as refused:
                assert str(refused) == (
                    f"endpoint {front.base_url} does not serve model 'sim-policy'; "
                    "it serves ['other-model']"
                )
            else:
                failed = [s for s in solutions if not s.ok]
                assert failed and len(failed) < len(solutions)
                for sol in failed:
                    assert sol.error is not None
                    assert "HTTP 404: The model `sim-policy` does not exist." in sol.error
                assert all(s.ledger.totals().retries == 0 for s in solutions)
            # a router whose workers are all gone answers 500s: the open fails, naming it
            await good.stop()
            await other.stop()
            started = time.monotonic()
            with pytest.raises(EndpointUnreachable) as gone:
                async with Solver(
                    policy=endpoints_at(front.base_url, backoff_base_s=0.05)["policy"]
                ):
                    pass
            assert time.monotonic() - started < 20
            assert f"endpoint {front.base_url} is unreachable: GET /v1/models failed" in str(
                gone.value
            )
            assert "HTTP 500: Request failed: error sending request" in str(gone.value)
    # a router URL where nothing listens
    nowhere = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(EndpointUnreachable, match="connection failed"):
        async with Solver(policy=endpoints_at(nowhere, backoff_base_s=0.05)["policy"]):
            pass


# --- the launcher ----------------------------------------------------------------------------


def fake_vllm(tmp_path: Path) -> Path:
    """A `python` that, run as `python -m vllm.entrypoints.openai.api_server --served-model-name
    N --host H --port P ...`, serves a simulated model named N there."""
    script = tmp_path / "python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from asynctts.testing.server import main\n"
        "args = sys.argv[1:]\n"
        "value = lambda flag: args[args.index(flag) + 1]\n"
        'main(["--host", value("--host"), "--port", value("--port"),'
        ' "--model", value("--served-model-name")])\n'
    )
    script.chmod(0o755)
    return script


def test_start_status_stop_of_replicas_behind_routers(
    router_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = [
        launch.ServerSpec(role="policy", model="sim", served_name="sim-policy", memory_gib=0.1),
        launch.ServerSpec(
            role="prm",
            model="sim",
            served_name="sim-prm",
            check="pooling",
            endpoint=(("scoring", "pooling"),),
            memory_gib=0.1,
        ),
    ]
    servers, routers = launch.fleet(specs, replicas=2, replica_port=0, metrics_port=0)
    run_dir = tmp_path / "run"
    started = launch.start_fleet(
        servers, routers, run_dir=run_dir, python=fake_vllm(tmp_path), router=router_bin,
        say=lambda _: None,
    )  # fmt: skip
    try:
        launch.write_state(run_dir, started)
        launch.write_json(run_dir / "endpoints.json", launch.endpoints_config(started))
        loaded = load_endpoints(run_dir / "endpoints.json")
        fronts = {r.spec.role: r for r in started if isinstance(r, launch.Router)}
        assert loaded["policy"].base_url == fronts["policy"].base_url
        assert loaded["prm"].base_url == fronts["prm"].base_url
        assert loaded["prm"].scoring == "pooling"
        assert launch.main(["--run-dir", str(run_dir), "status"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split(":")[0] for line in lines if not line.startswith("  ")] == [
            "policy-router", "prm-router", "policy-0", "policy-1", "prm-0", "prm-1"
        ]  # fmt: skip
        assert all(line.endswith(": healthy") for line in lines)
        assert sum(line.startswith("  worker http://127.0.0.1:") for line in lines) == 4
        pids = [s.pid for s in started]
    finally:
        assert launch.main(["--run-dir", str(run_dir), "stop"]) == 0
        for s in started:
            s.process.wait(timeout=10)  # reap them: the CLI stopped them by PID
    assert [line.rsplit(" ", 1)[0] for line in capsys.readouterr().out.splitlines()] == [
        f"{s.name}: stopped (pid" for s in started
    ]
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not (run_dir / "state.json").exists()
