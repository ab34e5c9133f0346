"""Logging setup: structlog with ids bound through contextvars, JSON lines when the stream is
not a terminal. asynctts never reconfigures logging an application already configured."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson
import structlog


def configure_logging(
    *, level: int | str = logging.WARNING, stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Route structlog output to `stream` (stderr by default) at `level`.

    JSON (one object per line, rendered by orjson) unless the stream is a terminal; with
    ISO timestamps, the log level and every id bound with `structlog.contextvars`.
    """
    out = stream or sys.stderr
    as_json = not out.isatty() if json is None else json
    numeric = logging.getLevelNamesMapping()[level.upper()] if isinstance(level, str) else level
    binary = getattr(out, "buffer", None)
    renderer: structlog.typing.Processor
    factory: structlog.typing.WrappedLogger
    if as_json and binary is not None:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(binary)
    else:
        renderer = (
            structlog.processors.JSONRenderer(serializer=_json_text)
            if as_json
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def ensure_logging() -> None:
    """Give asynctts a quiet default (warnings and errors only) when nobody configured
    structlog: its stock configuration prints every debug line."""
    if not structlog.is_configured():
        configure_logging()


def _json_text(obj: object, **_: object) -> str:
    return orjson.dumps(obj).decode()
