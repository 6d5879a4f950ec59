"""Threading for every incoming form: a reply carries In-Reply-To and References whether the
customer's message came as raw bytes or as fields (with its Message-ID or without one, which we
then make), read back from what arrived at a real SMTP server; the thread fields of a message
given as fields are checked like every header value we write, and a bad one is a 422 naming it."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from tests.compose.conftest import header_block, parse
from webapp.core.compose import MSG_ID_MAX_LENGTH, REFERENCES_MAX, THREAD_MAX
from webapp.core.database import db
from webapp.core.models import IncomingMessage

CUSTOMER = "customer@example.org"


def reply_to(wire, incoming: dict):
    """The reply to `incoming` as the customer's mail client reads it."""
    message_id = wire.send(kind="reply", incoming_id=incoming["id"], to=[CUSTOMER], subject="")
    return parse(wire.one(message_id).data)


def incoming_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(IncomingMessage))


# --- structured incoming messages -------------------------------------------------------------


def test_a_reply_to_a_message_given_as_fields_continues_its_thread(wire):
    incoming = wire.incoming(message_id="<question-2@example.org>", in_reply_to="<answer-1@acme.test>",
                             references=["<question-1@example.org>", "<answer-1@acme.test>"])
    assert incoming["message_id"] == "<question-2@example.org>"
    assert incoming["in_reply_to"] == "<answer-1@acme.test>"
    assert incoming["references"] == ["<question-1@example.org>", "<answer-1@acme.test>"]

    mime = reply_to(wire, incoming)
    assert mime["In-Reply-To"] == "<question-2@example.org>"
    assert mime["References"].split() == ["<question-1@example.org>", "<answer-1@acme.test>",
                                          "<question-2@example.org>"]


def test_a_message_given_without_a_message_id_gets_one_of_ours_and_a_reply_threads_to_it(wire):
    incoming = wire.incoming(references="<question-1@example.org>  <answer-1@acme.test>")
    minted = incoming["message_id"]
    assert re.fullmatch(r"<[^<>@\s]+@acme\.test>", minted), minted  # the mailbox's domain
    assert incoming["references"] == ["<question-1@example.org>", "<answer-1@acme.test>"]

    mime = reply_to(wire, incoming)
    assert mime["In-Reply-To"] == minted
    assert mime["References"].split() == ["<question-1@example.org>", "<answer-1@acme.test>", minted]


def test_a_first_message_given_as_fields_threads_on_its_own_message_id(wire):
    incoming = wire.incoming()
    assert incoming["in_reply_to"] == "" and incoming["references"] == []
    mime = reply_to(wire, incoming)
    assert mime["In-Reply-To"] == incoming["message_id"]
    assert mime["References"].split() == [incoming["message_id"]]


def test_with_in_reply_to_and_no_references_the_reply_references_both(wire):
    # RFC 5322 3.6.4: the parent's In-Reply-To stands in for References it lacks.
    incoming = wire.incoming(message_id="<question-2@example.org>", in_reply_to="<answer-1@acme.test>")
    mime = reply_to(wire, incoming)
    assert mime["In-Reply-To"] == "<question-2@example.org>"
    assert mime["References"].split() == ["<answer-1@acme.test>", "<question-2@example.org>"]


def test_a_long_thread_keeps_its_first_and_latest_message_ids(wire):
    thread = [f"<m-{n}@example.org>" for n in range(REFERENCES_MAX)]
    incoming = wire.incoming(message_id="<latest@example.org>", references=thread)
    mime = reply_to(wire, incoming)
    expected = [thread[0], *thread[-(THREAD_MAX - 2):], "<latest@example.org>"]
    assert mime["References"].split() == expected
    assert mime["In-Reply-To"] == "<latest@example.org>"


def test_forward_and_redirect_of_a_message_given_as_fields_carry_its_thread_fields(wire):
    incoming = wire.incoming(message_id="<question-2@example.org>", in_reply_to="<answer-1@acme.test>",
                             references="<question-1@example.org> <answer-1@acme.test>")
    forward = wire.send(kind="forward", incoming_id=incoming["id"], to=["partner@example.net"], subject="")
    redirect = wire.send(kind="redirect", incoming_id=incoming["id"], to=["expert@example.net"], subject=None,
                         body_text=None)
    arrived = wire.deliver(forward, redirect)
    (attached,) = [p for p in parse(arrived[forward][0].data).iter_attachments()
                   if p.get_content_type() == "message/rfc822"]
    for original in (attached.get_content(), parse(arrived[redirect][0].data)):
        assert original["Message-ID"] == "<question-2@example.org>"
        assert original["In-Reply-To"] == "<answer-1@acme.test>"
        assert original["References"].split() == ["<question-1@example.org>", "<answer-1@acme.test>"]


# --- raw incoming messages --------------------------------------------------------------------


def raw_message(extra: str) -> bytes:
    return (f"From: Customer <{CUSTOMER}>\r\nTo: support@acme.test\r\nSubject: Broken lamp\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n{extra}\r\nIt is broken.\r\n").encode("ascii")


def test_a_raw_message_threads_as_before_and_shows_its_thread_fields(wire):
    incoming = wire.incoming(raw=raw_message("Message-ID: <second@example.org>\r\n"
                                             "In-Reply-To: <first-answer@acme.test>\r\n"
                                             "References: <first@example.org>\r\n <first-answer@acme.test>\r\n"))
    assert incoming["message_id"] == "<second@example.org>"
    assert incoming["in_reply_to"] == "<first-answer@acme.test>"
    assert incoming["references"] == ["<first@example.org>", "<first-answer@acme.test>"]
    mime = reply_to(wire, incoming)
    assert mime["In-Reply-To"] == "<second@example.org>"
    assert mime["References"].split() == ["<first@example.org>", "<first-answer@acme.test>", "<second@example.org>"]


def test_a_raw_message_without_a_message_id_gets_none_of_ours(wire):
    # The raw bytes are the customer's message as received: nothing is added to them.
    incoming = wire.incoming(raw=raw_message("References: <first@example.org>\r\n"))
    assert incoming["message_id"] == ""
    mime = reply_to(wire, incoming)
    assert mime["In-Reply-To"] == "<first@example.org>"
    assert mime["References"].split() == ["<first@example.org>"]


# --- refused values ---------------------------------------------------------------------------

BAD = [
    ("message_id", "question-1@example.org"),          # no angle brackets
    ("message_id", "<question-1>"),                    # no @
    ("message_id", "<two words@example.org>"),
    ("message_id", "<a@example.org> <b@example.org>"),  # two, where one is meant
    ("message_id", "<a..b@example.org>"),
    ("message_id", "<" + "a" * MSG_ID_MAX_LENGTH + "@example.org>"),
    ("message_id", 42),
    ("in_reply_to", "<a@example.org> <b@example.org>"),
    ("in_reply_to", "<a@example.org"),
    ("in_reply_to", ["<a@example.org>"]),
    ("references", "<a@example.org> b@example.org"),
    ("references", ["<a@example.org>", 7]),
    ("references", {"id": "<a@example.org>"}),
    ("references", [f"<m-{n}@example.org>" for n in range(REFERENCES_MAX + 1)]),
]

INJECTION = [
    ("message_id", "<a@example.org>\r\nBcc: victim@example.net"),
    ("message_id", "<a@example.org>\nX-Injected: yes"),
    ("message_id", "<=?utf-8?q?a=0D=0AX-Injected:_yes?=@example.org>"),
    ("message_id", "<=?utf-8?q?harmless?=@example.org>"),  # an encoded word, even a harmless one
    ("in_reply_to", "<a@example.org>\rX-Injected: yes"),
    ("in_reply_to", "=?utf-8?b?PGFAZXhhbXBsZS5vcmc+DQpYLUluamVjdGVkOiB5ZXM=?="),
    ("in_reply_to", "<a@example.org>\x00"),
    ("references", "<a@example.org>\r\nX-Injected: yes"),
    ("references", ["<a@example.org>", "<b@example.org>\nBcc: victim@example.net"]),
    ("references", ["<a=?utf-8?q?=0A?=@example.org>"]),
    ("references", "<a@example.org> =?utf-8?q?=0D=0AX-Injected:_yes?="),
]


@pytest.mark.parametrize(("field", "value"), BAD + INJECTION)
def test_a_bad_or_smuggling_thread_field_is_a_422_naming_it_and_nothing_is_recorded(app, admin_api, world,
                                                                                    field, value):
    before = incoming_count(app)
    response = app.test_client().post("/api/v1/incoming", headers=admin_api, json={
        "mailbox_id": world["support_id"], "from": CUSTOMER, "subject": "Help", "body_text": "Hello",
        field: value})
    assert response.status_code == 422, response.text
    assert list(response.json["fields"]) == [field]
    assert incoming_count(app) == before


def test_nothing_smuggled_into_raw_thread_fields_reaches_a_reply(wire):
    # Raw bytes are read leniently (they are what arrived), but only msg-ids are repeated.
    incoming = wire.incoming(raw=raw_message("Message-ID: <second@example.org>\r\n"
                                             "In-Reply-To: =?utf-8?q?=0D=0AX-Injected:_yes?=\r\n"
                                             "References: <first@example.org> =?utf-8?q?=0ABcc:_x@example.net?=\r\n"))
    assert incoming["in_reply_to"] == ""
    assert incoming["references"] == ["<first@example.org>"]
    message_id = wire.send(kind="reply", incoming_id=incoming["id"], to=[CUSTOMER], subject="")
    received = wire.one(message_id)
    assert received.rcpt_tos == [CUSTOMER]
    assert b"X-Injected" not in received.data and b"Bcc" not in header_block(received.data)
    mime = parse(received.data)
    assert mime["References"].split() == ["<first@example.org>", "<second@example.org>"]
