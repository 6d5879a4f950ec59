"""Remove and Requeue: which states allow them, what they change, and the audit entry each writes."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from scheduler import message_actions
from scheduler.message_actions import ActionRefused
from tests.monitor.conftest import ago, audit_actions, later, queued
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.models import AuditEvent, MessageRecipient, OutgoingMessage, User
from webapp.core.states import (
    DEFERRED,
    FAILED,
    QUEUED,
    RCPT_ACCEPTED,
    RCPT_DEFERRED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_TRAINING,
    REMOVED,
    SENDING,
    SENT,
    TRAINING,
)

pytestmark = pytest.mark.databases

# (state, extra columns) of messages a Remove may take.
# Computed when the module is collected: a day ahead, so that it is still live however long
# the suite runs before these tests.
LIVE_LEASE_UNTIL = later(24 * 3600)
REMOVABLE = [
    (QUEUED, {}),
    (DEFERRED, {"retry_at": later(60), "attempt_count": 1}),
    (FAILED, {"last_error": "550 5.1.1 No such user"}),
    (TRAINING, {}),
    (SENDING, {"claim_owner": "gone/1/0", "lease_until": ago(10)}),  # its sender is gone
]
NOT_REMOVABLE = [
    (SENT, {}),
    (SENDING, {"claim_owner": "live/1/0", "lease_until": LIVE_LEASE_UNTIL}),
    (REMOVED, {}),
]
REQUEUEABLE = [FAILED, DEFERRED, REMOVED, TRAINING]
NOT_REQUEUEABLE = [
    (QUEUED, {}),
    (SENDING, {"claim_owner": "live/1/0", "lease_until": LIVE_LEASE_UNTIL}),
    (SENT, {}),
]


def _admin(seed):
    return db.session.get(User, seed["admin_id"])


def _message(app, message_id) -> OutgoingMessage:
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        message.recipients  # noqa: B018  (loaded before the session ends)
        db.session.expunge_all()
        return message


@pytest.mark.parametrize("status, values", REMOVABLE, ids=lambda v: v if isinstance(v, str) else "")
def test_remove_keeps_the_message_as_removed_and_audits_it(app, seed, status, values):
    [message_id] = queued(app, seed["partition_id"], 1, status=status, **values)
    with app.app_context():
        answered = message_actions.remove(_admin(seed), seed["partition_id"], message_id)
        assert answered.status == REMOVED
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "message.remove")).one()
        assert (event.actor, event.target_id, event.details["previous_status"]) == ("admin", message_id, status)
    removed = _message(app, message_id)
    assert removed.status == REMOVED and removed.claim_owner is None and removed.lease_until is None


@pytest.mark.parametrize("action, status, values", [("remove", *refused) for refused in NOT_REMOVABLE] +
                         [("requeue", *refused) for refused in NOT_REQUEUEABLE],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_an_action_the_state_forbids_is_refused_with_409_and_the_refusal_is_audited(app, seed, action, status, values):
    [message_id] = queued(app, seed["partition_id"], 1, status=status, **values)
    with app.app_context():
        with pytest.raises(ActionRefused) as refused:
            getattr(message_actions, action)(_admin(seed), seed["partition_id"], message_id)
    assert refused.value.status == 409
    assert _message(app, message_id).status == status
    assert audit_actions(app, message_id) == [f"message.{action}.refused"]


@pytest.mark.parametrize("status", REQUEUEABLE)
def test_requeue_queues_afresh_and_audits_it(app, seed, status):
    pid = seed["partition_id"]
    [message_id] = queued(app, pid, 1, status=status, queued_at=ago(3600), expires_at=ago(10),
                          retry_at=later(60), attempt_count=4, finished_at=ago(20),
                          last_error="451 4.3.0 Try later")
    with app.app_context():
        before = utcnow()
        answered = message_actions.requeue(_admin(seed), pid, message_id)
        assert answered.status == QUEUED
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "message.requeue")).one()
        assert (event.target_id, event.details["previous_status"]) == (message_id, status)
    message = _message(app, message_id)
    lifetime = app.config["MAILSENDER_LIFETIME_MINUTES"] * app.config["MAILSENDER_MINUTE_SECONDS"]
    assert message.status == QUEUED and message.retry_at is None and message.finished_at is None
    assert message.queued_at >= before and message.attempt_count == 0
    assert (message.expires_at - before).total_seconds() == pytest.approx(lifetime, abs=5)


def test_requeue_makes_only_the_recipients_that_did_not_accept_pending_again(app, seed):
    pid = seed["partition_id"]
    [message_id] = queued(app, pid, 1, status=DEFERRED)
    outcomes = [(RCPT_ACCEPTED, 250, "OK"), (RCPT_DEFERRED, 451, "later"), (RCPT_FAILED, 550, "no"),
                (RCPT_TRAINING, None, "withheld")]
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        message.recipients = [MessageRecipient(address=f"r{n}@example.test", role="to", status=s, code=c, text=t)
                              for n, (s, c, t) in enumerate(outcomes)]
        db.session.commit()
        message_actions.requeue(_admin(seed), pid, message_id)
    recipients = [(r.status, r.code) for r in _message(app, message_id).recipients]
    assert recipients == [(RCPT_ACCEPTED, 250), (RCPT_PENDING, None), (RCPT_PENDING, None), (RCPT_PENDING, None)]


def test_another_partitions_message_is_not_found(app, seed):
    with app.app_context():
        other = create_partition("Other").id
        db.session.commit()
    [message_id] = queued(app, other, 1, status=FAILED)
    with app.app_context():
        for action in (message_actions.remove, message_actions.requeue):
            with pytest.raises(ActionRefused) as refused:
                action(_admin(seed), seed["partition_id"], message_id)
            assert refused.value.status == 404
    assert _message(app, message_id).status == FAILED
    assert audit_actions(app, message_id) == []

