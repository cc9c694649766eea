"""One logging setup for every process: JSON lines in production, readable lines in dev.

:func:`configure_logging` puts a single handler on the root logger, writing to stderr
either one JSON object per line (``json``: ``timestamp``, ``level``, ``logger``,
``message``, ``process``, any ``extra=`` fields, ``exc_info``) or a plain line for people
(``console``). Calling it again replaces that handler instead of adding a second one.

Correlation ids live in a context variable, not in the code that logs: the API binds
``request_id`` for the length of a request, the worker binds ``task_id`` and ``job_id``
for the length of a task, and a filter on the handler copies whatever is bound onto
every record, whichever logger wrote it. This module knows nothing of Flask or Celery.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from models.canonical import visible_text

LogFormat = Literal["json", "console"]
CONTEXT_FIELDS = ("request_id", "job_id", "task_id")
_EMPTY: Mapping[str, str] = MappingProxyType({})
_log_context: ContextVar[Mapping[str, str]] = ContextVar("plant_log_context", default=_EMPTY)


def bind_log_context(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add ``fields`` (None values are skipped) to the context; undo with :func:`reset_log_context`."""
    merged = {**_log_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    return _log_context.set(MappingProxyType(merged))


def reset_log_context(token: Token[Mapping[str, str]]) -> None:
    _log_context.reset(token)


def current_log_context() -> Mapping[str, str]:
    return _log_context.get()


class ContextFilter(logging.Filter):
    """Copies the bound correlation ids onto each record (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _log_context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class ConsoleFormatter(logging.Formatter):
    """``12:00:01.234 INFO    web.metrics: message  request_id=… job_id=…``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        ids = "  ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name))
        # One record, one line: a newline or an escape code in what a client sent (a request
        # path with %0A) would start a line of its own that looks like another record.
        line = visible_text(super().formatMessage(record))
        return f"{line}  {visible_text(ids)}" if ids else line

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    """A traceback's lines, each indented and with its control characters escaped: an exception
    message quoting a client's input cannot start a line that reads as a record of its own."""
    return "\n".join("  " + visible_text(line) for line in text.splitlines())


class _TimestampFirstJsonFormatter(JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_record["timestamp"] = None  # reserves the first place; the base class fills it in
        super().add_fields(log_record, record, message_dict)


def json_formatter() -> logging.Formatter:
    return _TimestampFirstJsonFormatter(
        "{levelname}{name}{message}{process}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,  # RFC 3339 in UTC, from the record's creation time
    )


def make_formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        return json_formatter()
    if fmt == "console":
        return ConsoleFormatter()
    raise ValueError(f"unknown log format {fmt!r}: use 'json' or 'console'")


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (pytest and gunicorn swap it).

    stderr, not stdout: a command that prints JSON for scripts (``plant seed --json``)
    must not have log lines mixed into its output. Containers collect both streams.
    """

    plant_handler = True  # marks the handler configure_logging owns

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def make_handler(fmt: LogFormat = "json") -> logging.Handler:
    """The root handler: stderr, the chosen format, the context filter.

    Also the factory gunicorn's ``logconfig_dict`` names, so the API's master and workers
    share one handler that ``configure_logging`` later recognises and replaces.
    """
    handler = StderrHandler()
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    return handler


# Alembic logs each of its plugins' set-up at INFO when it is first imported (the API imports
# it for /health's schema check): seven lines per gunicorn worker. Shown at DEBUG only.
ALEMBIC_PLUGINS = "alembic.runtime.plugins"


def _alembic_plugins_level(level: int) -> int:
    return logging.WARNING if level >= logging.INFO else logging.NOTSET


def configure_logging(fmt: LogFormat = "json", level: str | int = "INFO") -> logging.Handler:
    """Make the root logger write ``fmt`` lines to stderr at ``level``; idempotent.

    Replaces a handler an earlier call (or gunicorn's logging config) installed, and leaves
    handlers that others added (pytest's capture, for one) alone.
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "plant_handler", False):
            root.removeHandler(existing)
    handler = make_handler(fmt)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger(ALEMBIC_PLUGINS).setLevel(_alembic_plugins_level(root.getEffectiveLevel()))
    logging.captureWarnings(True)  # warnings become records (logger py.warnings), not stray stderr text
    return handler


def gunicorn_logconfig(fmt: LogFormat, level: str) -> dict[str, Any]:
    """``logconfig_dict`` for gunicorn: its error log goes through the root handler.

    ``gunicorn.access`` is left out on purpose: gunicorn keeps it to itself (no
    propagation), writing only when an access log file is configured, with its own
    ``access_log_format``.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": level.upper(), "handlers": ["plant"]},
        "loggers": {"gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
                    ALEMBIC_PLUGINS: {"level": _alembic_plugins_level(logging.getLevelName(level.upper()))}},
        "handlers": {"plant": {"()": make_handler, "fmt": fmt}},
    }
