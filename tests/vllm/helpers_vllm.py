"""Shared by the real-vLLM tests: the launcher (servers/launch.py, importable as `launch`
through pytest's pythonpath), the tiny models' location and the servers the session starts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from asynctts import Endpoint
from asynctts.config import load_endpoints

import launch

BUILD_SCRIPT = Path(__file__).resolve().parent / "build_models.py"
MAX_MODEL_LEN = 2048


@dataclass(frozen=True)
class Models:
    root: Path
    step_tag: str
    step_tag_id: int

    @property
    def policy(self) -> Path:
        return self.root / "policy"

    @property
    def prm(self) -> Path:
        return self.root / "prm"

    @property
    def trimming_tokenizer(self) -> Path:
        """The policy's tokenizer with the Llama-3-style template that trims message bodies."""
        return self.root / "tokenizer-trimming"


@dataclass(frozen=True)
class Fleet:
    """The running servers and the endpoints file written for them."""

    servers: dict[str, Any]  # role -> launch.Server
    endpoints_file: Path
    models: Models

    def endpoints(self) -> dict[str, Endpoint]:
        return load_endpoints(self.endpoints_file)

    def server(self, role: str) -> Any:
        return self.servers[role]


async def metric_sum(root_url: str, name: str) -> float:
    """The Prometheus sample `name` at `root_url`/metrics (a vLLM server, a router), summed
    over its labels."""
    async with aiohttp.ClientSession() as session, session.get(root_url + "/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in "{ "
    )


def installed(path: Path, message: str) -> Path:
    """`path` if it exists; else the test is skipped with `message`, or failed under CI (where
    `make test` installs everything first)."""
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def fleet_specs(models: Models) -> list[Any]:
    flags = launch.cpu_flags(kv_cache_mib=128, max_model_len=MAX_MODEL_LEN)
    policy = launch.ServerSpec(
        role="policy",
        model=str(models.policy),
        served_name="tiny-policy",
        vllm_args=flags,
        endpoint=(("tokenizer", str(models.policy)),),
        memory_gib=1.5,
    )
    return [
        policy,
        launch.ServerSpec(
            role="prm",
            model=str(models.prm),
            served_name="tiny-prm",
            vllm_args=(
                *flags,
                "--runner",
                "pooling",
                "--pooler-config",
                json.dumps({"step_tag_id": models.step_tag_id}),
            ),
            check="pooling",
            endpoint=(
                ("tokenizer", str(models.prm)),
                ("scoring", "pooling"),
                ("step_tag", models.step_tag),
            ),
            memory_gib=1.5,
        ),
        # the policy under a template that trims message bodies (test_chat_trimming.py)
        launch.ServerSpec(
            role="trimming",
            model=str(models.policy),
            served_name="tiny-policy",
            vllm_args=(*flags, "--tokenizer", str(models.trimming_tokenizer)),
            endpoint=(("tokenizer", str(models.trimming_tokenizer)),),
            memory_gib=1.5,
        ),
        # a second replica of the policy: behind a router with it, and SIGKILLed, by
        # test_router_failover.py
        replace(policy, role="replica"),
        # killed by test_killing_the_policy_server_mid_solve_is_recorded_not_a_hang
        replace(policy, role="victim"),
    ]
