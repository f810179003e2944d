"""Structured logging: JSON lines for machines, readable lines on a terminal.

structlog and the standard library's :mod:`logging` (aiohttp's and asyncio's
loggers) share one handler and one processor chain, so every line, whoever
wrote it, carries the same keys and goes through the same redaction: each
value of the event is passed through :meth:`SecretStore.redact` before
rendering, and the rendered line is redacted once more in case a secret was
assembled during rendering (a traceback, a ``repr``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from daemon.secrets import SECRETS, SecretStore

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")

# The handler this module installed on the root logger, replaced on reconfigure
# so that calling configure() again (SIGHUP) never duplicates output.
_handler: logging.Handler | None = None

_PLAIN = (int, float, bool, type(None))
# Put first in each line so a reader's eye finds them in the same place.
_LEAD_KEYS = ("timestamp", "level", "logger", "event")


def redact_value(value: Any, secrets: SecretStore) -> Any:
    """``value`` with every known secret replaced, however deeply it is nested.

    Strings are redacted; dicts, lists, tuples and sets are walked; any other
    object (an exception, a path, a model) becomes its redacted ``str()``,
    because its ``repr`` would otherwise be built later, out of our sight.
    """
    if isinstance(value, str):
        return secrets.redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {
            redact_value(key, secrets): redact_value(item, secrets) for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item, secrets) for item in value]
    if isinstance(value, bytes):
        return secrets.redact(value.decode("utf-8", "replace"))
    return secrets.redact(str(value))


class _Redactor:
    """Processor: redact every value of the event dict (must run after format_exc_info)."""

    def __init__(self, secrets: SecretStore) -> None:
        self._secrets = secrets

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        ordered = {key: event_dict[key] for key in _LEAD_KEYS if key in event_dict}
        ordered.update(event_dict)
        return {key: redact_value(value, self._secrets) for key, value in ordered.items()}


class _RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders through the processors, then redacts the finished line."""

    def __init__(self, secrets: SecretStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return self._secrets.redact(super().format(record))


def _wants_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def _renderer(as_json: bool, stream: TextIO) -> Processor:
    if as_json:
        # ensure_ascii=False keeps non-ASCII secrets literal, so the final
        # line redaction can still find them.
        return structlog.processors.JSONRenderer(json.dumps, ensure_ascii=False)
    isatty = getattr(stream, "isatty", None)
    return structlog.dev.ConsoleRenderer(
        colors=bool(callable(isatty) and isatty()),
        # A rich traceback wraps long lines, which could split a secret
        # across two lines where the final redaction cannot see it.
        exception_formatter=structlog.dev.plain_traceback,
    )


def configure(
    level: str = "info",
    fmt: str = "auto",
    secrets: SecretStore = SECRETS,
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and stdlib logging; safe to call again (SIGHUP).

    ``fmt`` is ``json`` (one object per line), ``console`` (readable), or
    ``auto``: console on a terminal, JSON otherwise. ``stream`` defaults to
    standard error. An unknown level or format raises :class:`ValueError`.
    """
    global _handler
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = stream if stream is not None else sys.stderr

    # Run on every line, from structlog or from stdlib logging alike.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger bound before configure() must follow the new set-up.
        cache_logger_on_first_use=False,
    )

    formatter = _RedactingFormatter(
        secrets,
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text here so that the redactor sees them.
            structlog.processors.format_exc_info,
            _Redactor(secrets),
            _renderer(_wants_json(fmt, out), out),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    _handler = handler


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (the ``logger`` key of each line)."""
    return structlog.stdlib.get_logger(name)


def unconfigure() -> None:
    """Undo :func:`configure`: remove its handler, restore structlog's defaults (tests).

    The stream is left open; it belongs to the caller.
    """
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler.close()
        _handler = None
    structlog.reset_defaults()
