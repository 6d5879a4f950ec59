"""Send again and Mark as sent for a message held for review (its outcome unclear), in the
engine's actions, the API and the Monitor section; held messages counted and reported as stuck;
and, end to end, a real SMTP server that drops the connection right after the end of data."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from scheduler import message_actions
from scheduler.message_actions import ActionRefused
from scheduler.monitor import definitions as monitor
from scheduler.monitor import rounds
from tests.conftest import add_other_partition, csrf_from
from tests.monitor.conftest import ago, audit_actions, later, queued
from tests.scheduler.conftest import configure, queue_messages, start, wait_until
from tests.smtp_servers import ScriptedSmtpServer
from webapp.core.database import db
from webapp.core.models import AuditEvent, DeliveryAttempt, MessageRecipient, OutgoingMessage, User
from webapp.core.states import (
    ANSWER_UNCLEAR,
    DEFERRED,
    FAILED,
    HELD,
    QUEUED,
    RCPT_ACCEPTED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_UNCLEAR,
    REMOVED,
    SENDING,
    SENT,
    UNCLEAR_HOLD,
)

pytestmark = pytest.mark.databases

HX = {"HX-Request": "true"}
HELD_ERROR = "held for review: the connection was lost after the message was sent"


@pytest.fixture
def app_config(app_config):
    # The monitor's e-mail would open connections of its own to the scripted server, whose faults
    # are counted by connection: the round test below runs a round itself.
    return {**app_config, "MAILSENDER_MONITOR": False}


def held(app, partition_id: int, count: int = 1, **values) -> list[int]:
    """Messages as the engine leaves them after an unclear outcome: held, their recipients unclear."""
    ids = queued(app, partition_id, count, status=HELD, unclear_count=1, attempt_count=1, queued_at=ago(30),
                 last_error=HELD_ERROR, **values)
    with app.app_context():
        for recipient in db.session.scalars(select(MessageRecipient).where(MessageRecipient.message_id.in_(ids))):
            recipient.status, recipient.code, recipient.text = RCPT_UNCLEAR, None, "connection lost after data"
        db.session.commit()
    return ids


def _admin(seed):
    return db.session.get(User, seed["admin_id"])


def _message(app, message_id) -> OutgoingMessage:
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        message.recipients  # noqa: B018  (loaded before the session ends)
        db.session.expunge_all()
        return message


def _add_recipients(app, message_id, *outcomes) -> None:
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        for number, (status, code, text) in enumerate(outcomes):
            message.recipients.append(MessageRecipient(address=f"more{number}@example.test", role="cc",
                                                       status=status, code=code, text=text))
        db.session.commit()


# --- the actions ----------------------------------------------------------------------------


def test_send_again_queues_the_held_message_for_its_unclear_recipients_only(app, seed):
    pid = seed["partition_id"]
    [message_id] = held(app, pid, claim_owner="old/1/1/0", lease_until=ago(5), retry_at=later(60))
    _add_recipients(app, message_id, (RCPT_ACCEPTED, 250, "OK"), (RCPT_FAILED, 550, "No such user"))
    before = _message(app, message_id)
    with app.app_context():
        answered = message_actions.send_again(_admin(seed), pid, message_id)
        assert answered.status == QUEUED
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "message.send_again")).one()
        assert (event.actor, event.target_id, event.details["previous_status"]) == ("admin", message_id, HELD)
    message = _message(app, message_id)
    assert message.status == QUEUED and message.retry_at is None and message.finished_at is None
    assert message.claim_owner is None and message.lease_until is None
    assert message.message_id == before.message_id  # the same Message-ID goes out again
    assert message.unclear_count == 1  # a further unclear outcome holds it again
    assert message.queued_at > before.queued_at and message.last_error is None
    assert [(r.status, r.code) for r in message.recipients] == [
        (RCPT_PENDING, None), (RCPT_ACCEPTED, 250), (RCPT_FAILED, 550)]


def test_mark_as_sent_settles_it_sent_and_says_who_marked_the_unclear_recipients(app, seed):
    pid = seed["partition_id"]
    [message_id] = held(app, pid)
    _add_recipients(app, message_id, (RCPT_FAILED, 550, "No such user"))
    with app.app_context():
        answered = message_actions.mark_sent(_admin(seed), pid, message_id)
        assert answered.status == SENT and answered.has_raw_copy
    message = _message(app, message_id)
    assert message.status == SENT and message.finished_at is not None and message.last_error is None
    assert [(r.status, r.text) for r in message.recipients] == [
        (RCPT_ACCEPTED, "marked as sent by admin"), (RCPT_FAILED, "No such user")]
    assert audit_actions(app, message_id) == ["message.mark_sent"]


@pytest.mark.parametrize("action", [message_actions.send_again, message_actions.mark_sent],
                         ids=["send_again", "mark_sent"])
@pytest.mark.parametrize("status", [QUEUED, DEFERRED, FAILED, SENT, REMOVED])
def test_a_message_that_is_not_held_is_refused_with_409_and_the_refusal_audited(app, seed, action, status):
    [message_id] = queued(app, seed["partition_id"], 1, status=status)
    with app.app_context():
        with pytest.raises(ActionRefused) as refused:
            action(_admin(seed), seed["partition_id"], message_id)
    assert refused.value.status == 409 and "not held" in refused.value.message
    assert _message(app, message_id).status == status
    assert audit_actions(app, message_id) == [f"message.{action.__name__}.refused"]


def test_a_message_of_another_partition_is_not_found(app, seed):
    with app.app_context():
        other, _ = add_other_partition("Other", "info@other.test")
        db.session.commit()
        other_id = other.id
    [message_id] = held(app, other_id)
    with app.app_context():
        for action in (message_actions.send_again, message_actions.mark_sent):
            with pytest.raises(ActionRefused) as refused:
                action(_admin(seed), seed["partition_id"], message_id)
            assert refused.value.status == 404
    assert _message(app, message_id).status == HELD


def test_requeue_refuses_a_held_message_and_remove_takes_it(app, seed):
    pid = seed["partition_id"]
    [message_id] = held(app, pid)
    with app.app_context():
        with pytest.raises(ActionRefused) as refused:
            message_actions.requeue(_admin(seed), pid, message_id)
        assert refused.value.status == 409 and "Send again or Mark as sent" in refused.value.message
        assert message_actions.remove(_admin(seed), pid, message_id).status == REMOVED
    assert audit_actions(app, message_id) == ["message.requeue.refused", "message.remove"]


# --- the API -------------------------------------------------------------------------------


def test_the_api_sends_again_and_marks_sent_and_answers_409_otherwise(app, client, seed, admin_api, agent_api):
    pid = seed["partition_id"]
    again, marked = held(app, pid, 2)
    assert client.post(f"/api/v1/messages/{again}/send-again", headers=agent_api).status_code == 403
    answer = client.post(f"/api/v1/messages/{again}/send-again", headers=admin_api)
    assert answer.status_code == 200, answer.text
    assert (answer.json["id"], answer.json["status"]) == (again, QUEUED)
    assert [r["status"] for r in answer.json["recipients"]] == [RCPT_PENDING]
    answer = client.post(f"/api/v1/messages/{marked}/mark-sent", headers=admin_api)
    assert answer.status_code == 200 and answer.json["status"] == SENT
    assert answer.json["recipients"][0]["text"] == "marked as sent by admin"
    twice = client.post(f"/api/v1/messages/{marked}/mark-sent", headers=admin_api)
    assert twice.status_code == 409 and "not held" in twice.json["error"]
    assert client.post(f"/api/v1/messages/{marked}/send-again", headers=admin_api).status_code == 409
    assert client.post("/api/v1/messages/999999/send-again", headers=admin_api).status_code == 404


def test_the_openapi_document_lists_both_actions(client, seed):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    for path in ("/messages/{message_id}/send-again", "/messages/{message_id}/mark-sent"):
        assert set(paths[path]["post"]["responses"]) >= {"200", "403", "404", "409"}, path


# --- the monitor ---------------------------------------------------------------------------


def test_a_held_message_counts_as_stuck_with_its_reason(app, client, seed, admin_api):
    pid = seed["partition_id"]
    app.config["MAILSENDER_STUCK_AGE_MINUTES"] = 100000  # stuck by being held alone
    [message_id] = held(app, pid)
    queued(app, pid, 1)  # pending, not stuck
    body = client.get("/api/v1/monitor", headers=admin_api).json
    assert (body["pending"], body["stuck_count"], body["alert_active"]) == (1, 1, True)
    [entry] = body["stuck"]
    assert (entry["id"], entry["status"], entry["reason"]) == (message_id, HELD, monitor.REASON_HELD)
    assert "Send again or Mark as sent" in entry["reason_text"]
    client.post(f"/api/v1/messages/{message_id}/mark-sent", headers=admin_api)
    assert client.get("/api/v1/monitor", headers=admin_api).json["stuck_count"] == 0


def test_the_monitor_round_reports_a_held_message_once(app, seed, smtp_server):
    pid = seed["partition_id"]
    app.config["MAILSENDER_STUCK_AGE_MINUTES"] = 100000
    configure(app, pid, smtp_server)
    [message_id] = held(app, pid)
    with app.app_context():
        report = rounds.run_round(pid, "test-node", force=True)
        assert report.stuck == 1
    [mail] = smtp_server.wait_for(1)
    assert f"#{message_id} (held, held for review".encode() in mail.data
    with app.app_context():
        rounds.run_round(pid, "test-node", force=True)
    assert len(smtp_server.messages) == 1  # reported once
    assert _message(app, message_id).stuck_notified_at is not None


def test_the_monitor_section_offers_send_again_and_mark_as_sent_for_held_messages(app, admin_client, seed):
    pid = seed["partition_id"]
    app.config["MAILSENDER_STUCK_AGE_MINUTES"] = 100000
    [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(60))
    section = admin_client.get("/admin/mail-sender/monitor", headers=HX).text
    assert f'id="stuck-{stuck}"' in section and 'id="monitor-held-actions"' not in section
    again, marked = held(app, pid, 2)
    section = admin_client.get("/admin/mail-sender/monitor", headers=HX).text
    assert f'id="stuck-{again}" data-reason="held_for_review" data-status="held"' in section
    assert 'id="monitor-held-actions"' in section and ">Send again</button>" in section
    token = csrf_from(admin_client.get("/admin/mail-sender").text)

    response = admin_client.post("/admin/mail-sender/monitor/send-again", headers=HX,
                                 data={"id": [str(again), str(stuck)], "csrf_token": token})
    assert response.status_code == 409  # one of them was not held
    assert f"Message {again} is queued now." in response.text
    assert f"Message {stuck} is deferred, not held for review" in response.text
    assert response.headers["HX-Trigger"] == "monitor-changed"
    response = admin_client.post("/admin/mail-sender/monitor/mark-sent", headers=HX,
                                 data={"id": [str(marked)], "csrf_token": token})
    assert response.status_code == 200 and f"Message {marked} is sent now." in response.text
    assert 'id="monitor-held-actions"' not in response.text  # no held message left to decide
    assert _message(app, again).status == QUEUED and _message(app, marked).status == SENT
    assert audit_actions(app, stuck) == ["message.send_again.refused"]


# --- end to end ----------------------------------------------------------------------------


def _status(app, message_id) -> str:
    with app.app_context():
        return db.session.scalar(select(OutgoingMessage.status).where(OutgoingMessage.id == message_id))


def _answers(app, message_id) -> list[str | None]:
    with app.app_context():
        return list(db.session.scalars(select(DeliveryAttempt.answer).where(DeliveryAttempt.message_id == message_id)
                                       .order_by(DeliveryAttempt.id)))


def test_a_drop_after_the_data_holds_it_then_send_again_delivers_it_once_more_and_mark_sent_sends_nothing(
        app, client, seed, admin_api, make_node):
    pid = seed["partition_id"]
    # The first two connections are dropped right after the end of data; later ones are served.
    with ScriptedSmtpServer(faults=["drop after the payload", "drop after the payload"]) as server:
        configure(app, pid, server, after_unclear=UNCLEAR_HOLD, sleep_minutes=1)
        [first] = queue_messages(app, pid, 1, subject="First")
        node = make_node()
        start(app, pid)
        wait_until(lambda: _status(app, first) == HELD, what="the first message held")
        [second] = queue_messages(app, pid, 1, subject="Second")
        wait_until(lambda: _status(app, second) == HELD, what="the second message held")
        assert len(server.messages) == 2 and _answers(app, first) == [ANSWER_UNCLEAR]

        again = client.post(f"/api/v1/messages/{first}/send-again", headers=admin_api)
        # Queued again; a sender awake at that moment may already have claimed it when the answer is read.
        assert again.status_code == 200 and again.json["status"] in (QUEUED, SENDING), again.text
        marked = client.post(f"/api/v1/messages/{second}/mark-sent", headers=admin_api)
        assert marked.status_code == 200 and marked.json["status"] == SENT, marked.text
        wait_until(lambda: _status(app, first) == SENT, what="the first message sent again")
        arrived = server.wait_for(3)
        make_node.wakes.wait(2)  # the senders looked at the queue again: nothing more goes out
        node.stop(timeout=10)
        copies = list(server.messages)
    assert len(copies) == 3, "the message marked as sent was delivered again"
    assert arrived[0].message_id == arrived[2].message_id is not None  # the same Message-ID
    assert "Subject: First" in arrived[2].data.decode("ascii", "replace")
    assert _answers(app, first)[-1] == "accepted" and _answers(app, second) == [ANSWER_UNCLEAR]
    shown = client.get(f"/api/v1/messages/{second}", headers=admin_api).json
    assert [(r["status"], r["text"]) for r in shown["recipients"]] == [(RCPT_ACCEPTED, "marked as sent by admin")]
