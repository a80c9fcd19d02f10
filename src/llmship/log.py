"""The agent's own logs: structlog, one event name per line, key=value on a terminal, JSON otherwise.

Bad input must be logged at a limited rate (never once per event on a hot path): use ``limited`` with a
stable key; repeats within the window are counted and reported with the next line that gets through.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

import structlog

_configured = False


def configure(level: str = "info", fmt: str = "auto", stream=None, secrets: Iterable[str] = (),
              fields: dict | None = None) -> None:
    """fmt: "auto" (console on a terminal, JSON otherwise), "console" or "json".

    ``secrets`` (the API key) are replaced in every rendered line, whatever field carries them: bad input
    logged for diagnosis may contain a key an app put where it should not. ``fields`` are added to every
    line (a worker process's ``worker`` index).
    """
    global _configured
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *([lambda _logger, _method, event: {**fields, **event}] if fields else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            _redactor(secrets),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _configured = True


def _redactor(secrets: Iterable[str]):
    # Short strings would redact half the log and protect nothing: keys are 32+ characters.
    keep = [secret for secret in secrets if secret and len(secret) >= 8]

    def redact(_logger, _method, line: str) -> str:
        for secret in keep:
            if secret in line:
                line = line.replace(secret, "[REDACTED]")
        return line

    return redact


def get_logger(component: str) -> structlog.typing.FilteringBoundLogger:
    # Initial values, not .bind(): binding resolves the logger at import time, before configure() runs.
    return structlog.get_logger(component=component)


class RateLimited:
    """At most one line per ``key`` per ``window_secs``; suppressed repeats are counted and reported."""

    def __init__(self, logger, window_secs: float = 10.0) -> None:
        self._log = logger
        self._window = window_secs
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, event: str, **fields) -> None:
        self._emit(self._log.warning, key, event, fields)

    def error(self, key: str, event: str, **fields) -> None:
        self._emit(self._log.error, key, event, fields)

    def _emit(self, method, key: str, event: str, fields: dict) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 10_000:  # keys are meant to be few (reasons, not values); stay bounded anyway
            self._last.clear()
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields["suppressed_repeats"] = suppressed
        method(event, **fields)
