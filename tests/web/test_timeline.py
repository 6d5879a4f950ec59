"""A message's timeline in the Outbox and in GET /api/v1/messages/{id}: after a real delivery to
aiosmtpd by the node's engine, each attempt shows its route, node, lease holder, the time each
SMTP stage took, each recipient's reply and status, the class of the answer and the server's
queue id; an agent sees their own message's timeline without the log Bcc address and without
the lease holder."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select, update

from tests.conftest import AGENT_PASSWORD, login
from tests.monitor.test_held_actions import held
from tests.scheduler.conftest import configure, make_node, queue_messages, start, wait_until  # noqa: F401
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, OutgoingMessage
from webapp.core.states import ANSWER_ACCEPTED, ANSWER_LABELS, ANSWER_UNCLEAR, SENT

pytestmark = pytest.mark.databases

LOG_ADDRESS = "archive@log.test"
QUEUE_ID = "ABC123"


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MAILSENDER_SENDERS": 1, "MAILSENDER_SMTP_COMMAND_TIMEOUT": 30.0,
            "MAILSENDER_MONITOR": False}


@pytest.fixture
def delivered(app, seed, make_node):
    """An agent's message delivered through the engine to aiosmtpd, which names its queue id."""
    pid = seed["partition_id"]
    with SmtpServer(data_replies=[f"250 2.0.0 Ok: queued as {QUEUE_ID}"]) as server:
        configure(app, pid, server, log_email_address=LOG_ADDRESS)
        [message_id] = queue_messages(app, pid, 1, subject="Timeline")
        with app.app_context():
            db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == message_id)
                               .values(user_id=seed["agent_id"]))
            db.session.commit()
        node = make_node()
        start(app, pid)
        server.wait_for(1)
        wait_until(lambda: _status(app, message_id) == SENT, what="the message sent")
        node.stop(timeout=10)
    return message_id


def _status(app, message_id) -> str:
    with app.app_context():
        return db.session.scalar(select(OutgoingMessage.status).where(OutgoingMessage.id == message_id))


def _timeline(html: str, message_id: int) -> str:
    found = re.search(rf'<ol class="timeline" id="timeline-{message_id}">.*?</ol>', html, re.S)
    assert found, "no timeline for the message"
    return found.group(0)


def test_the_outbox_shows_each_attempt_with_route_node_stages_class_and_queue_id(app, admin_client, delivered):
    timeline = _timeline(admin_client.get("/outbox").text, delivered)
    assert f'data-class="{ANSWER_ACCEPTED}"' in timeline
    assert f'<span class="answer-class">{ANSWER_LABELS[ANSWER_ACCEPTED]}</span>' in timeline
    assert "default (the Mail Sender&#39;s SMTP settings)" in timeline
    assert '<dd class="node">test-node' in timeline
    assert re.search(r'<dd class="lease-owner">test-node/[^<]+</dd>', timeline)
    assert re.search(r"connect \d+(\.\d+)? ms · commands \d+(\.\d+)? ms · end of data \d+(\.\d+)? ms", timeline)
    assert f'<dd class="queue-id">{QUEUE_ID}</dd>' in timeline
    assert re.search(r"customer@example.test: 250 [^<]*<span class=\"rcpt-status\">\(accepted\)</span>", timeline)
    assert LOG_ADDRESS in timeline  # an administrator sees the log Bcc address


def test_an_agent_sees_their_timeline_without_the_log_address_or_the_lease_holder(app, delivered):
    agent = app.test_client()
    assert login(agent, "agent", AGENT_PASSWORD).status_code == 302
    page = agent.get("/outbox").text
    timeline = _timeline(page, delivered)
    assert f'<dd class="queue-id">{QUEUE_ID}</dd>' in timeline and "end of data" in timeline
    assert "lease-owner" not in timeline and "Lease holder" not in timeline
    assert LOG_ADDRESS not in page


def test_the_api_attempts_carry_route_class_queue_id_timings_and_statuses(app, client, delivered, admin_api,
                                                                           agent_api):
    [attempt] = client.get(f"/api/v1/messages/{delivered}", headers=admin_api).json["attempts"]
    assert (attempt["route"], attempt["class"], attempt["class_label"], attempt["queue_id"]) == (
        "", ANSWER_ACCEPTED, ANSWER_LABELS[ANSWER_ACCEPTED], QUEUE_ID)
    assert set(attempt["timings"]) == {"connect", "commands", "end"}
    assert all(value >= 0 for value in attempt["timings"].values())
    assert attempt["node"].startswith("test-node") and attempt["lease_owner"].startswith("test-node/")
    assert {r["address"]: r["status"] for r in attempt["recipients"]} == {
        "customer@example.test": "accepted", LOG_ADDRESS: "accepted"}

    [seen] = client.get(f"/api/v1/messages/{delivered}", headers=agent_api).json["attempts"]
    assert seen["lease_owner"] is None and seen["queue_id"] == QUEUE_ID and seen["class"] == ANSWER_ACCEPTED
    assert [r["address"] for r in seen["recipients"]] == ["customer@example.test"]
    assert LOG_ADDRESS not in str(seen)


def test_a_held_message_marked_as_sent_shows_who_marked_it(app, admin_client, seed, admin_api):
    [message_id] = held(app, seed["partition_id"])
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        message.attempts.append(DeliveryAttempt(node="test-node", outcome="deferred", answer=ANSWER_UNCLEAR,
                                                detail="connection lost after the end of data",
                                                recipients=[{"address": "customer@example.test", "code": None,
                                                             "text": "connection lost", "status": "unclear"}]))
        db.session.commit()
    timeline = _timeline(admin_client.get("/outbox").text, message_id)
    assert f'<span class="answer-class">{ANSWER_LABELS[ANSWER_UNCLEAR]}</span>' in timeline
    assert "not timed" in timeline and '<dd class="queue-id">—</dd>' in timeline
    assert admin_client.post(f"/api/v1/messages/{message_id}/mark-sent", headers=admin_api).status_code == 200
    page = admin_client.get("/outbox").text
    now = re.search(rf'<ul class="recipients-now" id="recipients-now-{message_id}">.*?</ul>', page, re.S).group(0)
    assert "customer@example.test: accepted — marked as sent by admin" in now
