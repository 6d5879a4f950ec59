"""The process's log: one JSON object a line (or plain text for a terminal), and the context keys.

Configured once where a process starts serving (`flask serve`, `demo`) and in the bookkeeping
process, never at import or in create_app: pytest's caplog, and an embedding program, keep the
logging they set up.

A line about a message carries its context as keys of their own (CONTEXT), passed with
`extra=` or through `context_logger`, so that a log store can select every line of one message,
partition, node or sender:

    log = context_logger("mailsender.delivery", node="n1")
    log.info("message sent", extra={"message_id": 7, "partition": 1})
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import event
from sqlalchemy.orm import Session

FORMATS = ("json", "text")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The keys a line about a message, claim or sender carries, where they apply.
CONTEXT = ("message_id", "partition", "node", "sender")
# The attributes every LogRecord has; whatever else a record holds came with `extra=`.
_STANDARD = frozenset(RESERVED_ATTRS) | {"message", "asctime", "taskName"}


class ContextAdapter(logging.LoggerAdapter):
    """A logger whose lines carry fixed context keys, merged with each call's own `extra=`
    (the stdlib adapter of Python 3.11 replaces a call's extra instead)."""

    def process(self, msg, kwargs):
        given = kwargs.get("extra")
        kwargs["extra"] = {**self.extra, **given} if given else self.extra
        return msg, kwargs


def context_logger(name: str, **context) -> ContextAdapter:
    return ContextAdapter(logging.getLogger(name), context)


_AFTER_COMMIT = "mailsender.logs.after_commit"


def log_after_commit(session, log: logging.Logger | logging.LoggerAdapter, message: str, **extra) -> None:
    """Logs `message` at INFO once the session's transaction commits, and never if it rolls back:
    a state change is told only once it is true (a queued message whose request fails is not)."""
    session.info.setdefault(_AFTER_COMMIT, []).append((log, message, extra))


@event.listens_for(Session, "after_commit")
def _committed(session) -> None:
    for log, message, extra in session.info.pop(_AFTER_COMMIT, ()):
        log.info(message, extra=extra)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def extras(record: logging.LogRecord) -> dict:
    """What the record was given with `extra=`, in the order given."""
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD}


class TextFormatter(logging.Formatter):
    """A line for a person at a terminal: time, level, logger, the message, then key=value."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        given = extras(record)
        if not given:
            return line
        head, _, tail = line.partition("\n")  # a traceback stays below the line's own keys
        keys = " ".join(f"{key}={value}" for key, value in given.items())
        return f"{head} {keys}" + (f"\n{tail}" if tail else "")


def json_formatter() -> logging.Formatter:
    """python-json-logger: the record's `extra=` keys become keys of the object as they are."""
    # "time": ISO 8601 in UTC, as a log store parses it whatever the host's zone.
    return JsonFormatter("%(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"},
                         timestamp="time", json_ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"MAILSENDER_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {log_format!r}")
    return json_formatter() if log_format == "json" else TextFormatter()


class BatchedHandler(logging.StreamHandler):
    """Lines below WARNING wait in the stream's buffer until the caller flushes, once a batch of
    them is logged; a warning or an error goes out at once. For a process that logs a line per
    message on its hot path (the bookkeeper): a write to standard error per line cost about a
    sixth of the line's time. A process that dies loses the lines of its last batch at most."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure_logging(config: Mapping, stream=None, *, batched: bool = False) -> logging.Handler:
    """Sends every logger's records to `stream` (standard error) in the configured format
    (MAILSENDER_LOG_FORMAT) from the configured level up (MAILSENDER_LOG_LEVEL). Called again, it
    replaces its own handler and leaves any other alone. Returns the handler. `batched`: a
    BatchedHandler on a buffered copy of standard error (the caller flushes it)."""
    level = str(config["MAILSENDER_LOG_LEVEL"]).upper()
    if level not in LEVELS:
        raise ValueError(f"MAILSENDER_LOG_LEVEL must be one of {', '.join(LEVELS)}, not {level!r}")
    if batched:
        if stream is None:
            stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1 << 16, encoding="utf-8",
                               errors="backslashreplace")
        handler = BatchedHandler(stream)
    else:
        handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter(str(config["MAILSENDER_LOG_FORMAT"]).lower()))
    handler._mailsender = True
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_mailsender", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler tells every run of every job at INFO: each sender's wake, every second or so.
    logging.getLogger("apscheduler.executors").setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
    # Flask's own handler on the app's logger would print its lines a second time, as text.
    from flask.logging import default_handler

    for name in list(logging.root.manager.loggerDict):
        existing = logging.root.manager.loggerDict[name]
        if isinstance(existing, logging.Logger) and default_handler in existing.handlers:
            existing.removeHandler(default_handler)
    return handler
