"""The URLs of an endpoint served by several plain servers: which one a request goes to, and
which are down. A router (vllm-router) is the answer past a few servers; this keeps a
problem on one server without one.

Rules:
- Sticky: a request carrying a key (its problem id) goes to the first URL of the key's
  rendezvous order that is up. The order ranks the URLs by blake2b(key, URL), highest first:
  the same in every process and on every run (`hash()` is salted per process), even over the
  URLs, and removing a URL moves only the keys that ranked it first. A request without a key
  goes to the URLs in turn.
- Down: a connection failure or a timeout marks a URL down at once; a 5xx does on the second
  in a row from that URL, as one may be the request's fault rather than the server's. A
  success clears the count. Requests skip a down URL, so its keys go to their next URL.
- Back: once a down URL's cooldown has passed, the next choice that meets it starts a health
  check (the caller's coroutine, off the request path, one at a time per URL): the URL is up
  again when it passes, down for another cooldown when it fails.
- All down: a request goes to the URL whose cooldown ends first. It fails (and is retried
  within its attempts) or succeeds and brings the URL back: nothing waits for a URL to come
  back, so nothing hangs.
- No I/O and no logging: the caller checks health, and logs the changes `failed` and
  `succeeded` report.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["SERVER_ERRORS_TO_DOWN", "UrlPool", "rendezvous_order"]

SERVER_ERRORS_TO_DOWN: Final = 2  # 5xx answers in a row that mark a URL down


@functools.lru_cache(maxsize=4096)
def rendezvous_order(key: str, urls: tuple[str, ...]) -> tuple[str, ...]:
    """`urls` in the order `key` tries them: highest blake2b(key, URL) weight first."""
    return tuple(sorted(urls, key=lambda url: _weight(key, url), reverse=True))


def _weight(key: str, url: str) -> int:
    digest = hashlib.blake2b(f"{key}\x1f{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(slots=True)
class _Health:
    down_until: float | None = None  # clock() time the cooldown ends; None while up
    server_errors: int = 0  # 5xx answers in a row
    check: asyncio.Task[None] | None = None  # the health check running, if any


class UrlPool:
    """Chooses a URL per request (see the module rules).

    Args:
        urls: the servers' root URLs, distinct.
        cooldown_s: how long a URL that failed is skipped before a health check may bring it
            back.
        check: the health check of one URL: True when it answers.
        clock: time source (inject for tests).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown_s: float,
        check: Callable[[str], Awaitable[bool]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = tuple(urls)
        self.cooldown_s = cooldown_s
        self._check = check
        self._clock = clock
        self._health = {url: _Health() for url in self.urls}
        self._turn = 0

    def choose(self, key: str | None) -> str:
        """The URL for a request with `key` (None: the next in turn)."""
        if key is None:
            self._turn = (self._turn + 1) % len(self.urls)
            order = self.urls[self._turn :] + self.urls[: self._turn]
        else:
            order = rendezvous_order(key, self.urls)
        now = self._clock()
        for url in order:
            health = self._health[url]
            if health.down_until is None:
                return url
            if now >= health.down_until and health.check is None:
                health.check = asyncio.get_running_loop().create_task(
                    self._run_check(url, health), name=f"asynctts-health-{url}"
                )
        return min(order, key=self._cooldown_end)

    def down(self) -> tuple[str, ...]:
        """The URLs skipped now."""
        return tuple(url for url in self.urls if self._health[url].down_until is not None)

    def succeeded(self, url: str) -> bool:
        """A request to `url` succeeded. Returns whether that brought it back up."""
        health = self._health[url]
        health.server_errors = 0
        was_down = health.down_until is not None
        health.down_until = None
        return was_down

    def failed(self, url: str, *, server_error: bool = False) -> bool:
        """A request to `url` failed at the connection (or timed out), or with a 5xx
        (`server_error`). Returns whether that marked it down (it was up)."""
        health = self._health[url]
        if server_error:
            health.server_errors += 1
            if health.server_errors < SERVER_ERRORS_TO_DOWN:
                return False
        health.server_errors = 0
        was_up = health.down_until is None
        health.down_until = self._clock() + self.cooldown_s
        return was_up

    async def aclose(self) -> None:
        """Stop the health checks running."""
        checks = [h.check for h in self._health.values() if h.check is not None]
        for task in checks:
            task.cancel()
        if checks:
            await asyncio.wait(checks)

    def _cooldown_end(self, url: str) -> float:
        end = self._health[url].down_until
        return 0.0 if end is None else end

    async def _run_check(self, url: str, health: _Health) -> None:
        try:
            passed = await self._check(url)
        finally:
            health.check = None
        if health.down_until is None:
            return  # a request brought it back meanwhile
        if passed:
            self.succeeded(url)
        else:
            health.down_until = self._clock() + self.cooldown_s
