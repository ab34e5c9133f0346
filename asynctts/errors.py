"""The exception tree. Every error names the value that caused it.

AsyncttsError
├── ConfigError (also ValueError)    bad arguments, caught before any request is sent
├── EndpointError                    an endpoint as a whole cannot serve this solve
│   ├── EndpointUnreachable
│   ├── ModelNotFound
│   └── PromptTooLong
├── TransportError                   one request, after the transport mapped it
│   ├── ConnectFailed     (transient: refused, reset, dropped: a server restarting)
│   ├── TimedOut          (transient)
│   ├── RateLimited       (transient, carries Retry-After)
│   ├── ServerError       (transient: 408, 409, 5xx)
│   ├── BadResponse       (transient: not JSON, or JSON of the wrong shape)
│   ├── HostNotFound      (final: the host name does not resolve)
│   ├── TLSFailed         (final: TLS handshake or certificate check failed)
│   └── RequestRejected   (final: any other 4xx)
│       └── ContextLengthExceeded
├── BranchLost                       a branch whose requests failed for good; strategies
│                                    return it as a value so it never sinks its problem
└── SolveFailed                      no branch of a problem survived

A transport error that spent all its attempts says how many (`attempts`); its message already
summarises the library error underneath, so that one is not chained to it.
"""

from __future__ import annotations

from collections.abc import Sequence


class AsyncttsError(Exception):
    """Base of every error asynctts raises on purpose."""


class ConfigError(AsyncttsError, ValueError):
    """A bad argument (unknown strategy, n < 1, empty problem, missing PRM, ...)."""


class EndpointError(AsyncttsError):
    """An endpoint cannot serve this solve at all."""


class EndpointUnreachable(EndpointError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"endpoint {url} is unreachable: {reason}")
        self.url = url
        self.reason = reason


class ModelNotFound(EndpointError):
    def __init__(self, url: str, model: str, available: Sequence[str]) -> None:
        super().__init__(
            f"endpoint {url} does not serve model {model!r}; it serves {list(available)!r}"
        )
        self.url = url
        self.model = model
        self.available = tuple(available)


class PromptTooLong(EndpointError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"the problem's prompt does not fit the context of {url}: {detail}")
        self.url = url
        self.detail = detail


class TransportError(AsyncttsError):
    """One HTTP exchange failed; `transient` says whether a retry may help. `attempts` counts
    the tries the transport made before it gave up (the message says so when > 1)."""

    transient: bool = True
    attempts: int = 1

    def __str__(self) -> str:
        message = super().__str__()
        if self.attempts > 1:
            return f"{message}; gave up after {self.attempts} attempts"
        return message


class ConnectFailed(TransportError):
    """Could not connect, or the connection dropped before the whole response arrived."""


class TimedOut(TransportError):
    """Connect, read or total timeout."""


class RateLimited(TransportError):
    """HTTP 429; `retry_after_s` from the Retry-After header when the server sent one."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServerError(TransportError):
    """408, 409 or 5xx; may carry Retry-After (503)."""

    def __init__(self, message: str, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class BadResponse(TransportError):
    """A 2xx whose body is not the JSON we expect."""


class HostNotFound(TransportError):
    """The host name of the URL does not resolve: a typo or a missing DNS entry, which a retry
    a second later would not fix."""

    transient = False


class TLSFailed(TransportError):
    """The TLS handshake failed (https:// to a plain-HTTP port, no common protocol) or the
    server's certificate was rejected: a setting to fix, not a fault to retry."""

    transient = False


class RequestRejected(TransportError):
    """A 4xx other than 408/409/429: retrying the same request cannot help."""

    transient = False

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ContextLengthExceeded(RequestRejected):
    """The server refused the request because prompt + max_tokens exceed its context."""


class BranchLost(AsyncttsError):
    """A branch of the search whose request failed for good.

    Strategies return it as a value; `Solution.lost` lists them with their reasons.
    """

    def __init__(self, key: tuple[int, ...], stage: str, cause: BaseException) -> None:
        super().__init__(f"branch {format_key(key)} lost while {stage}: {cause}")
        self.key = key
        self.stage = stage
        self.cause = cause

    @property
    def reason(self) -> str:
        return f"{type(self.cause).__name__}: {self.cause}"


class SolveFailed(AsyncttsError):
    """Every branch of a problem was lost; `lost` holds why."""

    def __init__(self, problem_id: str, lost: Sequence[BranchLost]) -> None:
        reasons = sorted({b.reason for b in lost})
        super().__init__(
            f"problem {problem_id}: all {len(lost)} branches lost; reasons: {reasons[:5]}"
        )
        self.problem_id = problem_id
        self.lost = tuple(lost)


def format_key(key: tuple[int, ...]) -> str:
    """A branch id for logs and ledgers: the tree position, e.g. "0.3.1" ("root" for ())."""
    return ".".join(map(str, key)) or "root"
