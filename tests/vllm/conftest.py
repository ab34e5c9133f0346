"""Real vLLM servers on the CPU for the `vllm`-marked tests, started once per session.

The tiny models come from build_models.py (run in the vLLM venv, cached outside the repo by
a hash of that script, so reruns skip training). Five servers start in parallel through the
launcher's Python API: the tiny policy, the tiny pooling PRM, the tiny policy again under a
chat template that trims message bodies, and two more copies of the policy that tests kill
in the middle of a solve (one alone, one behind a router with the policy). Without
`.venv-vllm` the tests are skipped, except under CI, where that is a failure (`make test`
creates the venv first).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from asynctts import Endpoint

from helpers_vllm import BUILD_SCRIPT, Fleet, Models, fleet_specs, installed, launch


def _vllm_python() -> Path:
    python = Path(launch.VLLM_PYTHON)
    return installed(python, f"{python} missing: run `make venv-vllm` to install vLLM for the CPU")


@pytest.fixture(scope="session")
def tiny_models() -> Models:
    python = _vllm_python()
    out = launch.model_cache_dir() / f"tiny-{launch.content_key(BUILD_SCRIPT)}"
    if not (out / "prm" / "step_tag.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(python), str(BUILD_SCRIPT), str(out)],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if done.returncode != 0:
            pytest.fail(
                f"building the tiny models failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
    tag = json.loads((out / "prm" / "step_tag.json").read_text())
    return Models(out, tag["step_tag"], int(tag["id"]))


@pytest.fixture(scope="session")
def fleet(tiny_models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    python = _vllm_python()
    run_dir = tmp_path_factory.mktemp("vllm")
    messages: list[str] = []
    try:
        started = launch.start_servers(
            fleet_specs(tiny_models), run_dir=run_dir, python=python, say=messages.append
        )
    except launch.LaunchError as err:
        pytest.fail(f"vLLM servers did not start: {err}")
    servers = {s.spec.role: s for s in started}
    endpoints_file = run_dir / "endpoints.json"
    config = launch.endpoints_config([servers["policy"], servers["prm"]])
    launch.write_json(endpoints_file, config)
    try:
        yield Fleet(servers, endpoints_file, tiny_models)
    finally:
        launch.stop_servers(started, say=lambda _: None)


@pytest.fixture
def policy(fleet: Fleet) -> Endpoint:
    return fleet.endpoints()["policy"]


@pytest.fixture
def prm(fleet: Fleet) -> Endpoint:
    return fleet.endpoints()["prm"]


@pytest.fixture
def judge(fleet: Fleet) -> Endpoint:
    """The tiny policy as a logprob PRM (it was trained to answer "+" / "-" on steps)."""
    server = fleet.server("policy")
    return Endpoint(
        base_url=server.base_url,  # type: ignore[attr-defined]
        model="tiny-policy",
        scoring="logprob",
        tokenizer=str(fleet.models.policy),
    )
