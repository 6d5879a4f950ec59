"""POST /api/v1/messages and /incoming, GET /api/v1/messages: bad input names its field and
queues nothing; the Idempotency-Key; answered in training mode; who sees what."""
import base64

import pytest

from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, OutgoingMessage
from webapp.core.states import SENT

# Unique idempotency keys, case numbers and keyset paging behave alike on SQLite and PostgreSQL.
pytestmark = pytest.mark.databases


def test_a_queued_message_has_its_fields_recipients_and_bytes(app, origination):
    response = origination(to=["Jo <Jo@Example.ORG>"], cc=["cc@example.org"], bcc=["bcc@example.org"],
                           attachments=[{"filename": "note.txt", "content_type": "text/plain",
                                         "content_base64": base64.b64encode(b"hello").decode()}])
    assert response.status_code == 201, response.text
    body = response.json
    assert body["status"] == "queued" and body["message_id"].startswith("<")
    assert body["to"] == ["Jo@example.org"] and body["cc"] == ["cc@example.org"] and body["bcc"] == ["bcc@example.org"]
    with app.app_context():
        message = db.session.get(OutgoingMessage, body["id"])
        assert {r.address for r in message.recipients} == {"Jo@example.org", "cc@example.org", "bcc@example.org"}
        assert b"note.txt" in message.rendered and b"bcc@example.org" not in message.rendered


# --- Idempotency-Key ----------------------------------------------------------------------


def test_the_same_idempotency_key_answers_the_first_message_and_queues_nothing_new(origination, queued_count, sales_api, settings_of):
    first = origination(extra_headers={"Idempotency-Key": "order-42"})
    again = origination(extra_headers={"Idempotency-Key": "order-42"}, subject="Different")
    assert first.status_code == again.status_code == 201
    assert again.json["id"] == first.json["id"] and again.json["message_id"] == first.json["message_id"]
    assert queued_count() == 1
    assert origination(extra_headers={"Idempotency-Key": "order-43"}).json["id"] != first.json["id"]
    # Keys are per user: another user's same key is another message.
    assert origination(headers=sales_api, extra_headers={"Idempotency-Key": "order-42"}).status_code == 201
    assert queued_count() == 3


def test_a_malformed_idempotency_key_is_400(origination, queued_count):
    response = origination(extra_headers={"Idempotency-Key": "has space"})
    assert response.status_code == 400 and "Idempotency-Key" in response.json["fields"]
    assert queued_count() == 0


def test_the_same_idempotency_key_on_incoming_records_one_message(client, admin_api, world):
    body = {"mailbox_id": world["sales_id"], "from": "c@example.org", "subject": "Hi", "body_text": "x"}
    first = client.post("/api/v1/incoming", json=body, headers={**admin_api, "Idempotency-Key": "in-1"})
    again = client.post("/api/v1/incoming", json=body, headers={**admin_api, "Idempotency-Key": "in-1"})
    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    third = client.post("/api/v1/incoming", json=body, headers=admin_api)
    assert third.json["id"] != first.json["id"]


# --- incoming -----------------------------------------------------------------------------


def test_incoming_opens_a_case_with_a_tracking_id(incoming):
    first, second = incoming(), incoming()
    assert first["tracking_id"].startswith("ACME-") and first["case_id"] != second["case_id"]
    assert first["tracking_id"] != second["tracking_id"]


def test_incoming_with_a_tracking_id_in_its_subject_joins_that_case(client, admin_api, world, incoming):
    first = incoming()
    follow_up = incoming(subject=f"Re: Where is my order? [#{first['tracking_id']}]")
    assert follow_up["case_id"] == first["case_id"] and follow_up["tracking_id"] == first["tracking_id"]
    encoded = f"=?UTF-8?Q?Re:_[#{first['tracking_id']}]?=".replace("#", "=23")
    raw = f"From: c@example.org\r\nSubject: {encoded}\r\n\r\nbody".encode()
    response = client.post("/api/v1/incoming", json={"mailbox_id": world["sales_id"], "raw": base64.b64encode(raw).decode()},
                           headers=admin_api)
    assert response.json["case_id"] == first["case_id"]
    assert incoming(subject="[#ACME-999999] unknown tag")["case_id"] != first["case_id"]


def test_incoming_from_raw_bytes_reads_sender_subject_message_id_and_bodies(app, client, admin_api, world):
    from webapp.core.models import IncomingMessage

    raw = (b"From: =?UTF-8?Q?J=C3=BCrgen?= <jurgen@example.org>\r\nTo: sales@acme.test\r\n"
           b"Subject: =?UTF-8?Q?Bestellung_?=\r\n =?UTF-8?Q?Nr=2E_7?=\r\nMessage-ID: <abc@example.org>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n"
           b"--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hallo</p>\r\n--XX--\r\n")
    response = client.post("/api/v1/incoming", json={"mailbox_id": world["sales_id"], "raw": base64.b64encode(raw).decode()},
                           headers=admin_api)
    assert response.status_code == 201, response.text
    with app.app_context():
        row = db.session.get(IncomingMessage, response.json["id"])
        assert row.from_address == '"Jürgen" <jurgen@example.org>'
        assert row.subject == "Bestellung Nr. 7"
        assert row.message_id == "<abc@example.org>"
        assert row.body_text.strip() == "Hallo" and "<p>Hallo</p>" in row.body_html
        assert row.raw == raw


def test_incoming_on_another_partitions_mailbox_is_refused(client, admin_api, world):
    response = client.post("/api/v1/incoming", json={"mailbox_id": world["beta_mailbox_id"], "from": "c@example.org"},
                           headers=admin_api)
    assert response.status_code == 422 and "mailbox_id" in response.json["fields"]


def test_incoming_is_for_administrators(client, agent_api, world):
    response = client.post("/api/v1/incoming", json={"mailbox_id": world["sales_id"], "from": "c@example.org"},
                           headers=agent_api)
    assert response.status_code == 403


# --- answering ----------------------------------------------------------------------------


def reply(client, headers, incoming_id):
    return client.post("/api/v1/messages", json={"kind": "reply", "incoming_id": incoming_id,
                                                 "to": ["customer@example.org"], "body_text": "Answer"}, headers=headers)


def test_replying_marks_the_incoming_message_answered(client, agent_api, incoming, incoming_row):
    case = incoming()
    assert incoming_row(case["id"]).answered_at is None
    assert reply(client, agent_api, case["id"]).status_code == 201
    row = incoming_row(case["id"])
    assert row.answered_at is not None and not row.answered_in_training
    assert reply(client, agent_api, case["id"]).status_code == 201  # outside training, answering again is fine


def test_answered_in_training_it_stays_answered_and_a_later_reply_is_409(
        client, agent_api, incoming, incoming_row, settings_of, queued_count):
    case = incoming()
    settings_of(training_enabled=True)
    assert reply(client, agent_api, case["id"]).status_code == 201
    settings_of(training_enabled=False)
    response = reply(client, agent_api, case["id"])
    assert response.status_code == 409
    assert "incoming_id" in response.json["fields"]
    assert incoming_row(case["id"]).answered_in_training
    assert queued_count() == 1


def test_a_reply_records_the_incoming_message_for_in_reply_to(client, agent_api, incoming):
    case = incoming()
    assert reply(client, agent_api, case["id"]).json["incoming_id"] == case["id"]


# --- reading ------------------------------------------------------------------------------


def test_users_see_their_own_messages_and_administrators_all(client, origination, agent_api, sales_api, admin_api):
    mine = origination().json
    theirs = origination(headers=sales_api).json
    assert client.get(f"/api/v1/messages/{mine['id']}", headers=agent_api).status_code == 200
    assert client.get(f"/api/v1/messages/{theirs['id']}", headers=agent_api).status_code == 404
    assert [m["id"] for m in client.get("/api/v1/messages", headers=agent_api).json["items"]] == [mine["id"]]
    assert {m["id"] for m in client.get("/api/v1/messages", headers=admin_api).json["items"]} == {mine["id"], theirs["id"]}


def test_the_message_shows_its_attempts_with_each_recipients_reply(app, client, origination, agent_api):
    sent = origination().json
    with app.app_context():
        message = db.session.get(OutgoingMessage, sent["id"])
        message.status = SENT
        message.attempts.append(DeliveryAttempt(node="n1", outcome="accepted", code=250,
                                                recipients=[{"address": "customer@example.org", "code": 250, "text": "2.0.0 OK"}]))
        db.session.commit()
    body = client.get(f"/api/v1/messages/{sent['id']}", headers=agent_api).json
    for name in ("id", "status", "kind", "from", "envelope_from", "to", "subject", "message_id", "tracking_id", "training", "attempts"):
        assert name in body
    assert body["status"] == "sent" and body["raw_copy_available"]
    assert body["attempts"][0]["node"] == "n1"
    assert [{name: r[name] for name in ("address", "code", "text")} for r in body["attempts"][0]["recipients"]] == [
        {"address": "customer@example.org", "code": 250, "text": "2.0.0 OK"}]


def test_the_hidden_log_address_is_shown_to_administrators_only(app, client, origination, agent_api, admin_api,
                                                                  settings_of):
    settings_of(log_email_address="archive@acme.test")
    sent = origination().json
    with app.app_context():
        message = db.session.get(OutgoingMessage, sent["id"])
        message.last_error = "550 5.1.1 <ARCHIVE@acme.test>: no such user"
        message.attempts.append(DeliveryAttempt(node="n1", outcome="accepted", code=250, recipients=[
            {"address": "customer@example.org", "code": 250, "text": "2.0.0 OK"},
            {"address": "archive@acme.test", "code": 550, "text": "5.1.1 archive@acme.test: no such user"}]))
        db.session.commit()
    as_agent = client.get(f"/api/v1/messages/{sent['id']}", headers=agent_api).text
    as_admin = client.get(f"/api/v1/messages/{sent['id']}", headers=admin_api).json
    assert "archive@acme.test" not in as_agent.lower()
    assert [r["address"] for r in as_admin["recipients"]] == ["customer@example.org", "archive@acme.test"]
    assert len(as_admin["attempts"][0]["recipients"]) == 2


def test_the_outbox_page_hides_the_log_address_from_agents(app, agent_client, origination, settings_of):
    settings_of(log_email_address="archive@acme.test")
    sent = origination().json
    with app.app_context():
        message = db.session.get(OutgoingMessage, sent["id"])
        message.last_error = "550 archive@acme.test: no such user"
        message.attempts.append(DeliveryAttempt(node="n1", outcome="deferred", code=451, detail="archive@acme.test later",
                                                recipients=[{"address": "archive@acme.test", "code": 451, "text": "Later"}]))
        db.session.commit()
    page = agent_client.get("/outbox").text
    assert f'id="message-{sent["id"]}"' in page and "archive@acme.test" not in page


def test_messages_filter_by_status_and_page_with_a_cursor(app, client, origination, agent_api):
    ids = [origination().json["id"] for _ in range(3)]
    with app.app_context():
        db.session.get(OutgoingMessage, ids[0]).status = SENT
        db.session.commit()
    assert [m["id"] for m in client.get("/api/v1/messages?status=sent", headers=agent_api).json["items"]] == [ids[0]]
    assert client.get("/api/v1/messages?status=bogus", headers=agent_api).status_code == 422
    page = client.get("/api/v1/messages?limit=2", headers=agent_api).json
    assert len(page["items"]) == 2 and page["next"]
    rest = client.get(f"/api/v1/messages?limit=2&cursor={page['next']}", headers=agent_api).json
    assert [m["id"] for m in page["items"] + rest["items"]] == ids and rest["next"] is None


def test_a_cookie_session_needs_the_csrf_token(agent_client, world, queued_count):
    response = agent_client.post("/api/v1/messages", json={"kind": "origination", "to": ["c@example.org"]})
    assert response.status_code == 400
    assert queued_count() == 0
