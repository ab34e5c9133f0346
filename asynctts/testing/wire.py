"""vLLM's OpenAI-compatible wire format, as the simulated server reads and writes it.

Rules:
- Request bodies are validated like vLLM 0.32 validates them (docs/design.md, section 4): a
  field that vLLM rejects raises `HttpError`, which becomes a 400 (or the status it names) with
  vLLM's error body `{"error": {"message", "type", "param", "code"}}`; messages name the field
  and the value.
- Chat messages are read as one text: their contents joined by "\n\n".
- Nothing here holds state or knows about the model, the engine or faults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson
from aiohttp import web

DEFAULT_COMPLETIONS_MAX_TOKENS = 16  # vLLM's default for /v1/completions


class Reply(NamedTuple):
    """A whole response: status, body bytes, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = MappingProxyType({})

    def response(self) -> web.Response:
        headers = {"Content-Type": self.content_type, **self.headers}
        return web.Response(status=self.status, body=self.body, headers=headers)


def json_reply(payload: Any, status: int = 200) -> Reply:
    """`payload` as a JSON response."""
    return Reply(status, orjson.dumps(payload))


_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """vLLM's error JSON for `status`."""
    try:
        fallback = HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        fallback = "Error"
    err_type = _ERROR_TYPES.get(status, fallback)
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


class HttpError(Exception):
    """A request vLLM would refuse: answered with `status` and vLLM's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def reply(self) -> Reply:
        return json_reply(error_body(self.status, self.message, param=self.param), self.status)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """The sampling fields of a completions or chat request, validated."""

    n: int
    max_tokens: int | None
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    include_stop_str_in_output: bool


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_sampling(body: dict[str, Any], *, default_max_tokens: int | None) -> SamplingParams:
    """The sampling fields of `body`; raises `HttpError` (400) on one vLLM rejects."""
    n = body.get("n", 1)
    if not is_int(n) or n < 1:
        raise HttpError(400, f"n must be an integer >= 1, got {n!r}", param="n")
    max_tokens = body.get("max_tokens", default_max_tokens)
    if body.get("max_completion_tokens") is not None:
        max_tokens = body["max_completion_tokens"]
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise HttpError(
            400, f"max_tokens must be at least 1, got {max_tokens!r}.", param="max_tokens"
        )
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not is_number(temperature) or temperature < 0:
        raise HttpError(
            400, f"temperature must be a number >= 0, got {temperature!r}.", param="temperature"
        )
    top_p = body.get("top_p", 1.0)
    if top_p is not None and (not is_number(top_p) or not 0 < top_p <= 1):
        raise HttpError(400, f"top_p must be in (0, 1], got {top_p!r}.", param="top_p")
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        raise HttpError(400, f"seed must be an integer, got {seed!r}", param="seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise HttpError(
            400, f"stop must be a string or a list of strings, got {stop!r}", param="stop"
        )
    include = body.get("include_stop_str_in_output", False)
    if not isinstance(include, bool):
        raise HttpError(
            400,
            f"include_stop_str_in_output must be a boolean, got {include!r}",
            param="include_stop_str_in_output",
        )
    if body.get("stream"):
        raise HttpError(400, "stream=true is not simulated by SimulatedServer", param="stream")
    return SamplingParams(n, max_tokens, float(temperature), seed, stops, include)


def message_text(messages: object) -> tuple[str, str | None]:
    """The text of chat `messages` (contents joined by "\\n\\n", so each message ends at a step
    boundary) and the role of the last one."""
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "messages must be a non-empty list of messages", param="messages")
    texts: list[str] = []
    role: str | None = None
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise HttpError(
                400, f"messages[{position}] must be an object with a 'role'", param="messages"
            )
        role = message["role"]
        content = message.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise HttpError(
                    400,
                    f"messages[{position}].content parts must be {{'type': 'text', 'text': str}}",
                    param="messages",
                )
            content = "".join(p for p in parts if isinstance(p, str))
        elif not isinstance(content, str):
            raise HttpError(
                400, f"messages[{position}].content must be a string or parts", param="messages"
            )
        texts.append(content)
    return "\n\n".join(texts), role


def prometheus_label(value: str) -> str:
    """`value` escaped for a Prometheus label."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def read_json(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """The request's JSON object, or ({}, why it is not one)."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {}, f"JSON decode error: {exc}"
    if not isinstance(body, dict):
        return {}, f"the request body must be a JSON object, got {type(body).__name__}"
    return body, None


__all__ = [
    "DEFAULT_COMPLETIONS_MAX_TOKENS",
    "HttpError",
    "Reply",
    "SamplingParams",
    "error_body",
    "is_int",
    "is_number",
    "json_reply",
    "message_text",
    "parse_sampling",
    "prometheus_label",
    "read_json",
]
