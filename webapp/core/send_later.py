"""Send later and undo: when a submitted message may first be claimed, and its cancellation.

A message waits before any sender may claim it: MAILSENDER_UNDO_SECONDS after it was submitted
(the undo hold, for every message submitted through the API or Compose, an administrator's
too), and until its `send_at` when its author asked for one. It is stored as queued, with that
moment both as its queue time and as its `retry_at`: the claim takes a queued message only once
its retry_at has passed (scheduler/claims.py), on the database's clock. Until then it is shown
as scheduled, and its author or an administrator may cancel it. A customer's new message on
the case cancels the replies scheduled on it (outbox.record_incoming): they answer what the
customer has said since.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import and_, select, update

from . import audit
from .clock import db_now, iso, utcnow
from .database import db
from .logs import log_after_commit
from .models import Case, IncomingMessage, MessageRecipient, OutgoingMessage, User
from .refusal import Refusal
from .states import (
    CANCELLED,
    QUEUED,
    RCPT_CANCELLED,
    RCPT_DEFERRED,
    RCPT_PENDING,
    RCPT_UNCLEAR,
    REMOVED,
    REPLY,
    SENDING,
)

log = logging.getLogger("mailsender.outbox")

# How far ahead a message may be scheduled.
SEND_AT_MAX_AHEAD = timedelta(days=30)
# A send_at this much in the past is taken as "now": the caller's clock may lag ours, or the
# request may have waited on the way.
SEND_AT_PAST_TOLERANCE = timedelta(minutes=5)
# A cancelled message's recipients were never sent to; those already settled stay as they are.
_OPEN_RECIPIENTS = (RCPT_PENDING, RCPT_DEFERRED, RCPT_UNCLEAR)


class CancelRefused(Refusal):
    """The message cannot be cancelled: 404 for one the user may not see, 409 once a sender may
    claim it (or it has left, or ended otherwise)."""


def undo_seconds() -> float:
    return max(0.0, float(current_app.config["MAILSENDER_UNDO_SECONDS"]))


def parse_send_at(value, errors: dict, now: datetime | None = None) -> datetime | None:
    """The moment `value` (ISO 8601 with its offset) names, in UTC; None for none asked. A value
    that is no such moment, lies in the past beyond the tolerance or more than 30 days ahead
    puts its reason in errors["send_at"]."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        errors["send_at"] = "A time in ISO 8601 with its offset is expected, as 2030-01-31T09:00:00+01:00."
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        if moment.tzinfo is None or moment.utcoffset() is None:
            errors["send_at"] = "The time needs its offset from UTC, as 2030-01-31T09:00:00+01:00 or …Z."
            return None
        moment = moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        errors["send_at"] = "This is not a time in ISO 8601, as 2030-01-31T09:00:00+01:00."
        return None
    now = now or utcnow()
    if moment < now - SEND_AT_PAST_TOLERANCE:
        errors["send_at"] = "This time has passed."
    elif moment > now + SEND_AT_MAX_AHEAD:
        errors["send_at"] = f"At most {SEND_AT_MAX_AHEAD.days} days ahead."
    return moment


def not_before(send_at: datetime | None, now: datetime | None = None) -> datetime | None:
    """When a message submitted now, asked for `send_at`, may first be claimed: the end of the
    undo hold or send_at, whichever is later; None when nothing holds it."""
    now = now or utcnow()
    hold = undo_seconds()
    moments = ([now + timedelta(seconds=hold)] if hold > 0 else []) + ([send_at] if send_at else [])
    later = max(moments, default=None)
    return later if later is not None and later > now else None


def seconds_left(message: OutgoingMessage, now: datetime | None = None) -> float:
    """How long the message may still be cancelled (0: no longer)."""
    if not message.is_scheduled:
        return 0.0
    return max(0.0, (message.retry_at - (now or utcnow())).total_seconds())


def _still_held():
    """A message no sender may claim yet, on the database's clock, as the claim reads it."""
    return and_(OutgoingMessage.status == QUEUED, OutgoingMessage.retry_at.is_not(None),
                OutgoingMessage.retry_at > db_now())


def _settle(message_ids: list[int], reason: str) -> None:
    """Marks the open recipients of cancelled messages as never sent to."""
    db.session.execute(
        update(MessageRecipient)
        .where(MessageRecipient.message_id.in_(message_ids), MessageRecipient.status.in_(_OPEN_RECIPIENTS))
        .values(status=RCPT_CANCELLED, text=reason)
        .execution_options(synchronize_session=False))


def cancel(actor: User, message: OutgoingMessage) -> OutgoingMessage:
    """Cancels a message the actor may act on, while no sender may claim it yet; audits it (a
    refusal too) and commits. One conditional UPDATE: a sender claiming the message at the same
    moment either comes first (and the cancel is refused) or finds it cancelled."""
    by = "its author" if actor.id == message.user_id else f"{actor.username} (administrator)"
    reason = f"Cancelled by {by} before it was sent."
    result = db.session.execute(
        update(OutgoingMessage)
        .where(OutgoingMessage.id == message.id, _still_held())
        .values(status=CANCELLED, finished_at=utcnow(), retry_at=None, last_error=reason)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        db.session.rollback()
        db.session.refresh(message)
        why = _why_not_cancellable(message)
        audit.record(actor, "message.cancel.refused", partition_id=message.partition_id, target=message,
                     status=message.status, reason=why)
        db.session.commit()
        raise CancelRefused(409, why)
    _settle([message.id], reason)
    _unanswer(message)
    audit.record(actor, "message.cancel", partition_id=message.partition_id, target=message,
                 send_at=iso(message.send_at))
    log_after_commit(db.session, log, "message cancelled", message_id=message.id, partition=message.partition_id,
                     status=CANCELLED, by=actor.username)
    db.session.commit()
    db.session.expire(message)
    db.session.refresh(message)
    return message


def _unanswer(message: OutgoingMessage) -> None:
    """An undone reply leaves its incoming message unanswered again, unless another reply to it
    still stands. (Answered in training mode stays so: that rule has no undo.)"""
    if message.kind != REPLY or message.incoming_id is None:
        return
    other = db.session.scalar(select(OutgoingMessage.id).where(
        OutgoingMessage.case_id == message.case_id, OutgoingMessage.incoming_id == message.incoming_id,
        OutgoingMessage.kind == REPLY, OutgoingMessage.id != message.id,
        OutgoingMessage.status.not_in((CANCELLED, REMOVED))).limit(1))
    if other is None:
        db.session.execute(update(IncomingMessage).where(IncomingMessage.id == message.incoming_id)
                           .values(answered_at=None).execution_options(synchronize_session=False))


def _why_not_cancellable(message: OutgoingMessage) -> str:
    if message.status == QUEUED:
        return f"Message {message.id} has been handed to the senders: it can no longer be cancelled."
    if message.status == SENDING:
        return f"Message {message.id} is being sent right now: it can no longer be cancelled."
    if message.status == CANCELLED:
        return f"Message {message.id} is cancelled already."
    return f"A {message.status} message cannot be cancelled: only one whose time has not come can."


def cancel_scheduled_replies(actor: User | str, case: Case, incoming: IncomingMessage) -> list[int]:
    """Cancels the replies scheduled (send_at) on the case that no sender may claim yet: the
    customer has written again since. Adds the change and its audit to the session; the caller
    commits. Returns their ids."""
    reason = (f"Cancelled: the customer wrote again on case {case.tracking_id} (incoming message "
              f"{incoming.id}, {incoming.received_at:%Y-%m-%d %H:%M:%S} UTC) before this scheduled reply went "
              "out. Answer their new message.")
    # Found by the case's index first, then cancelled each under the claim's own condition.
    candidates = {message.id: message for message in db.session.scalars(select(OutgoingMessage).where(
        OutgoingMessage.case_id == case.id, OutgoingMessage.status == QUEUED,
        OutgoingMessage.kind == REPLY, OutgoingMessage.send_at.is_not(None)))}
    if not candidates:
        return []
    cancelled = sorted(row[0] for row in db.session.execute(
        update(OutgoingMessage)
        .where(OutgoingMessage.id.in_(list(candidates)), _still_held())
        .values(status=CANCELLED, finished_at=utcnow(), retry_at=None, last_error=reason)
        .returning(OutgoingMessage.id)
        .execution_options(synchronize_session=False)))
    if cancelled:
        _settle(cancelled, reason)
        for message_id in cancelled:
            audit.record(actor, "message.cancel", partition_id=case.partition_id, target=candidates[message_id],
                         cause="the customer wrote again", incoming_id=incoming.id)
            log_after_commit(db.session, log, "message cancelled", message_id=message_id, partition=case.partition_id,
                             status=CANCELLED, cause="the customer wrote again", incoming_id=incoming.id)
    for message in candidates.values():
        db.session.expire(message)
    return cancelled
