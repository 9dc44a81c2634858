"""Entry points: one logging pipeline for every process, masked before anything is written.

Every record — the project's `logging.getLogger(__name__)` calls, uvicorn's, aiosmtpd's
(`mail.log`), asyncio's, and structlog's own loggers — ends in a single root handler whose
`structlog.stdlib.ProcessorFormatter` adds the time (ISO 8601, UTC), the level, the logger name,
`extra={...}` fields and context variables (`structlog.contextvars.bind_contextvars(
request_id=..., message_id=...)`), then runs `privacy.logsafe.mask_event_dict` last before
rendering, so no processor can add an unmasked value after it. Rendering is one JSON object per
line (`json=True`, for log collectors) or a human console line.

uvicorn must be started with `log_config=None`: its default configuration installs handlers of
its own, which would write around this pipeline.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from amnex.config import Settings
from amnex.privacy.logsafe import mask_event_dict

LogFormat = Literal["text", "json"]

# Loggers that third parties may have given handlers of their own: every record of theirs goes
# through the root handler instead.
THIRD_PARTY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "mail.log", "asyncio")

_FIRST_KEYS = ("timestamp", "level", "logger", "event")
# LogRecord attributes that are not `extra={...}` fields (plus uvicorn's colored duplicate).
_PLAIN_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_RECORD_ATTRIBUTES = frozenset(vars(_PLAIN_RECORD)) | {"message", "asctime", "color_message"}


def configure_logging(level: str | int, json: bool, *, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr), masked, as JSON lines or console lines.

    Replaces any handler the root logger had, like `logging.basicConfig(force=True)`.
    """
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _add_extra_fields],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _key_order,
            mask_event_dict,  # last before rendering: nothing unmasked can be added after it
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.disabled = False  # a library's dictConfig may have disabled or muted it
        logger.setLevel(logging.NOTSET)

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def configured_log_format() -> LogFormat:
    """`log_format` as the environment and `AMNEX_CONFIG_FILE` set it, for a command that sets
    up logging before it loads its settings; "text" when they do not load (the command then
    loads them itself and reports why)."""
    try:
        return Settings().log_format
    except (ValueError, OSError):  # pydantic's ValidationError and TOML errors are ValueErrors
        return "text"


def _add_extra_fields(
    _logger: WrappedLogger, _method_name: str, event_dict: EventDict
) -> EventDict:
    """The `extra={...}` fields of a stdlib record, as event dict keys (masked later)."""
    record: logging.LogRecord | None = event_dict.get("_record")
    if record is not None:
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                event_dict.setdefault(key, value)
    return event_dict


def _key_order(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """Time, level, logger and event first, the context after them: lines read alike."""
    ordered: dict[str, Any] = {key: event_dict[key] for key in _FIRST_KEYS if key in event_dict}
    ordered.update((key, value) for key, value in event_dict.items() if key not in ordered)
    return ordered
