"""An administrator's actions on queued messages (the Monitor section and the API).

Remove: to `removed`, from any state but `sent` and a `sending` under a live lease; the row
stays in the database. Requeue: `failed`, `deferred`, `removed` or `training` back to `queued`,
with its lifetime and attempts counted afresh and only its non-accepted recipients pending
again. A `held` message (its outcome unclear: the server may have it) takes the two actions that
decide it: Send again (back to `queued`, its unclear recipients pending, the same Message-ID)
and Mark as sent (`sent`, its unclear recipients accepted, saying who marked them). Requeue does
not take it: sending it again is a decision of its own, made with Send again.

Each is one conditional UPDATE, so a sender claiming the message at the same moment either comes
first (and the action is refused) or finds it changed. Each writes an audit entry, a refused one
too ("message.remove.refused"), naming the state that forbade it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import or_, select, update

from webapp.core import audit
from webapp.core.clock import lifetime_end, utcnow
from webapp.core.database import db
from webapp.core.directory.lookups import get_in_partition
from webapp.core.logs import log_after_commit
from webapp.core.models import MessageRecipient, OutgoingMessage, User
from webapp.core.refusal import Refusal
from webapp.core.states import (
    DEFERRED,
    FAILED,
    HELD,
    QUEUED,
    RCPT_ACCEPTED,
    RCPT_PENDING,
    RCPT_UNCLEAR,
    REMOVED,
    SENDING,
    SENT,
    TRAINING,
)

from .claims import lease_ran_out

log = logging.getLogger("mailsender.actions")

REQUEUE_FROM = (FAILED, DEFERRED, REMOVED, TRAINING)
# Besides these, a `sending` message whose lease ran out (its sender is gone) may be removed.
REMOVE_FROM = (QUEUED, DEFERRED, FAILED, TRAINING, HELD)

REMOVE = "remove"
REQUEUE = "requeue"
SEND_AGAIN = "send_again"
MARK_SENT = "mark_sent"


class ActionRefused(Refusal):
    """The action cannot be done: 404 for an unknown id, 409 where the state forbids it."""


def _removable():
    return or_(OutgoingMessage.status.in_(REMOVE_FROM), lease_ran_out())


def _find(partition_id: int, message_id) -> OutgoingMessage:
    message = get_in_partition(OutgoingMessage, message_id, partition_id)
    if message is None:
        raise ActionRefused(404, "No such message.")
    return message


def found_in_partition(partition_id: int, message_ids: list[int]) -> set[int]:
    """Which of the ids are messages of the partition: a removal is confirmed only for those."""
    if not message_ids:
        return set()
    return set(db.session.scalars(select(OutgoingMessage.id).where(
        OutgoingMessage.partition_id == partition_id, OutgoingMessage.id.in_(message_ids))))


def remove(actor: User | str, partition_id: int, message_id) -> OutgoingMessage:
    """Marks the message removed (kept in the database), audits it and commits; answers the message."""
    message = _find(partition_id, message_id)
    before = message.status
    result = db.session.execute(
        update(OutgoingMessage)
        .where(OutgoingMessage.id == message.id, _removable())
        .values(status=REMOVED, claim_owner=None, lease_until=None, retry_at=None, finished_at=utcnow())
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        _refuse(actor, partition_id, REMOVE, message, _why_not_removable)
    audit.record(actor, "message.remove", partition_id=partition_id, target=message, previous_status=before)
    _log(message, partition_id, REMOVED, REMOVE, actor, before)
    db.session.commit()
    db.session.refresh(message)
    return message


def _why_not_removable(message: OutgoingMessage) -> str:
    if message.status == REMOVED:
        return f"Message {message.id} is removed already."
    if message.status == SENDING:
        return f"Message {message.id} is being sent right now; it cannot be removed."
    return f"A {message.status} message cannot be removed."


def _why_not_requeueable(message: OutgoingMessage) -> str:
    if message.status == HELD:
        return (f"Message {message.id} is held for review: the server may have it. Choose Send again or "
                "Mark as sent.")
    return (f"A {message.status} message cannot be requeued; only failed, deferred, removed or training "
            "ones can.")


def _why_not_held(message: OutgoingMessage) -> str:
    return f"Message {message.id} is {message.status}, not held for review; only a held message can be."


def _refuse(actor, partition_id: int, action: str, message: OutgoingMessage, why) -> None:
    """Undoes the attempt, audits the refusal (an administrator tried to act) and raises 409."""
    db.session.rollback()
    db.session.refresh(message)
    reason = why(message)
    audit.record(actor, f"message.{action}.refused", partition_id=partition_id, target=message,
                 status=message.status, reason=reason)
    db.session.commit()
    raise ActionRefused(409, reason)


def requeue(actor: User | str, partition_id: int, message_id) -> OutgoingMessage:
    """Puts the message back in the queue as if newly queued, audits it and commits; answers it.

    The Message-ID and the recipients already accepted stay as they were: a requeue never sends
    to anyone twice.
    """
    message = _find(partition_id, message_id)
    before = message.status
    _queue_again(actor, partition_id, REQUEUE, message, OutgoingMessage.status.in_(REQUEUE_FROM),
                 MessageRecipient.status != RCPT_ACCEPTED, _why_not_requeueable)
    audit.record(actor, "message.requeue", partition_id=partition_id, target=message, previous_status=before)
    _log(message, partition_id, QUEUED, REQUEUE, actor, before)
    return _committed(message)


def _queue_again(actor, partition_id: int, action: str, message: OutgoingMessage, allowed, reopened, why,
                 **values) -> None:
    """The queue step that Requeue and Send again share: the message queued as if new (lifetime,
    age and attempts counted afresh), if `allowed` still holds, else refused; its recipients that
    match `reopened` pending again. The caller audits and commits."""
    now = utcnow()
    result = db.session.execute(
        update(OutgoingMessage)
        .where(OutgoingMessage.id == message.id, allowed)
        .values(status=QUEUED, queued_at=now, expires_at=lifetime_end(now), retry_at=None, finished_at=None,
                claim_owner=None, lease_until=None, attempt_count=0, **values)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        _refuse(actor, partition_id, action, message, why)
    db.session.execute(
        update(MessageRecipient)
        .where(MessageRecipient.message_id == message.id, reopened)
        .values(status=RCPT_PENDING, code=None, text=None)
        .execution_options(synchronize_session=False))


def _committed(message: OutgoingMessage) -> OutgoingMessage:
    db.session.commit()
    db.session.expire(message)
    db.session.refresh(message)
    return message


def send_again(actor: User | str, partition_id: int, message_id) -> OutgoingMessage:
    """Sends a held message once more, audits it and commits; answers it.

    Its unclear recipients are pending again, with the same Message-ID and bytes (a receiver that
    got the first copy can tell the second is the same message). Its lifetime and the monitor's
    age count afresh, as after a requeue; its unclear_count stays, so a further unclear outcome
    holds it again rather than retrying.
    """
    message = _find(partition_id, message_id)
    # Held again after this, it is news: the monitor reports it again (stuck_notified_at).
    _queue_again(actor, partition_id, SEND_AGAIN, message, OutgoingMessage.status == HELD,
                 MessageRecipient.status == RCPT_UNCLEAR, _why_not_held, last_error=None, stuck_notified_at=None)
    audit.record(actor, "message.send_again", partition_id=partition_id, target=message, previous_status=HELD)
    _log(message, partition_id, QUEUED, SEND_AGAIN, actor, HELD)
    return _committed(message)


def mark_sent(actor: User | str, partition_id: int, message_id) -> OutgoingMessage:
    """Settles a held message as sent (an administrator found the server had it), audits it and
    commits; answers it. Its unclear recipients become accepted, their text saying who said so."""
    message = _find(partition_id, message_id)
    result = db.session.execute(
        update(OutgoingMessage)
        .where(OutgoingMessage.id == message.id, OutgoingMessage.status == HELD)
        .values(status=SENT, finished_at=utcnow(), retry_at=None, claim_owner=None, lease_until=None,
                last_error=None)
        .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        _refuse(actor, partition_id, MARK_SENT, message, _why_not_held)
    db.session.execute(
        update(MessageRecipient)
        .where(MessageRecipient.message_id == message.id, MessageRecipient.status == RCPT_UNCLEAR)
        .values(status=RCPT_ACCEPTED, text=f"marked as sent by {_name(actor)}")
        .execution_options(synchronize_session=False))
    audit.record(actor, "message.mark_sent", partition_id=partition_id, target=message, previous_status=HELD)
    _log(message, partition_id, SENT, MARK_SENT, actor, HELD)
    return _committed(message)


def _log(message: OutgoingMessage, partition_id: int, status: str, action: str, actor, before: str) -> None:
    log_after_commit(db.session, log, f"message {status}", message_id=message.id, partition=partition_id,
                     status=status, previous_status=before, action=action, by=_name(actor))


def _name(actor: User | str) -> str:
    return actor.username if isinstance(actor, User) else str(actor)


@dataclass
class Outcome:
    id: int | str
    ok: bool
    status: int
    message: str


def act_on(actor: User | str, partition_id: int, action: str, message_ids: list) -> list[Outcome]:
    """Does the action (remove, requeue, send again, mark as sent) on each of the messages on its
    own; one Outcome per id, in order."""
    do = {REMOVE: remove, REQUEUE: requeue, SEND_AGAIN: send_again, MARK_SENT: mark_sent}[action]
    outcomes = []
    for message_id in message_ids:
        try:
            done = do(actor, partition_id, message_id)
            outcomes.append(Outcome(done.id, True, 200, f"Message {done.id} is {done.status} now."))
        except ActionRefused as refused:
            outcomes.append(Outcome(message_id, False, refused.status, refused.message))
    return outcomes
