"""Bad input to POST /api/v1/messages and /incoming: the field is named and nothing is written.

SQLite only: these checks run before any database write, so they behave alike on PostgreSQL."""
import base64

import pytest

from webapp.core.database import db

# --- bad input: the field is named, nothing is queued ---------------------------------------


@pytest.mark.parametrize("fields, field", [
    ({"to": ["a@b.c)<x@y.z>"]}, "to"),
    ({"to": ["customer@example.org (comment)"]}, "to"),
    ({"cc": ["Team: a@b.c;"]}, "cc"),
    ({"bcc": ["<@route:x@y.z>"]}, "bcc"),
    ({"to": "a@b.c, not an address"}, "to"),
    ({"to": ["=?UTF-8?Q?=0A?= <customer@example.org>"]}, "to"),
    ({"to": ["customer@example.org\r\nBcc: victim@example.org"]}, "to"),
    ({"subject": "Hello\r\nBcc: victim@example.org"}, "subject"),
    ({"subject": "Hello\nthere"}, "subject"),
    ({"subject": "Hello\x00"}, "subject"),
    ({"subject": "=?UTF-8?Q?=0A?=Bcc: victim@example.org"}, "subject"),
    ({"subject": "=?UTF-8?B?SGkNCkJjYzogdkBleGFtcGxlLm9yZw==?="}, "subject"),
    ({"body_text": "NUL\x00"}, "body_text"),
    ({"to": [], "cc": [], "bcc": []}, "to"),
    ({"to": None}, "to"),
    ({"to": 5}, "to"),
    ({"kind": "telegram"}, "kind"),
    ({"kind": "reply"}, "incoming_id"),
    ({"kind": "forward"}, "incoming_id"),
    ({"kind": "collaborate"}, "incoming_id"),
    ({"kind": "redirect"}, "incoming_id"),
    ({"kind": "reply", "incoming_id": 424242}, "incoming_id"),
    ({"kind": "reply", "incoming_id": "abc"}, "incoming_id"),
    ({"keep_case_ownership": "yes"}, "keep_case_ownership"),
    ({"attachments": [{"filename": "a.txt", "content_type": "text/plain", "content_base64": "!!!"}]}, "attachments"),
    ({"attachments": [{"filename": "a\r\n.txt", "content_base64": "eA=="}]}, "attachments"),
    ({"attachments": [{"filename": "=?UTF-8?Q?a=0A?=.txt", "content_base64": "eA=="}]}, "attachments"),
    ({"attachments": [{"filename": "a.txt", "content_type": "text/plain\r\nX: y", "content_base64": "eA=="}]}, "attachments"),
])
def test_bad_input_names_the_field_and_queues_nothing(origination, fields, field, queued_count):
    response = origination(**fields)
    assert response.status_code == 422, response.text
    assert field in response.json["fields"], response.json
    assert queued_count() == 0


def test_every_bad_field_is_named_at_once(origination, queued_count):
    response = origination(to=["bad"], subject="a\nb", kind="reply")
    assert set(response.json["fields"]) >= {"to", "subject", "incoming_id"}
    assert queued_count() == 0


def test_an_incoming_message_of_another_partition_is_unknown(app, client, world, origination, queued_count):
    from webapp.core.models import Case, IncomingMessage

    with app.app_context():
        case = Case(partition_id=world["beta_partition_id"], tracking_id="BETA-000001")
        db.session.add(case)
        db.session.flush()
        other = IncomingMessage(partition_id=world["beta_partition_id"], mailbox_id=world["beta_mailbox_id"],
                                case_id=case.id, from_address="x@example.org")
        db.session.add(other)
        db.session.commit()
        other_id = other.id
    response = origination(kind="reply", incoming_id=other_id)
    assert response.status_code == 422 and "incoming_id" in response.json["fields"]
    assert queued_count() == 0


def test_attachments_over_the_limit_answer_413_and_queue_nothing(app, origination, queued_count):
    app.config["MAILSENDER_MAX_ATTACHMENT_BYTES"] = 1000
    small = base64.b64encode(b"x" * 600).decode()
    response = origination(attachments=[{"filename": "a.bin", "content_type": "application/octet-stream", "content_base64": small},
                                        {"filename": "b.bin", "content_type": "application/octet-stream", "content_base64": small}])
    assert response.status_code == 413
    assert "attachments" in response.json["fields"]
    assert queued_count() == 0
    response = origination(attachments=[{"filename": "a.bin", "content_type": "application/octet-stream", "content_base64": small}])
    assert response.status_code == 201, response.text
    assert queued_count() == 1


def test_a_body_that_is_not_json_is_400(client, agent_api, queued_count, world):
    response = client.post("/api/v1/messages", data="to=x", headers=agent_api)
    assert response.status_code == 400
    assert queued_count() == 0


@pytest.mark.parametrize("raw, why", [
    (b"Subject: no sender\r\n\r\nbody", "From"),
    (b"From: a@b.c)<x@y.z>\r\nSubject: x\r\n\r\nbody", "From"),
    (b"From: a@b.c\r\nSubject: =?UTF-8?Q?=0A?=Bcc: v@example.org\r\n\r\nbody", "Subject"),
    (b"From: a@b.c\r\nFrom: d@e.f\r\n\r\nbody", "From"),
])
def test_raw_incoming_with_a_bad_header_is_refused(client, admin_api, world, raw, why):
    response = client.post("/api/v1/incoming", json={"mailbox_id": world["sales_id"], "raw": base64.b64encode(raw).decode()},
                           headers=admin_api)
    assert response.status_code == 422
    assert why in response.json["fields"]["raw"]


@pytest.mark.parametrize("fields, field", [
    ({"mailbox_id": None}, "mailbox_id"),
    ({"from": "a@b.c)<x@y.z>"}, "from"),
    ({"from": ""}, "from"),
    ({"subject": "=?UTF-8?B?Cg==?="}, "subject"),
    ({"raw": "not base64!"}, "raw"),
])
def test_incoming_bad_fields_are_named(app, client, admin_api, world, fields, field):
    from sqlalchemy import func, select

    from webapp.core.models import IncomingMessage

    body = {"mailbox_id": world["sales_id"], "from": "c@example.org", "subject": "Hi", **fields}
    response = client.post("/api/v1/incoming", json=body, headers=admin_api)
    assert response.status_code == 422 and field in response.json["fields"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(IncomingMessage)) == 0




# --- limits: recipients and subject, from instance configuration ----------------------------


def test_recipients_past_the_limit_in_all_are_refused_naming_each_list(app, origination, queued_count):
    app.config["MAILSENDER_MAX_RECIPIENTS"] = 3
    response = origination(to=["a@example.org", "b@example.org"], bcc="c@example.org, d@example.org")
    assert response.status_code == 422, response.text
    assert set(response.json["fields"]) == {"to", "bcc"}
    assert "At most 3 recipients in all" in response.json["fields"]["bcc"]
    assert "has 4" in response.json["fields"]["bcc"]
    assert queued_count() == 0


def test_recipients_up_to_the_limit_are_queued(app, origination, queued_count):
    app.config["MAILSENDER_MAX_RECIPIENTS"] = 3
    response = origination(to=["a@example.org"], cc=["b@example.org"], bcc=["c@example.org"])
    assert response.status_code == 201, response.text
    assert queued_count() == 1


def test_a_hundred_thousand_bcc_are_refused_by_the_default_limit(origination, queued_count):
    bcc = ", ".join(f"customer{n}@example.org" for n in range(100_000))
    response = origination(bcc=bcc)
    assert response.status_code == 422
    assert "At most 500 recipients" in response.json["fields"]["bcc"]
    assert queued_count() == 0


def test_the_subject_limit_comes_from_instance_configuration(app, origination, queued_count):
    app.config["MAILSENDER_MAX_SUBJECT_LENGTH"] = 10
    assert origination(subject="x" * 10).status_code == 201
    response = origination(subject="x" * 11)
    assert response.status_code == 422 and response.json["fields"]["subject"] == "At most 10 characters."
    assert queued_count() == 1
