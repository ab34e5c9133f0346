"""How a command owns its process: its known failures become one line on stderr and an exit
status, never a traceback; and it runs under the collector settings of a batch program.

Exit statuses: 0 done, 2 bad input (as argparse does for bad flags), 1 an endpoint or a solve
failed, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from asynctts.errors import AsyncttsError, ConfigError
from asynctts.gc_tuning import throughput_gc

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_ENDPOINT",
    "EXIT_INTERRUPTED",
    "exit_status",
    "run_owning_process",
]

EXIT_BAD_INPUT = 2
EXIT_ENDPOINT = 1
EXIT_INTERRUPTED = 130
# what Ctrl-C leaves behind, by command (others: nothing worth a word)
_INTERRUPTED = {
    command: "finished problems are journaled, continue with --resume"
    for command in ("eval", "calibrate")
}


def exit_status(command: str, call: Callable[[], int]) -> int:
    """Run a command (`call` returns its exit status); its known failures become a message on
    stderr and an exit status."""
    try:
        return call()
    except ConfigError as err:
        sys.stderr.write(f"asynctts {command}: error: {err}\n")
        return EXIT_BAD_INPUT
    except AsyncttsError as err:  # an endpoint that cannot serve, a solve that lost everything
        sys.stderr.write(f"asynctts {command}: error: {err}\n")
        return EXIT_ENDPOINT
    except KeyboardInterrupt:
        after = _INTERRUPTED.get(command)
        sys.stderr.write(f"asynctts {command}: interrupted{'; ' + after if after else ''}\n")
        return EXIT_INTERRUPTED


def run_owning_process(main: Coroutine[Any, Any, int]) -> int:
    """`asyncio.run(main)` for a command that owns its process: under `throughput_gc()`,
    which a library call would leave to its application (gc_tuning.py)."""
    with throughput_gc():
        return asyncio.run(main)
