"""servers/launch.py without vLLM: profiles, commands, failure diagnosis, pre-start checks,
state and endpoints files, and stopping a process group by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asynctts.config import load_endpoints

import launch

ROOT = Path(__file__).resolve().parents[2]


def flag(args: tuple[str, ...] | list[str], name: str) -> str:
    return args[list(args).index(name) + 1]


def test_cpu_profile_serves_the_model_as_policy_and_logprob_judge(tmp_path: Path) -> None:
    specs = launch.cpu_profile(python=tmp_path / "python", say=lambda _: None, policy_model="/m")
    policy, prm = specs
    assert (policy.role, prm.role) == ("policy", "prm")
    assert policy.model == prm.model == "/m"
    assert policy.served_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert prm.check == "logprob" and dict(prm.endpoint)["scoring"] == "logprob"
    for spec in specs:
        assert spec.host == "127.0.0.1"
        assert flag(spec.vllm_args, "--dtype") == "float32"
        assert "--enforce-eager" in spec.vllm_args
        assert flag(spec.vllm_args, "--max-num-batched-tokens") == "16384"
        assert flag(spec.vllm_args, "--kv-cache-memory-bytes") == str(512 * 2**20)
        assert flag(spec.vllm_args, "--max-model-len") == "2048"
        assert flag(spec.vllm_args, "--block-size") == "32"


def test_gpu_profile_shares_one_gpu_by_splitting_memory() -> None:
    policy, prm = launch.gpu_profile()
    assert policy.model == "meta-llama/Llama-3.2-1B-Instruct"
    assert prm.model == "Qwen/Qwen2.5-Math-PRM-7B"
    assert flag(prm.vllm_args, "--runner") == "pooling" and prm.check == "pooling"
    assert dict(policy.env) == dict(prm.env) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert flag(policy.vllm_args, "--gpu-memory-utilization") == "0.25"
    assert flag(prm.vllm_args, "--gpu-memory-utilization") == "0.65"
    assert "--enable-prefix-caching" in policy.vllm_args


def test_gpu_profile_on_separate_gpus_with_parallelism_and_rlhflow() -> None:
    policy, prm = launch.gpu_profile(
        prm="rlhflow", policy_gpus="0", prm_gpus="1,2", tensor_parallel=2, data_parallel=2
    )
    assert prm.model == "RLHFlow/Llama3.1-8B-PRM-Deepseek-Data"
    assert "--runner" not in prm.vllm_args and dict(prm.endpoint)["scoring"] == "logprob"
    assert dict(prm.env)["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert flag(policy.vllm_args, "--gpu-memory-utilization") == "0.9"
    assert flag(prm.vllm_args, "--tensor-parallel-size") == "2"
    assert flag(prm.vllm_args, "--data-parallel-size") == "2"


def test_gpu_profile_rejects_an_overcommitted_shared_gpu() -> None:
    with pytest.raises(launch.LaunchError, match=r"0.5 \+ 0.6 exceed 0.95"):
        launch.gpu_profile(policy_memory=0.5, prm_memory=0.6)


def test_command_uses_the_module_entry_point() -> None:
    spec = launch.ServerSpec(role="policy", model="/m", served_name="x", vllm_args=("--a",))
    cmd = launch.command(spec, 8123, Path("/venv/bin/python"))
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(cmd, "--host") == "127.0.0.1" and flag(cmd, "--port") == "8123"
    assert cmd[-1] == "--a"


def test_server_env_keeps_vllm_on_loopback_and_drops_the_kv_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")
    spec = launch.ServerSpec(role="p", model=str(tmp_path), served_name="x", env=(("A", "1"),))
    env = launch.server_env(spec)
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["VLLM_HOST_IP"] == "127.0.0.1" and env["HF_HUB_OFFLINE"] == "1" and env["A"] == "1"


@pytest.mark.parametrize(
    ("log", "code", "cause"),
    [
        ("OSError: [Errno 98] Address already in use", 1, "port is taken"),
        ("", -signal.SIGKILL, "not enough memory"),
        ("torch.OutOfMemoryError: ...", 1, "not enough memory"),
        ("ValueError: No available memory for the cache blocks", 1, "not enough memory"),
        ("OSError: x is not a local folder and is not a valid model identifier", 1, "missing"),
        ("huggingface_hub.errors.LocalEntryNotFoundError: ...", 1, "missing"),
        ("RuntimeError: Engine core initialization failed", 1, "died during start"),
    ],
)
def test_diagnose(log: str, code: int, cause: str) -> None:
    assert cause in launch.diagnose(log, code)


def test_a_taken_port_is_refused_before_starting(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = launch.ServerSpec(role="policy", model="some/model", served_name="x", port=port)
        with pytest.raises(launch.LaunchError, match=f"policy: port {port} on 127.0.0.1 is taken"):
            launch.start_servers([spec], run_dir=tmp_path, python=python, say=lambda _: None)


def test_missing_pieces_are_refused_before_starting(tmp_path: Path) -> None:
    spec = launch.ServerSpec(role="policy", model=str(tmp_path / "nope"), served_name="x")
    with pytest.raises(launch.LaunchError, match="make venv-vllm"):
        launch.start_servers([spec], run_dir=tmp_path, python=tmp_path / "no-python")
    python = tmp_path / "python"
    python.write_text("")
    with pytest.raises(launch.LaunchError, match=r"model directory .*nope does not exist"):
        launch.start_servers([spec], run_dir=tmp_path, python=python, say=lambda _: None)
    huge = launch.ServerSpec(role="prm", model="m", served_name="x", memory_gib=1e6)
    with pytest.raises(launch.LaunchError, match=r"not enough memory: .* GiB available"):
        launch.start_servers([huge], run_dir=tmp_path, python=python)


def test_a_server_that_dies_during_start_is_reported_with_its_log(tmp_path: Path) -> None:
    """A stand-in "python" that prints like a failing vLLM and exits."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\necho 'loading'\necho 'OSError: [Errno 98] Address already in use'\nexit 3\n"
    )
    fake.chmod(0o755)
    spec = launch.ServerSpec(role="policy", model="some/model", served_name="x")
    with pytest.raises(launch.LaunchError) as caught:
        launch.start_servers([spec], run_dir=tmp_path, python=fake, say=lambda _: None)
    message = str(caught.value)
    assert "exited with code 3: its port is taken" in message
    assert "Address already in use" in message and str(tmp_path / "policy.log") in message


def test_stop_signals_the_whole_process_group(tmp_path: Path) -> None:
    """A stand-in server (it names the vLLM module so the PID check accepts it) with a child."""
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    process = subprocess.Popen(
        [sys.executable, "-c", script, launch.VLLM_MODULE], start_new_session=True
    )
    try:
        # until the child has exec'd, /proc shows the parent's command line
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        deadline = time.monotonic() + 10
        while launch.VLLM_MODULE.encode() not in cmdline.read_bytes():
            assert time.monotonic() < deadline, "the stand-in server did not start"
            time.sleep(0.01)
        server = launch.Server(
            launch.ServerSpec(role="policy", model="m", served_name="x"),
            port=1,
            pid=process.pid,
            log_path=tmp_path / "log",
            started_s=time.time(),
        )
        launch.write_state(tmp_path, [server])
        (restored,) = launch.read_state(tmp_path)
        assert restored.pid == process.pid and restored.alive()
        launch.stop_servers([restored], timeout_s=10, say=lambda _: None)
        assert process.wait(timeout=10) != 0
        leftover = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True)
        assert leftover.stdout.strip() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_recycled_pid_is_not_signalled(tmp_path: Path) -> None:
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        stranger = launch.Server(
            launch.ServerSpec(role="policy", model="m", served_name="x"),
            port=1,
            pid=process.pid,
            log_path=tmp_path / "log",
            started_s=0.0,
        )
        assert not stranger.alive()
        launch.stop_servers([stranger], timeout_s=1, say=lambda _: None)
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def _runs(pid: int, program: bytes) -> bool:
    """`pid`'s command line starts with `program` (a zombie's is empty)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(program)
    except OSError:
        return False


def _engines(pgid: int) -> list[int]:
    """The members of group `pgid` whose process is named like vLLM's engine."""
    return [pid for pid in launch.group_members(pgid) if _runs(pid, b"VLLM::EngineCore\0")]


def test_stop_finds_what_a_killed_server_left_in_its_group(tmp_path: Path) -> None:
    """A SIGKILLed vLLM API server leaves its engine processes running in its process group;
    `stop` reads the state file and stops them, and no group without a vLLM process."""
    engine = "exec -a VLLM::EngineCore sleep 60"
    script = (
        f"import subprocess, time; subprocess.Popen(['bash', '-c', {engine!r}]); time.sleep(60)"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", script, launch.VLLM_MODULE], start_new_session=True
    )
    # a group that lost its leader but holds no vLLM process: left alone
    stranger = subprocess.Popen(["bash", "-c", "sleep 60 & exec sleep 60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (engines := _engines(leader.pid)):
            assert time.monotonic() < deadline, "the stand-in server did not start its engine"
            time.sleep(0.01)
        (engine_pid,) = engines
        server = launch.Server(
            launch.ServerSpec(role="policy", model="m", served_name="x", replica=0),
            port=1,
            pid=leader.pid,
            log_path=tmp_path / "log",
            started_s=time.time(),
        )
        left_alone = launch.Server(
            launch.ServerSpec(role="prm", model="m", served_name="y"),
            port=2,
            pid=stranger.pid,
            log_path=tmp_path / "log",
            started_s=time.time(),
        )
        launch.write_state(tmp_path, [server, left_alone])
        for process in (leader, stranger):
            process.kill()
            process.wait()
        restored = launch.read_state(tmp_path)
        assert not any(s.alive() for s in restored)
        assert launch.leftovers(stranger.pid) == [] and launch.group_members(stranger.pid)
        said: list[str] = []
        launch.stop_servers(restored, timeout_s=1, say=said.append)
        assert said == [f"policy-0: pid {leader.pid} was gone; stopped the 1 process it left"]
        deadline = time.monotonic() + 10
        while engine_pid in _engines(leader.pid):
            assert time.monotonic() < deadline, "the orphaned engine is still running"
            time.sleep(0.05)
        assert launch.group_members(stranger.pid), "a group without vLLM was signalled"
    finally:
        for pgid in (leader.pid, stranger.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for process in (leader, stranger):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_endpoints_file_round_trips_through_asynctts_config(tmp_path: Path) -> None:
    specs = launch.cpu_profile(python=tmp_path, say=lambda _: None, policy_model="/m")
    servers = [
        launch.Server(spec, port=9000 + i, pid=1, log_path=tmp_path, started_s=0.0)
        for i, spec in enumerate(specs)
    ]
    path = tmp_path / "endpoints.json"
    launch.write_json(path, launch.endpoints_config(servers))
    endpoints = load_endpoints(path)
    assert endpoints["policy"].base_url == "http://127.0.0.1:9000/v1"
    assert endpoints["policy"].tokenizer == "/m"
    assert endpoints["prm"].scoring == "logprob"
    assert endpoints["prm"].model == "HuggingFaceTB/SmolLM2-135M-Instruct-judge"
    assert json.loads(path.read_text())["prm"]["base_url"] == "http://127.0.0.1:9001/v1"


def test_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = launch.main(
        ["--run-dir", str(tmp_path), "start", "--profile", "gpu", "--prm-gpus", "1", "--dry-run"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=1" in out and "Qwen/Qwen2.5-Math-PRM-7B" in out


def test_stop_and_status_with_nothing_recorded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert launch.main(["--run-dir", str(tmp_path), "status"]) == 0
    assert launch.main(["--run-dir", str(tmp_path), "stop"]) == 0
    assert capsys.readouterr().out.count("no servers recorded") == 2


def test_model_cache_dir_is_outside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCTTS_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg")
    assert launch.model_cache_dir() == Path("/tmp/xdg/asynctts/models")
    monkeypatch.setenv("ASYNCTTS_MODEL_CACHE", "/elsewhere")
    assert launch.model_cache_dir() == Path("/elsewhere")


# --- replicas and routers ---------------------------------------------------------------------


def test_replicas_take_consecutive_ports_and_routers_the_roles_ports(tmp_path: Path) -> None:
    specs = launch.cpu_profile(python=tmp_path, say=lambda _: None, policy_model="/m")
    servers, routers = launch.fleet(specs, replicas=2)
    assert [(s.name, s.port) for s in servers] == [
        ("policy-0", 8010), ("policy-1", 8011), ("prm-0", 8012), ("prm-1", 8013)
    ]  # fmt: skip
    assert [(r.name, r.port, r.metrics_port, r.workers) for r in routers] == [
        ("policy-router", 8000, 29000, ("http://127.0.0.1:8010", "http://127.0.0.1:8011")),
        ("prm-router", 8001, 29001, ("http://127.0.0.1:8012", "http://127.0.0.1:8013")),
    ]
    assert [r.upstream.served_name for r in routers] == [s.served_name for s in specs]
    # one replica and no workers: the plain servers, as without routers
    assert launch.fleet(specs) == (specs, [])


def test_router_command_sets_policy_metrics_health_circuit_and_retries() -> None:
    spec = launch.RouterSpec(
        upstream=launch.ServerSpec(role="prm", model="m", served_name="x"),
        workers=("http://10.0.0.2:8001", "http://10.0.0.3:8001"),
        port=8001,
        metrics_port=29001,
        policy="round_robin",
    )
    args = launch.router_command(spec, Path("/venv/bin/vllm-router"))
    assert args[0] == "/venv/bin/vllm-router"
    assert args[args.index("--worker-urls") + 1 : args.index("--policy")] == list(spec.workers)
    assert flag(args, "--policy") == "round_robin"
    assert (flag(args, "--port"), flag(args, "--prometheus-port")) == ("8001", "29001")
    assert int(flag(args, "--health-check-interval-secs")) < 60
    assert flag(args, "--cb-failure-threshold") == "3"
    assert flag(args, "--retry-max-retries") == "5" and "--disable-retries" not in args


def test_remote_workers_get_a_router_and_no_server(tmp_path: Path) -> None:
    specs = launch.cpu_profile(python=tmp_path, say=lambda _: None, policy_model="/m")
    workers = {"policy": ["http://10.0.0.2:8000/v1", "http://10.0.0.3:8000/"]}
    servers, routers = launch.fleet(specs, replicas=2, workers=workers)
    assert [s.name for s in servers] == ["prm-0", "prm-1"]
    assert [s.port for s in servers] == [8010, 8011]
    assert routers[0].workers == ("http://10.0.0.2:8000", "http://10.0.0.3:8000")
    assert [r.name for r in routers] == ["policy-router", "prm-router"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"replicas": 0}, r"--replicas 0: need >= 1"),
        ({"policy": "fastest"}, r"--router-policy 'fastest': choose one of \['consistent_hash'"),
        ({"workers": {"judge": ["http://h:1"]}}, r"workers for \['judge'\]: this profile's roles"),
        ({"workers": {"policy": ["h:8000"]}}, r"policy worker 'h:8000': need a URL with a scheme"),
        (
            {"workers": {"prm": ["http://h:1", "http://h:1/v1"]}},
            r"prm workers list a server twice",
        ),
    ],
)
def test_bad_fleets_are_refused(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    specs = launch.cpu_profile(python=tmp_path, say=lambda _: None, policy_model="/m")
    with pytest.raises(launch.LaunchError, match=message):
        launch.fleet(specs, **kw)


def test_gpu_replicas_split_the_roles_gpus() -> None:
    specs = launch.gpu_profile(policy_gpus="0,1", prm_gpus="2,3,4,5", tensor_parallel=2)
    servers, _ = launch.fleet(specs, replicas=2)
    gpus = [(s.name, dict(s.env)["CUDA_VISIBLE_DEVICES"]) for s in servers]
    assert gpus == [("policy-0", "0"), ("policy-1", "1"), ("prm-0", "2,3"), ("prm-1", "4,5")]
    with pytest.raises(launch.LaunchError, match=r"policy: 3 replicas cannot share GPU\(s\) 0,1"):
        launch.fleet(specs, replicas=3)


def test_state_and_endpoints_files_point_at_the_routers(tmp_path: Path) -> None:
    specs = launch.cpu_profile(python=tmp_path, say=lambda _: None, policy_model="/m")
    server_specs, router_specs = launch.fleet(specs, replicas=2)
    started = [
        launch.Router(spec, pid=10 + i, log_path=tmp_path / "r.log", started_s=1.0)
        for i, spec in enumerate(router_specs)
    ] + [
        launch.Server(spec, port=spec.port, pid=20 + i, log_path=tmp_path / "s.log", started_s=2.0)
        for i, spec in enumerate(server_specs)
    ]
    launch.write_state(tmp_path, started)
    restored = launch.read_state(tmp_path)
    assert [(s.name, s.pid, s.port) for s in restored] == [(s.name, s.pid, s.port) for s in started]
    front = restored[0]
    assert isinstance(front, launch.Router)
    assert front.spec.workers == router_specs[0].workers
    assert (front.spec.policy, front.spec.metrics_port) == ("consistent_hash", 29000)
    path = tmp_path / "endpoints.json"
    launch.write_json(path, launch.endpoints_config(started))
    endpoints = load_endpoints(path)
    assert endpoints["policy"].base_url == "http://127.0.0.1:8000/v1"
    assert endpoints["prm"].base_url == "http://127.0.0.1:8001/v1"
    assert endpoints["prm"].scoring == "logprob" and endpoints["policy"].tokenizer == "/m"


def test_dry_run_prints_replicas_and_routers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(launch.ROUTER_ENV, "/opt/router/bin/vllm-router")
    code = launch.main(
        ["--run-dir", str(tmp_path), "start", "--profile", "cpu", "--policy-model", "/m",
         "--replicas", "2", "--prm-workers", "http://10.0.0.9:8001", "--router-policy",
         "round_robin", "--dry-run"]
    )  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "policy-0", "policy-1", "policy-router", "prm-router"
    ]  # fmt: skip
    assert "--port 8010" in lines[0] and "--port 8011" in lines[1]
    assert lines[2].startswith("policy-router: /opt/router/bin/vllm-router --host 127.0.0.1")
    assert "--worker-urls http://10.0.0.9:8001 --policy round_robin" in lines[3]


def test_the_router_is_found_next_to_the_vllm_python_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(launch.ROUTER_ENV, raising=False)
    assert launch.router_executable(Path("/v/bin/python")) == Path("/v/bin/vllm-router")
    monkeypatch.setenv(launch.ROUTER_ENV, "/elsewhere/vllm-router")
    assert launch.router_executable(Path("/v/bin/python")) == Path("/elsewhere/vllm-router")


def test_a_missing_router_is_refused_with_how_to_get_it(tmp_path: Path) -> None:
    spec = launch.RouterSpec(
        upstream=launch.ServerSpec(role="policy", model="m", served_name="x"),
        workers=("http://127.0.0.1:1",),
        port=1,
        metrics_port=2,
    )
    with pytest.raises(launch.LaunchError, match=r"vllm-router not found at .*make venv-vllm"):
        launch.start_routers([spec], run_dir=tmp_path, router=tmp_path / "vllm-router")


def test_a_sigterm_stops_what_running_started() -> None:
    """A program under `running` that gets SIGTERM leaves through its `finally` clauses (where
    `running` stops the servers), and the default action is back afterwards."""
    script = f"""
import os, signal, sys, time
sys.path.insert(0, {str(ROOT / "servers")!r})
import launch
try:
    with launch.sigterm_as_exit():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        finally:
            print("finally ran")
except SystemExit as leaving:
    print("exit", leaving.code)
print("default again:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.splitlines() == ["finally ran", "exit 143", "default again: True"], (
        done.stderr
    )
