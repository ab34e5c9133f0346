"""`Endpoint`: where a model is served and how to talk to it. A frozen value; it opens
nothing. The API key is read from the environment when needed and never shown.

Several URLs (`base_url=[...]`) are several servers of the same model; which one a request
goes to is the transport's business (asynctts/url_pool.py)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from asynctts.errors import ConfigError

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110)
_OWN_HEADERS = frozenset({"authorization", "content-type", "content-length", "host"})


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """An OpenAI-compatible server (vLLM or any other) and the limits to respect on it.

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1" (a trailing "/v1" is optional), or a list
            of such URLs, each a server of the same `model` (kept as a tuple): every request of
            a problem goes to one of them, chosen by rendezvous hashing of the problem id, so
            the problem's shared prefixes stay in that server's cache, and a server that fails
            is skipped until it answers again (see `down_cooldown_s`). At open, each URL's
            `/v1/models` is checked: a URL serving another model fails the open
            (`ModelNotFound`); one that does not answer is skipped with a logged warning, and
            the open fails (`EndpointUnreachable`) only when none answers. The limits below
            (in-flight cap, rates, adaptation, Retry-After pauses) hold for the endpoint as a
            whole, all its URLs together: set `max_in_flight` to the sum of the servers'
            capacities. For more than a few servers, put a router in front of them and give
            its one URL.
        model: the served model name, checked against the server's `/v1/models`.
        mode: policy endpoints only. "completions" renders the chat template on the client
            (needs the tokenizer, or `prompt_format`); "chat" sends messages and continues
            the final assistant message.
        scoring: PRM endpoints only. "pooling" for `*ForProcessRewardModel` served with
            `--runner pooling`; "logprob" for generative PRMs judged by P("+") vs P("-").
        tokenizer: Hugging Face name or local path of the tokenizer whose chat template is
            rendered on the client; defaults to `model`. A name is looked up locally (the
            Hugging Face cache) before the hub, which is asked only if it answers a short probe
            (never under HF_HUB_OFFLINE). A pooling PRM with neither `tokenizer` nor
            `prompt_format` renders on the client when `model`'s tokenizer can be had that way,
            and otherwise lets the server render (chat `messages`, one path per request);
            `Solver.prm_rendering` says which. A logprob PRM and a completions-mode policy
            always need the tokenizer here.
        prompt_format: a `str.format` pattern used instead of a chat template (models without
            one). Policy: fields {system} and {problem}. PRM (pooling): {problem} and
            {solution} (the steps, each followed by the step tag).
        api_key_env: the environment variable holding the API key. When it is set explicitly
            and the variable is missing, `api_key()` raises; the default variable may be unset
            (a local vLLM needs no key).
        max_in_flight: cap on requests in flight (and the HTTP connection limit).
        rate_per_s / tokens_per_min: optional admission rates.
        connect_timeout_s / read_timeout_s / total_timeout_s: per attempt of a request.
            Connect covers the DNS lookup, the TCP connection and the TLS handshake; read is
            the longest the server may stay silent, waiting for the answer or between two
            chunks of it (a server that accepts and never answers fails after this); total
            bounds the whole attempt, however slowly the bytes trickle in. A request that
            never gets an answer therefore fails after max_attempts attempts of at most
            min(connect + read, total) seconds each, plus the waits between them.
        check_timeout_s: the model check at open (GET /v1/models) gives up after this long,
            retries and the waits between them included; each of its attempts waits at most
            4 s for the whole answer.
        max_attempts: tries per request (1 = no retry). Only transient failures are retried:
            refused or dropped connections, timeouts, 408, 409, 429, 5xx and unreadable
            answers; a host name that does not resolve, a failed TLS handshake or certificate
            check and any other 4xx fail at once.
        backoff_base_s: the first retry waits up to this long (full jitter), doubling per
            retry up to 30 s, unless the server sent Retry-After.
        max_n_per_request: most siblings asked for in one request (`n`); more are split.
        step_tag: pooling PRM step marker inserted after every step.
        prompt_logprobs: logprob PRM: top-K prompt logprobs to ask for (<= --max-logprobs).
        adaptive_concurrency: adapt the in-flight cap to the server (AIMD, see
            `asynctts.concurrency`): lower it when the server answers 429/503 (or its queue
            grows, with `adaptive_max_waiting`), raise it back while it is healthy, always
            within [adaptive_min_in_flight, max_in_flight]. None (the default) adapts for
            every host except loopback ones (localhost, 127.0.0.0/8, ::1): a local vLLM never
            answers 429 and queues what it cannot run, so a fixed cap keeps it full from the
            first request and nothing throttles it by surprise; a remote or shared API
            enforces limits we cannot see, and starting at the full cap there drew 77% 429s
            (docs/design.md, section 8), so there the cap starts low and ramps up (doubling per
            round trip until the first 429). True or False decide for any host; set False
            for your own vLLM on another machine to skip the ramp.
        adaptive_initial_in_flight: the cap adaptation starts at (clamped to max_in_flight).
        adaptive_min_in_flight: adaptation never lowers the cap below this.
        adaptive_max_waiting: also back off while the server's `vllm:num_requests_waiting`
            (from `/metrics`, read every `metrics_interval_s` off the request path) is above
            this; None (default) never reads `/metrics`. Needs adaptation on.
        metrics_interval_s: seconds between two reads of `/metrics`.
        down_cooldown_s: several URLs only: a URL whose request failed at the connection
            (refused, dropped, timed out) or with a second 5xx in a row is skipped for this
            long; then a health check (GET /v1/models) brings it back, or skips it for as long
            again.
        affinity_header: the HTTP header that carries a request's affinity key (its problem
            id; a PRM batch sends its main problem's), so that a router in front of several
            servers keeps a problem's requests on one of them, where its prefixes are cached.
            vllm-router's consistent_hash and sticky_least_loaded policies read
            "X-Session-ID" (the default); on /v1/completions they ignore body fields, and
            without the header every token-id prompt of one length hashes alike. A key that is
            not printable ASCII is sent percent-encoded. A server without a router ignores
            it. None sends no header (the problem ids stay on the client).
    """

    base_url: str | Sequence[str]
    model: str
    mode: Literal["completions", "chat"] = "completions"
    scoring: Literal["pooling", "logprob"] = "pooling"
    tokenizer: str | None = None
    prompt_format: str | None = None
    api_key_env: str | None = None
    max_in_flight: int = 512
    rate_per_s: float | None = None
    tokens_per_min: float | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    total_timeout_s: float = 900.0
    check_timeout_s: float = 20.0
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    max_n_per_request: int = 64
    step_tag: str = "<extra_0>"
    prompt_logprobs: int = 20
    adaptive_concurrency: bool | None = None
    adaptive_initial_in_flight: int = 32
    adaptive_min_in_flight: int = 1
    adaptive_max_waiting: int | None = None
    metrics_interval_s: float = 1.0
    down_cooldown_s: float = 5.0
    affinity_header: str | None = "X-Session-ID"

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str):
            object.__setattr__(self, "base_url", _url_list(self.base_url))
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(
                    f"Endpoint base_url {url!r} needs a scheme and a host, "
                    "e.g. 'http://127.0.0.1:8000/v1'"
                )
        _check_distinct(self.urls)
        if not self.model:
            raise ConfigError(f"Endpoint {self.base_url}: model name is empty")
        if self.mode not in ("completions", "chat"):
            raise ConfigError(f"Endpoint mode {self.mode!r}: use 'completions' or 'chat'")
        if self.scoring not in ("pooling", "logprob"):
            raise ConfigError(f"Endpoint scoring {self.scoring!r}: use 'pooling' or 'logprob'")
        for name in (
            "max_in_flight",
            "max_attempts",
            "max_n_per_request",
            "prompt_logprobs",
            "adaptive_initial_in_flight",
            "adaptive_min_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"Endpoint {name}={getattr(self, name)}: need >= 1")
        for name in (
            "connect_timeout_s",
            "read_timeout_s",
            "total_timeout_s",
            "check_timeout_s",
            "metrics_interval_s",
            "backoff_base_s",
            "down_cooldown_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Endpoint {name}={getattr(self, name)}: need > 0")
        for name in ("rate_per_s", "tokens_per_min"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"Endpoint {name}={value}: need > 0 or None")
        self._check_affinity_header()
        self._check_adaptive()

    def _check_affinity_header(self) -> None:
        header = self.affinity_header
        if header is None:
            return
        if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
            raise ConfigError(
                f"Endpoint affinity_header={header!r}: need an HTTP header name "
                "(letters, digits and !#$%&'*+-.^_`|~), e.g. 'X-Session-ID', or None"
            )
        if header.lower() in _OWN_HEADERS:
            raise ConfigError(
                f"Endpoint affinity_header={header!r}: asynctts sets that header itself; "
                "choose another, e.g. 'X-Session-ID'"
            )

    def _check_adaptive(self) -> None:
        adaptive = self.adaptive_concurrency
        if adaptive is not None and not isinstance(adaptive, bool):
            raise ConfigError(
                f"Endpoint adaptive_concurrency={self.adaptive_concurrency!r}: "
                "use True, False or None (adapt unless the host is loopback)"
            )
        if self.adaptive_min_in_flight > self.max_in_flight:
            raise ConfigError(
                f"Endpoint adaptive_min_in_flight={self.adaptive_min_in_flight} exceeds "
                f"max_in_flight={self.max_in_flight}"
            )
        waiting = self.adaptive_max_waiting
        if waiting is not None:
            if isinstance(waiting, bool) or not isinstance(waiting, int) or waiting < 0:
                raise ConfigError(f"Endpoint adaptive_max_waiting={waiting!r}: need an int >= 0")
            if not self.adapts_concurrency:
                raise ConfigError(
                    f"Endpoint {self.base_url}: adaptive_max_waiting={waiting} needs "
                    "adaptation, which is off for this endpoint; set adaptive_concurrency=True"
                )
            if len(self.urls) > 1:
                raise ConfigError(
                    f"Endpoint adaptive_max_waiting={waiting} watches one server's queue; "
                    f"with {len(self.urls)} URLs leave it None (the cap still adapts to "
                    "429/503), or put a router in front of the servers"
                )

    @property
    def urls(self) -> tuple[str, ...]:
        """`base_url` as a tuple: one URL, or each of several."""
        return (self.base_url,) if isinstance(self.base_url, str) else tuple(self.base_url)

    @property
    def root_url(self) -> str:
        """The server root: routes such as /v1/completions and /pooling hang off it.

        Raises:
            ConfigError: the endpoint has several URLs (see `root_urls`).
        """
        if not isinstance(self.base_url, str):
            raise ConfigError(
                f"Endpoint with {len(self.urls)} URLs has no single root_url; use root_urls"
            )
        return _root(self.base_url)

    @property
    def root_urls(self) -> tuple[str, ...]:
        """The server root of each URL, in the order of `urls`."""
        return tuple(_root(url) for url in self.urls)

    @property
    def adapts_concurrency(self) -> bool:
        """Whether the in-flight cap adapts (`adaptive_concurrency`, None resolved by host:
        fixed when every URL is a loopback one)."""
        if self.adaptive_concurrency is not None:
            return self.adaptive_concurrency
        return not all(_is_loopback(urlsplit(url).hostname or "") for url in self.urls)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.model

    def api_key(self) -> str | None:
        """The key from the environment; None when no key is configured (local servers)."""
        env = self.api_key_env or DEFAULT_API_KEY_ENV
        key = os.environ.get(env)
        if key is None and self.api_key_env is not None:
            raise ConfigError(
                f"Endpoint {self.base_url}: API key variable {self.api_key_env} is not set"
            )
        return key or None


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def _url_list(given: object) -> tuple[str, ...]:
    """Several URLs as a tuple, each a string."""
    if not isinstance(given, list | tuple):
        raise ConfigError(
            f"Endpoint base_url={given!r}: need a URL or a list of URLs, "
            "e.g. 'http://127.0.0.1:8000/v1'"
        )
    if not given:
        raise ConfigError("Endpoint base_url is an empty list: give one URL or several")
    for url in given:
        if not isinstance(url, str):
            raise ConfigError(
                f"Endpoint base_url entry {url!r} is a {type(url).__name__}, not a URL string"
            )
    return tuple(given)


def _check_distinct(urls: tuple[str, ...]) -> None:
    """Each server once: URLs with the same root (scheme, host and path alike, "/v1" or a
    trailing slash aside) are one server listed twice."""
    seen: dict[str, str] = {}
    for url in urls:
        root = _root(url).lower()
        if root in seen:
            raise ConfigError(
                f"Endpoint base_url lists {seen[root]!r} and {url!r}, the same server; "
                "list each server once"
            )
        seen[root] = url


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: we cannot tell where it is without resolving it
        return False
