"""What a claimed message is, what its SMTP transactions did, and what becomes of it.

Pure: no database, no configuration, no sockets. `settle` turns a message and its transactions
into its new state and the rows to write; `Backoff` says how long a deferred message waits.
The senders build the transactions (scheduler/smtp), the bookkeeper settles and writes them
(scheduler/bookkeeper.py, scheduler/store.py).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from webapp.core.states import (
    ATTEMPT_UNTRIED,
    DEFERRED,
    FAILED,
    LOG_ROLE,
    RCPT_ACCEPTED,
    RCPT_DEFERRED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_TRAINING,
    SENT,
    TRAINING,
)

# Recipients a (re)try goes to; the others are settled.
UNSETTLED = (RCPT_PENDING, RCPT_DEFERRED)


@dataclass
class Recipient:
    id: int
    address: str
    role: str  # to, cc, bcc, or log (the Bcc log address)
    status: str
    code: int | None = None
    text: str | None = None


@dataclass
class Claimed:
    """A claimed message, with what the SMTP path needs and nothing it does not."""

    id: int
    envelope_from: str
    data: bytes | None  # the rendered bytes; None once handed to the bookkeeper, which needs none
    rendered_version: int | None
    expires_at: datetime | None
    attempt_count: int
    recipients: list[Recipient] = field(default_factory=list)

    @property
    def to_send(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status in UNSETTLED]


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


@dataclass(frozen=True)
class Backoff:
    """The wait before a deferred message's next try: `first`, doubling with each deferral, at
    most `cap`. DESIGN.md: first 1 min, doubling, at most 1 h (product minutes)."""

    first: timedelta
    cap: timedelta
    jitter: float = 0.0  # each wait is lengthened by up to this share, at random

    @classmethod
    def configured(cls, config) -> "Backoff":
        """The instance's backoff (MAILSENDER_BACKOFF_*, in MAILSENDER_MINUTE_SECONDS)."""
        minute = float(config["MAILSENDER_MINUTE_SECONDS"])
        return cls(timedelta(seconds=config["MAILSENDER_BACKOFF_FIRST_MINUTES"] * minute),
                   timedelta(seconds=config["MAILSENDER_BACKOFF_MAX_MINUTES"] * minute),
                   float(config.get("MAILSENDER_BACKOFF_JITTER", 0.0)))

    def wait(self, deferrals: int) -> timedelta:
        """The wait after the message's `deferrals`-th deferral (1 for the first)."""
        # In float seconds, and the doublings bounded: a timedelta overflows long before 2**64.
        doublings = min(max(0, deferrals - 1), 64)
        return timedelta(seconds=min(self.cap.total_seconds(), self.first.total_seconds() * 2.0 ** doublings))

    def retry_wait(self, deferrals: int, draw: Callable[[], float] = random.random) -> timedelta:
        """wait(deferrals), lengthened by a random share of at most `jitter`: never shorter."""
        return self.wait(deferrals) * (1.0 + self.jitter * draw())


def settle(message: Claimed, transactions: list[Transaction], now: datetime, backoff: Backoff) -> Settled:
    """Applies the transactions' replies to the message's recipients and decides its state.

    A message is sent once every recipient is settled and at least one was accepted; failed
    when every recipient is settled and none was; deferred while any waits for a retry (until
    its lifetime ends, then failed). The log recipient never decides: it is retried along
    with the others, but alone it holds nothing back.

    One delivery is one attempt, however many transactions it took (a 452 splits the list at
    once). An ATTEMPT_UNTRIED transaction says why the message waits, but is no attempt: it
    is not kept among the transactions to write, and the wait it gets is the next one's.
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
    tried = [t for t in transactions if t.outcome != ATTEMPT_UNTRIED]
    result = Settled(message=message, status=SENT, transactions=tried, last_error=last_error)
    if statuses & set(UNSETTLED):
        deferrals = message.attempt_count + (1 if tried else 0)
        if message.expires_at is not None and now >= message.expires_at:
            result.status = FAILED
            for recipient in message.recipients:
                if recipient.status in UNSETTLED:
                    recipient.status = RCPT_FAILED
                    recipient.text = f"lifetime ended; last reply: {recipient.text or 'none'}"
                    changed[recipient.id] = recipient
            result.last_error = f"lifetime ended; last reply: {last_error or 'none'}"
        else:
            result.status = DEFERRED
            result.retry_at = now + backoff.retry_wait(deferrals)
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
