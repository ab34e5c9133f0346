"""An endpoint that cannot serve: a bounded wait, then one exception with one readable message.

The traceback shapes are checked as a user meets them: a plain script (`asyncio.run(solve(...))`
at top level) run in a subprocess, against a closed port, a socket that accepts and never
answers, a host name that does not resolve and https:// to a plain-HTTP server. Elapsed times
are only bounded from above, far above what they take (seconds), so a loaded machine passes:
they show that nothing hangs, they do not measure speed.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from asynctts import Endpoint, EndpointUnreachable, SolveFailed, Solver, solve
from asynctts.testing import Fault, SimProblem, SimulatedServer

from helpers_endpoints import closed_port, policy_of, silent_port

PROBLEM = "What is $6 \\times 7$?"
CHECK_TIMEOUT_S = 2.0
# what a script pays before its first request (interpreter start, imports), generously
STARTUP_MARGIN_S = 25.0
SCRIPT = """
import asyncio, sys
from asynctts import Endpoint, solve
policy = Endpoint(
    base_url=sys.argv[1], model="m", check_timeout_s=float(sys.argv[2]), backoff_base_s=0.05
)
asyncio.run(solve("What is 1+1?", strategy="majority", n=1, policy=policy))
"""
UNREACHABLE = "asynctts.errors.EndpointUnreachable: endpoint {url} is unreachable: "


@pytest.fixture
async def server() -> AsyncIterator[SimulatedServer]:
    async with SimulatedServer(problems={PROBLEM: SimProblem(answer="42", slip_rate=0.0)}) as s:
        yield s


@pytest.fixture
def quiet_port() -> Iterator[int]:
    with silent_port() as port:
        yield port


async def run_script(url: str, check_timeout_s: float = CHECK_TIMEOUT_S) -> tuple[list[str], float]:
    """Run SCRIPT against `url`; its stderr lines and the seconds it took."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, url, str(check_timeout_s), stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    elapsed = time.monotonic() - started
    assert process.returncode == 1, stderr.decode()
    return stderr.decode().splitlines(), elapsed


def check_shape(lines: list[str], url: str, cause: str, retries: int) -> None:
    """One traceback, no chained ones, the endpoint's error on the last line, the retries in
    the log above it, and few lines in all."""
    text = "\n".join(lines)
    assert text.count("Traceback (most recent call last):") == 1, text
    assert "During handling of the above exception" not in text, text
    assert "The above exception was the direct cause" not in text, text
    assert re.fullmatch(re.escape(UNREACHABLE.format(url=url)) + cause, lines[-1]), lines[-1]
    assert sum('"event":"retrying request"' in line for line in lines) == retries, text
    # measured on Python 3.11: 20 lines of traceback, plus one log line per retry (was ~110)
    assert len(lines) < 25, text


async def test_a_closed_port_is_retried_then_one_clear_error() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1"
    lines, elapsed = await run_script(url)
    check_shape(
        lines,
        url,
        re.escape(f"http://127.0.0.1:{port}/v1/models: connection failed before the response: ")
        + rf".*Cannot connect to host 127\.0\.0\.1:{port}.*; gave up after 4 attempts",
        retries=3,
    )
    assert elapsed < CHECK_TIMEOUT_S + STARTUP_MARGIN_S


async def test_a_server_that_never_answers_fails_the_model_check_in_time(quiet_port: int) -> None:
    url = f"http://127.0.0.1:{quiet_port}/v1"
    lines, elapsed = await run_script(url)
    check_shape(
        lines,
        url,
        r"it did not answer GET /v1/models within \d+\.\d s "
        + re.escape(f"(1 attempt; Endpoint.check_timeout_s={CHECK_TIMEOUT_S})"),
        retries=0,
    )
    assert elapsed < CHECK_TIMEOUT_S + STARTUP_MARGIN_S


async def test_an_unresolvable_host_is_not_retried() -> None:
    url = "http://no-such-host.invalid:8000/v1"
    # a resolver that is slow to say no must still get to say it (a failed lookup is instant
    # where the name server answers)
    lines, elapsed = await run_script(url, check_timeout_s=30.0)
    check_shape(
        lines,
        url,
        re.escape(f"{url}/models: cannot resolve host 'no-such-host.invalid' (")
        + r".+"
        + re.escape("); check the host name in the URL"),
        retries=0,
    )
    assert elapsed < 30.0 + STARTUP_MARGIN_S


async def test_https_to_a_plain_http_server_is_not_retried(server: SimulatedServer) -> None:
    url = server.base_url.replace("http://", "https://")
    host_port = url.removeprefix("https://").removesuffix("/v1")
    lines, elapsed = await run_script(url)
    check_shape(
        lines,
        url,
        re.escape(f"{url}/models: TLS handshake failed with {host_port} (")
        + r".+"
        + re.escape("); if the server speaks plain HTTP, use an http:// URL"),
        retries=0,
    )
    assert sum(server.stats.routes.values()) == 0  # no HTTP request ever reached it
    assert elapsed < STARTUP_MARGIN_S


async def test_retries_of_the_model_check_end_at_its_deadline() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    policy = Endpoint(
        base_url=url, model="m", check_timeout_s=1.0, max_attempts=50, backoff_base_s=0.05
    )
    with pytest.raises(EndpointUnreachable) as caught:
        async with Solver(policy=policy):
            pass
    found = re.search(r"; gave up after (\d+) attempts$", str(caught.value))
    assert found is not None, str(caught.value)
    assert 1 < int(found[1]) < 50  # retried, and stopped by the deadline, not by max_attempts
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_an_unreachable_prm_is_named(server: SimulatedServer) -> None:
    prm = Endpoint(base_url="http://no-such-host.invalid:8001/v1", model="prm")
    with pytest.raises(
        EndpointUnreachable,
        match=r"^endpoint http://no-such-host\.invalid:8001/v1 is unreachable: .*cannot resolve "
        r"host 'no-such-host\.invalid'",
    ):
        async with Solver(policy=policy_of(server), prm=prm):
            pass


async def test_a_generation_request_that_never_gets_an_answer_fails_the_solve(
    server: SimulatedServer,
) -> None:
    server.add_fault(Fault("/v1/completions", delay_s=60.0, times=2))
    policy = policy_of(server, read_timeout_s=0.3, max_attempts=2, backoff_base_s=0.01)
    with pytest.raises(SolveFailed) as caught:
        await solve(PROBLEM, strategy="majority", n=1, seed=0, policy=policy)
    message = str(caught.value)
    assert message.endswith(
        f"all 1 branches lost; reasons: ['TimedOut: {server.base_url.removesuffix('/v1')}"
        "/v1/completions: timed out (the server sent nothing for 0.3 s; timeouts: connect "
        "10.0 s, read 0.3 s, total 900.0 s); gave up after 2 attempts']"
    ), message
    assert caught.value.__cause__ is None and caught.value.__context__ is None
