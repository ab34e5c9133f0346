from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import settings

from asynctts.equivalence import Equivalence
from asynctts.eval.data import packaged_math500

# Hypothesis's default 200 ms deadline per example measures this shared 2-core machine, not
# the code: one pause of the process fails an example that reruns cannot reproduce.
settings.register_profile("asynctts", deadline=None)
settings.load_profile("asynctts")


@pytest.fixture(scope="session")
def math500() -> list[dict[str, Any]]:
    """The MATH-500 test split as packaged with asynctts, every field of each record."""
    text = packaged_math500().read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


@pytest.fixture(scope="session")
def equivalence() -> Iterator[Equivalence]:
    """One Equivalence for the session: its worker process starts once. Its pool is not bound
    to an event loop, so each test's loop can await it."""
    instance = Equivalence()
    yield instance
    asyncio.run(instance.aclose())


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts TCP connections but never answers: any request would show up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock
        with pytest.raises(BlockingIOError):
            sock.accept()  # nobody connected


@pytest.fixture
def verbose_logging() -> Iterator[None]:
    """Log every level, whatever an earlier test configured (asynctts.api sets WARNING)."""
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    yield
    structlog.configure(**saved)
