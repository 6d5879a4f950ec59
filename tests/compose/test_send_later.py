"""Send later and undo: no sender claims a message before its time (the undo hold, its send_at),
its author or an administrator may cancel it until then and not after, and a customer's new
message on the case cancels the reply scheduled on it.

The claims are the engine's own (scheduler/claims.py claim_ids), on SQLite and PostgreSQL.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from scheduler import claims
from scheduler.monitor.definitions import stuck_condition
from tests.agents.conftest import incoming, queued_count, sales_api  # noqa: F401  (fixtures)
from tests.conftest import csrf_from
from tests.scheduler.conftest import wait_until
from webapp.core.clock import db_now, utcnow
from webapp.core.database import db
from webapp.core.models import AuditEvent, IncomingMessage, MessageRecipient, OutgoingMessage
from webapp.core.settings.store import get_settings
from webapp.core.states import PENDING_STATES

OWNER = "test-node/lease/0"


@pytest.fixture
def from_support(app, world):
    """New messages go out from support@, the agent's mailbox."""
    with app.app_context():
        get_settings(world["partition_id"]).origination_from_mailbox_id = world["support_id"]
        db.session.commit()


def hold(app, seconds: float) -> None:
    app.config["MAILSENDER_UNDO_SECONDS"] = seconds


def submit(client, headers, **fields) -> dict:
    body = {"kind": "origination", "to": ["customer@example.org"], "subject": "Hello", "body_text": "Hi.\n"}
    body.update(fields)
    response = client.post("/api/v1/messages", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json


def claim(app, partition_id: int, *, priority: bool = False) -> list[int]:
    """What one sender's claim takes now."""
    with app.app_context(), db.engine.connect() as connection:
        return claims.claim_ids(connection, partition_id, OWNER, 100, priority_enabled=priority, lease_seconds=120)


def database_now(app) -> datetime:
    with app.app_context():
        now = db.session.execute(select(db_now())).scalar()
        db.session.rollback()
    if isinstance(now, str):  # SQLite answers text
        now = datetime.fromisoformat(now[:26])
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


def row(app, message_id: int) -> tuple[OutgoingMessage, list[MessageRecipient]]:
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        recipients = list(db.session.scalars(select(MessageRecipient).where(MessageRecipient.message_id == message_id)))
        db.session.expunge_all()
        return message, recipients


def audited(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        events = list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        db.session.expunge_all()
        return events


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- no claim before its time ------------------------------------------------------------


@pytest.mark.databases
@pytest.mark.parametrize("priority", [False, True])
def test_no_sender_claims_a_message_inside_its_undo_hold(app, client, world, agent_api, from_support, priority):
    hold(app, 3)
    sent = submit(client, agent_api)
    assert sent["status"] == "scheduled" and sent["send_at"] is None
    assert claim(app, world["partition_id"], priority=priority) == []

    assert wait_until(lambda: claim(app, world["partition_id"], priority=priority), timeout=60,
                      what="the claim after the hold") == [sent["id"]]
    assert database_now(app) >= moment(sent["cancel_until"])


@pytest.mark.databases
def test_a_message_sent_later_is_claimed_only_once_its_send_at_has_come(app, client, world, agent_api,
                                                                        from_support):
    hold(app, 0)
    send_at = (utcnow() + timedelta(seconds=3)).isoformat()
    sent = submit(client, agent_api, send_at=send_at)
    assert sent["status"] == "scheduled" and moment(sent["send_at"]) == moment(send_at)
    plain = submit(client, agent_api, subject="Right away")
    # The message without a time goes at once, the one sent later waits.
    assert claim(app, world["partition_id"]) == [plain["id"]]
    assert claim(app, world["partition_id"]) == []

    assert wait_until(lambda: claim(app, world["partition_id"]), what="the claim at send_at") == [sent["id"]]
    assert database_now(app) >= moment(send_at)


@pytest.mark.databases
def test_the_claim_reads_no_queued_message_scheduled_further_ahead(app, seed):
    """The claim's range of queued messages in its index ends near now: the messages scheduled
    days ahead are not read at every claim, however many."""
    with app.app_context():
        selection = claims._claim_selection(db.engine.dialect, False)
        parameters = selection.parameters({"claim_partition": seed["partition_id"], "claim_limit": 500})
        driver = db.session.connection().connection.driver_connection
        dialect = db.engine.dialect.name
        if dialect == "sqlite":
            plan = [row[-1] for row in driver.execute("EXPLAIN QUERY PLAN " + selection.sql, parameters)]
        else:
            with driver.cursor() as cursor:
                cursor.execute("EXPLAIN " + selection.sql, parameters)
                plan = [row[0] for row in cursor.fetchall()]
        db.session.rollback()
    text = "\n".join(plan)
    if dialect == "sqlite":
        assert "USING COVERING INDEX ix_outgoing_claim (partition_id=? AND status=? AND queued_at<?)" in text, text
    else:
        assert any("Index Cond" in line and "queued_at <=" in line for line in plan), text


@pytest.mark.databases
def test_a_scheduled_message_is_not_stuck_before_its_time(app, client, world, agent_api, from_support):
    hold(app, 0)
    app.config["MAILSENDER_STUCK_AGE_MINUTES"] = 0.0
    later = submit(client, agent_api, send_at=(utcnow() + timedelta(hours=1)).isoformat())
    waiting = submit(client, agent_api, subject="Waiting")
    time.sleep(0.05)  # the stuck age is 0: any moment of waiting counts

    with app.app_context():
        stuck = set(db.session.scalars(select(OutgoingMessage.id).where(
            OutgoingMessage.partition_id == world["partition_id"], OutgoingMessage.status.in_(PENDING_STATES),
            stuck_condition())))
        db.session.rollback()
    assert waiting["id"] in stuck and later["id"] not in stuck


# --- cancel --------------------------------------------------------------------------------


@pytest.mark.databases
def test_cancel_inside_the_hold_cancels_settles_and_audits(app, client, world, agent_api, from_support):
    hold(app, 600)
    sent = submit(client, agent_api, cc=["other@example.org"])

    response = client.post(f"/api/v1/messages/{sent['id']}/cancel", headers=agent_api)
    assert response.status_code == 200, response.text
    assert response.json["status"] == "cancelled" and response.json["cancel_until"] is None
    assert "Cancelled by its author" in response.json["last_error"]
    message, recipients = row(app, sent["id"])
    assert message.status == "cancelled" and message.finished_at is not None and message.retry_at is None
    assert {r.address: r.status for r in recipients} == {"customer@example.org": "cancelled",
                                                         "other@example.org": "cancelled"}
    [event] = audited(app, "message.cancel")
    assert event.target_id == sent["id"] and event.actor == "agent"
    assert claim(app, world["partition_id"]) == []

    again = client.post(f"/api/v1/messages/{sent['id']}/cancel", headers=agent_api)
    assert again.status_code == 409 and "cancelled already" in again.json["error"]


@pytest.mark.databases
def test_cancel_once_a_sender_may_claim_the_message_answers_409(app, client, world, agent_api, from_support):
    hold(app, 1)
    waiting = submit(client, agent_api, subject="Hold over")
    wait_until(lambda: client.get(f"/api/v1/messages/{waiting['id']}", headers=agent_api).json["status"] == "queued",
               what="the hold to end")
    refused = client.post(f"/api/v1/messages/{waiting['id']}/cancel", headers=agent_api)
    assert refused.status_code == 409 and "no longer be cancelled" in refused.json["error"]
    assert row(app, waiting["id"])[0].status == "queued"
    assert [e.target_id for e in audited(app, "message.cancel.refused")] == [waiting["id"]]

    # Claimed: being sent.
    assert claim(app, world["partition_id"]) == [waiting["id"]]
    claimed = client.post(f"/api/v1/messages/{waiting['id']}/cancel", headers=agent_api)
    assert claimed.status_code == 409 and row(app, waiting["id"])[0].status == "sending"


def test_an_undone_reply_leaves_its_incoming_message_unanswered_again(app, client, world, agent_api,
                                                                     incoming):  # noqa: F811
    hold(app, 600)
    first = incoming()

    def answered() -> bool:
        with app.app_context():
            done = db.session.get(IncomingMessage, first["id"]).answered_at is not None
            db.session.rollback()
            return done

    replies = [submit(client, agent_api, kind="reply", incoming_id=first["id"], subject=None) for _ in range(2)]
    assert answered()
    assert client.post(f"/api/v1/messages/{replies[0]['id']}/cancel", headers=agent_api).status_code == 200
    assert answered()  # the other reply still answers it
    assert client.post(f"/api/v1/messages/{replies[1]['id']}/cancel", headers=agent_api).status_code == 200
    assert not answered()


def test_another_agent_cannot_cancel_a_message_an_administrator_can(app, client, world, agent_api, admin_api,
                                                                    sales_api, from_support):  # noqa: F811
    hold(app, 600)
    sent = submit(client, agent_api)
    assert client.post(f"/api/v1/messages/{sent['id']}/cancel", headers=sales_api).status_code == 404
    assert client.post("/api/v1/messages/999999/cancel", headers=agent_api).status_code == 404
    assert row(app, sent["id"])[0].status == "queued"

    response = client.post(f"/api/v1/messages/{sent['id']}/cancel", headers=admin_api)
    assert response.status_code == 200 and response.json["status"] == "cancelled"
    assert "admin (administrator)" in response.json["last_error"]


# --- send_at refused -----------------------------------------------------------------------


@pytest.mark.parametrize("send_at, why", [
    ("tomorrow at nine", "not a time"),
    ("2030-01-31T09:00:00", "offset"),
    ("2026-13-01T09:00:00Z", "not a time"),
    (12345, "ISO 8601"),
    ("0001-01-01T00:00:00+05:00", "not a time"),
    (lambda: (utcnow() - timedelta(hours=1)).isoformat(), "passed"),
    (lambda: (utcnow() + timedelta(days=31)).isoformat(), "30 days"),
])
def test_a_bad_send_at_is_refused_naming_the_field_and_nothing_is_queued(client, world, agent_api, from_support,
                                                                         queued_count, send_at, why):  # noqa: F811
    value = send_at() if callable(send_at) else send_at
    body = {"kind": "origination", "to": ["customer@example.org"], "subject": "Hello", "send_at": value}
    response = client.post("/api/v1/messages", json=body, headers=agent_api)
    assert response.status_code == 422, response.text
    assert why in response.json["fields"]["send_at"]
    assert queued_count() == 0


def test_a_send_at_a_little_in_the_past_sends_at_once(app, client, world, agent_api, from_support):
    hold(app, 0)
    sent = submit(client, agent_api, send_at=(utcnow() - timedelta(minutes=1)).isoformat())
    assert sent["status"] == "queued"
    assert claim(app, world["partition_id"]) == [sent["id"]]


# --- the customer writes again ---------------------------------------------------------------


@pytest.mark.databases
def test_a_customers_new_message_cancels_the_reply_scheduled_on_the_case(app, client, world, agent_api, incoming,
                                                                         from_support):  # noqa: F811
    hold(app, 0)
    first = incoming(subject="Where is my order?")
    other = incoming(subject="Another question")
    later = (utcnow() + timedelta(hours=2)).isoformat()
    reply = submit(client, agent_api, kind="reply", incoming_id=first["id"], subject=None, send_at=later)
    elsewhere = submit(client, agent_api, kind="reply", incoming_id=other["id"], subject=None, send_at=later)
    assert reply["status"] == elsewhere["status"] == "scheduled"

    again = incoming(subject=f"Re: Where is my order? [#{first['tracking_id']}]", body_text="Never mind, it came.")
    assert again["case_id"] == first["case_id"]

    shown = client.get(f"/api/v1/messages/{reply['id']}", headers=agent_api).json
    assert shown["status"] == "cancelled"
    assert "the customer wrote again" in shown["last_error"] and f"incoming message {again['id']}" in shown["last_error"]
    message, recipients = row(app, reply["id"])
    assert message.finished_at is not None and {r.status for r in recipients} == {"cancelled"}
    assert [e.details["incoming_id"] for e in audited(app, "message.cancel")] == [again["id"]]
    # The reply on the other case still waits for its time.
    assert client.get(f"/api/v1/messages/{elsewhere['id']}", headers=agent_api).json["status"] == "scheduled"


def test_the_outbox_shows_a_scheduled_message_and_why_one_was_cancelled(app, agent_client, world, agent_api,
                                                                        incoming, from_support):  # noqa: F811
    hold(app, 0)
    first = incoming()
    later = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    reply = submit(agent_client, agent_api, kind="reply", incoming_id=first["id"], subject=None,
                   send_at=later.isoformat())
    origination = submit(agent_client, agent_api, subject="Next week's offer", send_at=later.isoformat())
    incoming(subject=f"Re: [#{first['tracking_id']}] one more thing")

    page = agent_client.get("/outbox").text
    assert f'id="message-{origination["id"]}" data-status="scheduled"' in page
    assert f"Scheduled: goes out at {later:%Y-%m-%d %H:%M:%S} UTC" in page
    assert f'id="message-{reply["id"]}" data-status="cancelled"' in page
    assert "the customer wrote again" in page

    scheduled = agent_client.get("/outbox/list?status=scheduled").text
    assert f'id="message-{origination["id"]}"' in scheduled and f'id="message-{reply["id"]}"' not in scheduled
    assert f'id="message-{origination["id"]}"' not in agent_client.get("/outbox/list?status=queued").text
    listed = agent_client.get("/api/v1/messages?status=scheduled", headers=agent_api).json["items"]
    assert [m["id"] for m in listed] == [origination["id"]]


# --- Compose: Undo -------------------------------------------------------------------------


def _compose(client, **fields):
    page = client.get("/compose")
    form = {"csrf_token": csrf_from(page.text), "kind": "origination", "to": "customer@example.org",
            "subject": "From the window", "body_text": "Hello"}
    form.update(fields)
    return client.post("/compose", data=form, headers={"HX-Request": "true"})


def _sent_id(app) -> int:
    with app.app_context():
        return db.session.scalar(select(OutgoingMessage.id).order_by(OutgoingMessage.id.desc()))


def test_compose_offers_undo_while_the_hold_lasts_and_undo_cancels(app, agent_client, world, from_support):
    hold(app, 600)
    response = _compose(agent_client)
    assert response.status_code == 200
    assert 'id="undo-send"' in response.text and 'data-state="scheduled"' in response.text
    message_id = _sent_id(app)
    assert f'hx-post="/compose/sent/{message_id}/cancel"' in response.text

    undone = agent_client.post(f"/compose/sent/{message_id}/cancel", headers={
        "HX-Request": "true", "X-CSRFToken": csrf_from(response.text)})
    assert undone.status_code == 200
    assert "Cancelled" in undone.text and 'id="undo-send"' not in undone.text and "hx-trigger" not in undone.text
    assert row(app, message_id)[0].status == "cancelled"
    assert [e.target_id for e in audited(app, "message.cancel")] == [message_id]


def test_compose_takes_the_undo_away_once_the_hold_is_over(app, agent_client, world, from_support):
    hold(app, 1)
    response = _compose(agent_client)
    message_id = _sent_id(app)
    # The line asks again a second after the hold ends.
    assert 'hx-trigger="load delay:2s"' in response.text and 'id="undo-send"' in response.text

    def line():
        return agent_client.get(f"/compose/sent/{message_id}", headers={"HX-Request": "true"}).text

    later = wait_until(lambda: (text := line()) and 'id="undo-send"' not in text and text, what="the hold to end")
    assert 'data-state="queued"' in later and "hx-trigger" not in later
    refused = agent_client.post(f"/compose/sent/{message_id}/cancel", headers={
        "HX-Request": "true", "X-CSRFToken": csrf_from(response.text)})
    assert refused.status_code == 409 and "no longer be cancelled" in refused.text
    assert row(app, message_id)[0].status == "queued"


def test_compose_sends_later_at_the_time_typed_in_utc(app, agent_client, world, from_support):
    hold(app, 0)
    at = (utcnow() + timedelta(days=1)).replace(second=0, microsecond=0)
    response = _compose(agent_client, send_at=at.strftime("%Y-%m-%dT%H:%M"))
    assert f"Scheduled for {at:%Y-%m-%d %H:%M} UTC" in response.text and 'id="undo-send"' in response.text
    assert row(app, _sent_id(app))[0].send_at == at

    refused = _compose(agent_client, send_at=(at + timedelta(days=40)).strftime("%Y-%m-%dT%H:%M"))
    assert refused.status_code == 422 and "<strong>Send at</strong></a>: At most 30 days ahead." in refused.text
