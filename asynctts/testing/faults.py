"""Fault injection: what a `Fault` does to the requests it matches, and the replies it sends.

Rules:
- Faults apply in the order they were added, each `times` times, at most one per request.
- A fault may delay a request, drop its connection, replace its reply (a status with vLLM's
  error body, or a body of its own), or cut the handler's reply in half (`truncate`,
  `close_mid_body`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from asynctts.testing.wire import Reply, error_body


@dataclass(eq=False)
class Fault:
    """A fault injected into matching requests.

    Args:
        route: the path it applies to ("/v1/completions", "/pooling", ...), or "*" for any.
        status: answer with this status and an OpenAI-style error body (or `body`).
        retry_after_s: send a Retry-After header (needs `status`).
        delay_s: wait this long first (to trigger client timeouts).
        drop: close the connection without any response.
        truncate: send only the first half of the body (with a matching Content-Length), so a
            200 arrives whose JSON does not parse.
        close_mid_body: declare the full Content-Length, send half the body, close the
            connection (the client's read fails).
        times: how many requests it applies to before it is used up.
        match: applies only when this returns True for the parsed JSON body ({} when none).
        body: send this text instead (status defaults to 200), e.g. an HTML error page.
        content_type: of `body`; default "text/html" when it starts with "<", else
            "text/plain".
    """

    route: str
    status: int | None = None
    retry_after_s: float | None = None
    delay_s: float = 0.0
    drop: bool = False
    truncate: bool = False
    close_mid_body: bool = False
    times: int = 1
    match: Callable[[dict[str, Any]], bool] | None = None
    body: str | None = None
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.route != "*" and not self.route.startswith("/"):
            raise ValueError(
                f"Fault route={self.route!r}: use a path like '/v1/completions' or '*'"
            )
        if self.status is not None and not 200 <= self.status <= 599:
            raise ValueError(f"Fault status={self.status}: need 200..599")
        if self.retry_after_s is not None and (self.status is None or self.retry_after_s < 0):
            raise ValueError(
                f"Fault retry_after_s={self.retry_after_s}: needs a status and a value >= 0"
            )
        if self.delay_s < 0:
            raise ValueError(f"Fault delay_s={self.delay_s}: need >= 0")
        if self.times < 1:
            raise ValueError(f"Fault times={self.times}: need >= 1")
        if self.truncate and self.close_mid_body:
            raise ValueError("Fault: choose one of truncate and close_mid_body")
        if self.drop and (self.replaces_reply or self.truncate or self.close_mid_body):
            raise ValueError("Fault drop=True sends nothing: status/body/truncate do not apply")

    @property
    def replaces_reply(self) -> bool:
        """Whether the fault answers in the handler's place (a status or a body of its own)."""
        return self.status is not None or self.body is not None

    def applies_to(self, route: str, body: dict[str, Any]) -> bool:
        if self.route not in ("*", route):
            return False
        return self.match is None or self.match(body)


@dataclass(eq=False, slots=True)
class _Pending:
    fault: Fault
    uses_left: int


class FaultSchedule:
    """The faults still to fire, in the order they were added."""

    def __init__(self) -> None:
        self._pending: list[_Pending] = []

    def add(self, fault: Fault) -> None:
        """Apply `fault` to the next `fault.times` matching requests (after earlier faults)."""
        self._pending.append(_Pending(fault, fault.times))

    def clear(self) -> None:
        self._pending.clear()

    def pending(self) -> list[tuple[Fault, int]]:
        """Faults not yet used up, with the uses they have left."""
        return [(slot.fault, slot.uses_left) for slot in self._pending]

    def take(self, route: str, body: dict[str, Any]) -> Fault | None:
        """The first fault that applies to this request, one of its uses spent; None: none."""
        for slot in self._pending:
            if slot.fault.applies_to(route, body):
                slot.uses_left -= 1
                if slot.uses_left == 0:
                    self._pending.remove(slot)
                return slot.fault
        return None


def fault_reply(fault: Fault) -> Reply:
    """The reply a fault with a status or a body of its own sends instead of the handler's."""
    headers = {}
    if fault.retry_after_s is not None:
        headers["Retry-After"] = f"{fault.retry_after_s:g}"
    if fault.body is not None:
        content_type = fault.content_type or (
            "text/html" if fault.body.lstrip().startswith("<") else "text/plain"
        )
        return Reply(fault.status or 200, fault.body.encode(), content_type, headers)
    assert fault.status is not None  # the caller checked
    status = fault.status
    try:
        message = f"Simulated fault: {status} {HTTPStatus(status).phrase}"
    except ValueError:
        message = f"Simulated fault: {status}"
    return Reply(status, orjson.dumps(error_body(status, message)), headers=headers)


async def send_cut(request: web.Request, reply: Reply, *, close: bool) -> web.StreamResponse:
    """Half of `reply`: with a matching Content-Length, or (`close`) the full one and the
    connection closed after the half."""
    cut = reply.body[: len(reply.body) // 2]
    if not close:
        return Reply(reply.status, cut, reply.content_type, reply.headers).response()
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    response.content_type = reply.content_type.split(";")[0]
    response.content_length = len(reply.body)  # promises more than it sends
    await response.prepare(request)
    await response.write(cut)
    if request.transport is not None:
        request.transport.close()
    return response


__all__ = ["Fault", "FaultSchedule", "fault_reply", "send_cut"]
