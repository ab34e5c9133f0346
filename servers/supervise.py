"""Starting, watching and stopping the processes the launcher runs (vLLM servers and routers):
each in its own process group with its own log, ready once /health answers and a smoke test
passes, and stopped with everything it spawned.

A server's children (vLLM's engine and workers) stay in its process group, and Linux does not
hand out a group's number as a new PID while the group has members: `stop` finds what a
server left by its group even once the server itself is gone (SIGKILLed, crashed), and
signals a group only when a member is a vLLM process, never a stranger's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

LOG_TAIL_LINES = 30

Say = Callable[[str], None]
S = TypeVar("S")
L = TypeVar("L", bound="Launched")


class LaunchError(RuntimeError):
    """A server could not be started or stopped; the message says why."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ("" when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def url_host(host: str) -> str:
    """Where to reach a server bound to `host` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_port_free(host: str, port: int, role: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LaunchError(
                f"{role}: port {port} on {host} is taken ({err.strerror}); stop what listens "
                f"there (`python servers/launch.py status`) or choose another port"
            ) from err


@dataclass(kw_only=True)
class Launched:
    """A started server or router. `process` is None when it was read back from the state
    file."""

    pid: int
    log_path: Path
    started_s: float
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def served(self) -> Any:
        """The `ServerSpec` of what it serves (a router: its workers')."""
        raise NotImplementedError

    def address(self) -> tuple[str, int]:
        """The host it binds and its port."""
        raise NotImplementedError

    def runs_as_ours(self) -> bool:
        """Its PID is alive and still the program started (a recycled PID is not)."""
        raise NotImplementedError

    def smoke_test(self) -> None:
        """One real request of the kind it serves; LaunchError when it fails."""
        raise NotImplementedError

    @property
    def root_url(self) -> str:
        host, port = self.address()
        return f"http://{url_host(host)}:{port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.runs_as_ours()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.root_url + "/health", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def died_message(self, returncode: int) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return (
            f"{self.name} ({self.served.model} on port {self.address()[1]}) exited with code "
            f"{returncode}: {diagnose(text, returncode)}. Last lines of {self.log_path}:\n"
            + self.tail()
        )


def cmdline(pid: int) -> bytes:
    """A process's command line (b"" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def spawn(
    argv: Sequence[str], *, name: str, run_dir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `argv` in `run_dir`, in its own process group (stop signals all of it), its
    output in RUN_DIR/<name>.log: (the process, its log)."""
    log_path = run_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=run_dir,
            start_new_session=True,
        )
    return process, log_path


def start_all(
    specs: Sequence[S], start: Callable[[S], tuple[L, str]], *, timeout_s: float, say: Say
) -> list[L]:
    """`start` each spec (it spawns one process and says what it started), then wait until
    every one is ready. On any failure, every process started here is stopped before the
    error goes on."""
    started: list[L] = []
    try:
        for spec in specs:
            process, message = start(spec)
            started.append(process)
            say(message)
        wait_ready(started, timeout_s, say)
    except BaseException:
        stop_servers(started, say=lambda _: None)
        raise
    return started


def wait_ready(started: Sequence[Launched], timeout_s: float, say: Say) -> None:
    """Until each answers /health and passes its smoke test; LaunchError when one dies or
    the time is up."""
    begun = time.monotonic()
    pending = list(started)
    while pending:
        for server in list(pending):
            returncode = server.process.poll() if server.process is not None else None
            if returncode is not None:
                raise LaunchError(server.died_message(returncode))
            if server.healthy():
                server.smoke_test()
                pending.remove(server)
                say(f"{server.name}: ready at {server.base_url} ({time.monotonic() - begun:.0f} s)")
        if pending and time.monotonic() - begun > timeout_s:
            names = ", ".join(s.name for s in pending)
            raise LaunchError(
                f"{names}: not ready after {timeout_s:.0f} s; last lines of "
                f"{pending[0].log_path}:\n{pending[0].tail()}"
            )
        if pending:
            time.sleep(1.0)


def diagnose(log_text: str, returncode: int) -> str:
    """The likely cause of a server that exited during start, from its log."""
    text = log_text.lower()
    if "address already in use" in text:
        return "its port is taken"
    memory_signs = (
        "out of memory",
        "outofmemoryerror",
        "cannot allocate memory",
        "memoryerror",
        "not enough memory",
        "insufficient memory",
        "no available memory for the cache blocks",
    )
    if returncode == -signal.SIGKILL or any(sign in text for sign in memory_signs):
        return "not enough memory (or it was killed)"
    model_signs = (
        "is not a local folder and is not a valid model identifier",
        "does not appear to have a file named",
        "repository not found",
        "no such file or directory",
        "can't load the configuration",
        "couldn't connect to 'https://huggingface.co'",
        "localentrynotfounderror",
        "offlinemodeisenabled",
        "gatedrepoerror",
    )
    if any(sign in text for sign in model_signs):
        return "the model is missing or cannot be loaded"
    return "it died during start"


def group_members(pgid: int) -> list[int]:
    """The PIDs in process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # the command name, in parentheses, may hold spaces: fields follow the last ")"
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def leftovers(pgid: int) -> list[int]:
    """What a server whose own process is gone left in its group: its members, when one of
    them is a vLLM process (vLLM names its engine processes "VLLM::..."); else none."""
    members = group_members(pgid)
    if any(b"vllm" in cmdline(pid).lower() for pid in members):
        return members
    return []


def stop_servers(servers: Sequence[Launched], *, timeout_s: float = 30.0, say: Say = print) -> None:
    """SIGTERM each server's (or router's) process group, then SIGKILL what is left after
    `timeout_s`; a server whose own process is gone has its group's leftovers SIGKILLed."""
    live = [s for s in servers if s.alive()]
    for server in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for server in servers:
        was_live = any(s is server for s in live)
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if server.alive():
            say(f"{server.name}: still running after SIGTERM; sending SIGKILL")
        # the group may hold engine processes even when the leader is gone
        left = [] if was_live else leftovers(server.pid)
        if was_live or left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signal.SIGKILL)
        if server.process is not None:
            server.process.wait()
        if was_live:
            say(f"{server.name}: stopped (pid {server.pid})")
        elif left:
            count = f"{len(left)} process" + ("es" if len(left) > 1 else "")
            say(f"{server.name}: pid {server.pid} was gone; stopped the {count} it left")
