"""SMTP replies and what they mean for a recipient: pure functions, no sockets."""
from __future__ import annotations

from webapp.core.states import RCPT_ACCEPTED, RCPT_DEFERRED, RCPT_FAILED

# A reply longer than this (a server that is not speaking SMTP) drops the connection.
MAX_REPLY_BYTES = 64 * 1024
ACCEPTED, DEFERRED, FAILED = "accepted", "deferred", "failed"


def _status(code: int | None) -> str:
    return RCPT_FAILED if code is not None and 500 <= code < 600 else RCPT_DEFERRED


def _outcome(status: str) -> str:
    return {RCPT_ACCEPTED: ACCEPTED, RCPT_DEFERRED: DEFERRED, RCPT_FAILED: FAILED}[status]
