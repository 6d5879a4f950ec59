"""What a claimed message is, what its SMTP transactions did, and what becomes of it.

Pure: no database, no configuration, no sockets. `settle` turns a message and its transactions
into its new state and the rows to write; `Backoff` says how long a deferred message waits.
The senders build the transactions (scheduler/smtp), the bookkeeper settles and writes them
(scheduler/bookkeeper.py, scheduler/store.py).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, NamedTuple

from webapp.core.states import (
    ANSWER_ACCEPTED,
    ANSWER_CONFIGURATION,
    ANSWER_MESSAGE_PERMANENT,
    ANSWER_QUOTA,
    ANSWER_RECIPIENT_PERMANENT,
    ANSWER_THROTTLED,
    ANSWER_TRANSIENT,
    ANSWER_UNCLEAR,
    ATTEMPT_UNTRIED,
    DEFERRED,
    FAILED,
    HELD,
    LOG_ROLE,
    RCPT_ACCEPTED,
    RCPT_DEFERRED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_TRAINING,
    RCPT_UNCLEAR,
    SENT,
    TRAINING,
)

# Recipients a (re)try goes to; the others are settled. An unclear one is retried only when
# the "After an unclear outcome" setting says so (settle decides; a held message is not claimed).
UNSETTLED = (RCPT_PENDING, RCPT_DEFERRED, RCPT_UNCLEAR)

# --- classes of answer ----------------------------------------------------------------------
# Where in a session an answer came (or failed to come): the class depends on it.
STAGE_CONNECT, STAGE_TLS, STAGE_EHLO, STAGE_AUTH = "connect", "tls", "ehlo", "auth"
STAGE_MAIL, STAGE_RCPT, STAGE_DATA, STAGE_END = "mail", "rcpt", "data", "end"
# The end-of-data line went out and the connection was lost (or timed out) before its reply.
STAGE_AFTER_END = "after_end"
# The TLS handshake failed (a certificate not trusted, no common protocol), or the OAuth2 token
# server refused the grant: no retry can mend either.
STAGE_HANDSHAKE, STAGE_TOKEN = "handshake", "token"

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_QUOTA_WORDS = re.compile(r"quota|daily|limit", re.IGNORECASE)
# "try again in 120 seconds", "retry after 5 minutes", "wait 1 hour": a provider's hint.
_HINT = re.compile(r"(?:in|after|wait)\s+(\d{1,6})\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
                   re.IGNORECASE)


class Answer(NamedTuple):
    """What a server's reply (or its silence) means: the class, and the provider's hinted wait."""

    kind: str
    hint_seconds: float | None = None


def enhanced_status(text: str | None) -> tuple[int, int, int] | None:
    """The RFC 3463 enhanced status code a reply's text begins with, as (class, subject, detail)."""
    match = _ENHANCED.match(text or "")
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def hinted_seconds(text: str | None) -> float | None:
    match = _HINT.search(text or "")
    if match is None:
        return None
    unit = match[2].lower()
    return int(match[1]) * (3600 if unit.startswith("h") else 60 if unit.startswith("m") else 1)


# The one table: every answer's class, tried top to bottom. Each row: a test of (stage, code,
# enhanced status, text) and the class it gives. The handling of each class is in settle (the
# message) and in the sender (the route: pause, hold, slow down).
_TABLE: tuple[tuple[Callable[[str, int | None, tuple | None, str], bool], str], ...] = (
    (lambda stage, code, esc, text: stage == STAGE_AFTER_END, ANSWER_UNCLEAR),
    (lambda stage, code, esc, text: stage in (STAGE_HANDSHAKE, STAGE_TOKEN), ANSWER_CONFIGURATION),
    (lambda stage, code, esc, text: code is not None and 200 <= code < 400, ANSWER_ACCEPTED),
    # Authentication refused or required, a tenant that forbids SMTP AUTH, a sender the login
    # may not send as: one setting is wrong, and every message would fail alike.
    (lambda stage, code, esc, text: code in (530, 534, 535, 538), ANSWER_CONFIGURATION),
    (lambda stage, code, esc, text: esc is not None and esc[0] == 5 and esc[1] == 7
     and esc[2] in (8, 9, 57, 60, 139) and stage in (STAGE_AUTH, STAGE_MAIL), ANSWER_CONFIGURATION),
    (lambda stage, code, esc, text: stage == STAGE_AUTH and code is not None and code >= 500, ANSWER_CONFIGURATION),
    (lambda stage, code, esc, text: stage in (STAGE_EHLO, STAGE_TLS) and code is not None and code >= 500,
     ANSWER_CONFIGURATION),
    # A daily sending limit: nothing more goes until it resets.
    (lambda stage, code, esc, text: esc == (5, 4, 5) or (esc is not None and esc[1:] == (2, 0)
                                                          and bool(_QUOTA_WORDS.search(text))), ANSWER_QUOTA),
    (lambda stage, code, esc, text: code in (421, 432) or (esc is not None and esc[0] == 4 and (
        esc[1] == 7 or esc[1:] in ((3, 2), (5, 3)))), ANSWER_THROTTLED),
    (lambda stage, code, esc, text: code is not None and 500 <= code < 600 and stage == STAGE_RCPT,
     ANSWER_RECIPIENT_PERMANENT),
    (lambda stage, code, esc, text: code is not None and 500 <= code < 600, ANSWER_MESSAGE_PERMANENT),
)


def classify(stage: str, code: int | None, text: str | None = "") -> Answer:
    """The class of an answer: `code` None for no reply at all (a timeout, a drop, a refused
    connection), which is transient except after the end of data."""
    text = text or ""
    esc = enhanced_status(text)
    for test, kind in _TABLE:
        if test(stage, code, esc, text):
            return Answer(kind, hinted_seconds(text) if kind in (ANSWER_THROTTLED, ANSWER_QUOTA) else None)
    return Answer(ANSWER_TRANSIENT)


# A recipient's status under each class.
RECIPIENT_STATUS = {
    ANSWER_ACCEPTED: RCPT_ACCEPTED,
    ANSWER_RECIPIENT_PERMANENT: RCPT_FAILED,
    ANSWER_MESSAGE_PERMANENT: RCPT_FAILED,
    ANSWER_THROTTLED: RCPT_DEFERRED,
    ANSWER_QUOTA: RCPT_DEFERRED,
    ANSWER_CONFIGURATION: RCPT_DEFERRED,
    ANSWER_TRANSIENT: RCPT_DEFERRED,
    ANSWER_UNCLEAR: RCPT_UNCLEAR,
}
# Classes that stop the route rather than the message: the sender pauses or holds the route.
ROUTE_FAULTS = (ANSWER_CONFIGURATION, ANSWER_QUOTA)


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
    unclear_count: int = 0  # unclear outcomes so far
    # "After an unclear outcome": retry once after this many seconds; None holds it for review.
    unclear_retry_seconds: float | None = None
    # When it joined the queue (a POSIX timestamp): where its delivery latency counts from.
    queued_at: float | None = None

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
    answer: str = ANSWER_TRANSIENT  # the class of the answer that decided it (ANSWER_*)
    hint_seconds: float | None = None  # a throttling or quota reply's hinted wait
    queue_id: str | None = None  # the server's id for what it accepted ("queued as 4F2A1")
    # Milliseconds each stage took: connect (when this transaction opened the session), commands
    # (MAIL to DATA's reply), end (the message and end of data to the reply).
    timings: dict | None = None


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
    # The end of its lifetime, moved on by a throttling wait, which does not use it up.
    expires_at: datetime | None = None
    unclear: bool = False  # this delivery's outcome was unclear (unclear_count grows by one)


@dataclass(frozen=True)
class Backoff:
    """The wait before a deferred message's next try: `first`, doubling with each deferral, at
    most `cap`. DESIGN.md: first 1 min, doubling, at most 1 h (product minutes)."""

    first: timedelta
    cap: timedelta
    jitter: float = 0.0  # each wait is lengthened by up to this share, at random
    minute_seconds: float = 60.0  # the product's minute, for waits given in real time
    # A throttled message waits at least this long, or the provider's hint if longer.
    throttle_minimum: timedelta = timedelta(minutes=5)
    quota_reset_hour: int = 0  # UTC hour at which a provider's daily quota resets

    @classmethod
    def configured(cls, config) -> "Backoff":
        """The instance's backoff (MAILSENDER_BACKOFF_*, in MAILSENDER_MINUTE_SECONDS)."""
        minute = float(config["MAILSENDER_MINUTE_SECONDS"])
        return cls(timedelta(seconds=config["MAILSENDER_BACKOFF_FIRST_MINUTES"] * minute),
                   timedelta(seconds=config["MAILSENDER_BACKOFF_MAX_MINUTES"] * minute),
                   float(config.get("MAILSENDER_BACKOFF_JITTER", 0.0)), minute,
                   timedelta(seconds=float(config["MAILSENDER_THROTTLE_MINUTES"]) * minute),
                   int(config["MAILSENDER_QUOTA_RESET_HOUR"]) % 24)

    def product(self, real_seconds: float) -> timedelta:
        """A wait a server gave in real time, on the product's clock (the same in production)."""
        return timedelta(seconds=real_seconds * self.minute_seconds / 60.0)

    def throttled_wait(self, hint_seconds: float | None) -> timedelta:
        return max(self.throttle_minimum, self.product(hint_seconds or 0))

    def quota_wait(self, now: datetime, hint_seconds: float | None) -> timedelta:
        """Until the quota resets: the provider's hint, else the next quota_reset_hour (UTC)."""
        if hint_seconds:
            return self.product(hint_seconds)
        reset = now.replace(hour=self.quota_reset_hour, minute=0, second=0, microsecond=0)
        if reset <= now:
            reset += timedelta(days=1)
        return self.product((reset - now).total_seconds())

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

    The class of the deciding answer sets the wait (see classify): a message refused for good
    fails whole; throttling waits at least the provider's hint, and moves the lifetime's end on
    by that wait; a quota waits for its reset; a configuration fault is due again at once (the
    sender pauses the route, which holds it); an unclear outcome is retried once after the
    message's unclear wait, else held for review, and is never failed by the lifetime (the
    server may have it).

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

    tried = [t for t in transactions if t.outcome != ATTEMPT_UNTRIED]
    answers = {t.answer for t in tried}
    if ANSWER_MESSAGE_PERMANENT in answers:
        refusal = next(t for t in tried if t.answer == ANSWER_MESSAGE_PERMANENT)
        for recipient in message.recipients:
            if recipient.status in UNSETTLED:
                recipient.status, recipient.code, recipient.text = RCPT_FAILED, refusal.code, refusal.detail
                changed[recipient.id] = recipient
    deciding = [r for r in message.recipients if r.role != LOG_ROLE] or message.recipients
    statuses = {r.status for r in deciding}
    result = Settled(message=message, status=SENT, transactions=tried, last_error=last_error,
                     expires_at=message.expires_at)
    unclear = [r for r in changed.values() if r.status == RCPT_UNCLEAR]
    if unclear:
        result.unclear = True
        if message.unclear_retry_seconds is None or message.unclear_count >= 1 or (
                message.expires_at is not None and now >= message.expires_at):
            result.status = HELD
            result.last_error = ("held for review: the connection was lost after the message was sent, so "
                                 "the server may have taken it; Send again or Mark as sent")
        else:
            result.status = DEFERRED
            result.retry_at = now + timedelta(seconds=message.unclear_retry_seconds)
            result.last_error = ("unclear: the connection was lost after the message was sent; it is sent "
                                 "once more, with the same Message-ID")
    elif statuses & set(UNSETTLED):
        deferrals = message.attempt_count + (1 if tried else 0)
        deciding_answer = next((t for t in tried if t.answer in (ANSWER_QUOTA, ANSWER_CONFIGURATION)), None) \
            or next((t for t in tried if t.answer == ANSWER_THROTTLED), None)
        kind = deciding_answer.answer if deciding_answer is not None else None
        if kind == ANSWER_THROTTLED:
            wait = backoff.throttled_wait(deciding_answer.hint_seconds)
            if result.expires_at is not None:
                result.expires_at += wait
        elif kind == ANSWER_QUOTA:
            wait = backoff.quota_wait(now, deciding_answer.hint_seconds)
            if result.expires_at is not None:
                result.expires_at += wait
        elif kind == ANSWER_CONFIGURATION:
            wait = timedelta(0)  # held by the route's pause, and due the moment it is lifted
        else:
            wait = backoff.retry_wait(deferrals)
        if kind is None and message.expires_at is not None and now >= message.expires_at:
            result.status = FAILED
            for recipient in message.recipients:
                if recipient.status in UNSETTLED:
                    recipient.status = RCPT_FAILED
                    recipient.text = f"lifetime ended; last reply: {recipient.text or 'none'}"
                    changed[recipient.id] = recipient
            result.last_error = f"lifetime ended; last reply: {last_error or 'none'}"
        else:
            result.status = DEFERRED
            result.retry_at = now + wait
            if kind is None and message.expires_at is not None:
                result.retry_at = min(result.retry_at, message.expires_at)
    elif RCPT_ACCEPTED in statuses:
        result.status = SENT
    elif RCPT_TRAINING in statuses:
        result.status = TRAINING
    else:
        result.status = FAILED
    result.changed = list(changed.values())
    return result
