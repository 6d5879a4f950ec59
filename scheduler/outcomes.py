"""What an SMTP transaction did, and what becomes of a message: settle and backoff."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app

from webapp.core.clock import minutes
from webapp.core.states import DEFERRED, FAILED, LOG_ROLE, RCPT_ACCEPTED, RCPT_FAILED, RCPT_TRAINING, SENT, TRAINING

from .claims import _UNSETTLED, Claimed, Recipient


@dataclass
class RecipientReply:
    """One recipient's answer in one SMTP transaction."""

    address: str
    status: str  # RCPT_ACCEPTED, RCPT_DEFERRED or RCPT_FAILED
    code: int | None
    text: str


@dataclass
class Transaction:
    """One SMTP transaction (or the attempt at one) for one message: a DeliveryAttempt row."""

    outcome: str  # accepted, deferred, failed
    code: int | None
    detail: str
    recipients: list[RecipientReply]


@dataclass
class Settled:
    """What became of a claimed message: its new state and the rows to write."""

    message: Claimed
    status: str
    transactions: list[Transaction]
    # Whose claim it is: moved only while this owner still holds it (default: record_outcomes' owner).
    owner: str | None = None
    retry_at: datetime | None = None
    last_error: str | None = None
    changed: list[Recipient] = field(default_factory=list)


def backoff(deferrals: int) -> timedelta:
    """The wait before retry number `deferrals`: first, doubling, capped (product minutes)."""
    config = current_app.config
    first = config["MAILSENDER_BACKOFF_FIRST_MINUTES"]
    cap = config["MAILSENDER_BACKOFF_MAX_MINUTES"]
    return minutes(min(cap, first * 2 ** max(0, deferrals - 1)))


def settle(message: Claimed, transactions: list[Transaction], now: datetime) -> Settled:
    """Applies the transactions' replies to the message's recipients and decides its state.

    A message is sent once every recipient is settled and at least one was accepted; failed
    when every recipient is settled and none was; deferred while any waits for a retry (until
    its lifetime ends, then failed). The log recipient never decides: it is retried along
    with the others, but alone it holds nothing back.
    """
    by_address = {r.address.lower(): r for r in message.to_send}
    changed: dict[int, Recipient] = {}
    last_error = None
    for transaction in transactions:
        for reply in transaction.recipients:
            recipient = by_address.get(reply.address.lower())
            if recipient is None:
                continue
            recipient.status, recipient.code, recipient.text = reply.status, reply.code, reply.text
            changed[recipient.id] = recipient
            if reply.status != RCPT_ACCEPTED:
                last_error = f"{reply.code or ''} {reply.text}".strip()

    deciding = [r for r in message.recipients if r.role != LOG_ROLE] or message.recipients
    statuses = {r.status for r in deciding}
    result = Settled(message=message, status=SENT, transactions=transactions, last_error=last_error)
    if statuses & set(_UNSETTLED):
        deferrals = message.attempt_count + len(transactions)
        if message.expires_at is not None and now >= message.expires_at:
            result.status = FAILED
            for recipient in message.recipients:
                if recipient.status in _UNSETTLED:
                    recipient.status = RCPT_FAILED
                    recipient.text = f"lifetime ended; last reply: {recipient.text or 'none'}"
                    changed[recipient.id] = recipient
            result.last_error = f"lifetime ended; last reply: {last_error or 'none'}"
        else:
            result.status = DEFERRED
            result.retry_at = now + backoff(deferrals)
            if message.expires_at is not None:
                result.retry_at = min(result.retry_at, message.expires_at)
    elif RCPT_ACCEPTED in statuses:
        result.status = SENT
    elif RCPT_TRAINING in statuses:
        result.status = TRAINING
    else:
        result.status = FAILED
    result.changed = list(changed.values())
    return result
