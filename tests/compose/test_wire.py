"""Each parameter of DESIGN.md's table, as a real SMTP server receives it (aiosmtpd on loopback)."""
from __future__ import annotations

import base64
import quopri
import re

import pytest
from sqlalchemy import update

from tests.compose.conftest import header_block, parse
from tests.conftest import AGENT_PASSWORD, login
from tests.scheduler.conftest import start, stop, wait_until
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.tracking import find_in_subject

CUSTOMER = "customer@example.org"
COLLEAGUE = "colleague@acme.test"


def raw_incoming(subject="Broken lamp", message_id="<orig-1@example.org>", extra="") -> bytes:
    return (f"From: Customer <{CUSTOMER}>\r\nTo: support@acme.test\r\nSubject: {subject}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: {message_id}\r\n{extra}"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Die Lampe ist kaputt. Grüße\r\n").encode("utf-8")


# --- tracking ID ------------------------------------------------------------------------------


def test_the_tracking_id_is_in_the_subject_when_on_and_not_when_off(wire):
    case = wire.incoming(subject="Where is my order?")
    on = wire.send(kind="reply", incoming_id=case["id"], to=[CUSTOMER], subject="", body_text="On its way.\n")
    subject = parse(wire.one(on).data)["Subject"]
    assert subject == f"Re: Where is my order? [#{case['tracking_id']}]"
    assert find_in_subject(subject) == case["tracking_id"]  # the parser a mail receiver will use

    wire.settings(tracking_id_enabled=False)
    off = wire.send(kind="reply", incoming_id=case["id"], to=[CUSTOMER], subject="", body_text="Again.\n")
    assert parse(wire.one(off).data)["Subject"] == "Re: Where is my order?"


def test_forward_collaborate_and_keep_case_ownership_carry_it_even_when_off(wire):
    wire.settings(tracking_id_enabled=False)
    case = wire.incoming(subject="Invoice")
    tag = f"[#{case['tracking_id']}]"
    forward = wire.send(kind="forward", incoming_id=case["id"], to=["partner@example.net"], subject="")
    collaborate = wire.send(kind="collaborate", incoming_id=case["id"], to=[COLLEAGUE], subject="Your view?")
    kept = wire.send(kind="reply", incoming_id=case["id"], to=[CUSTOMER], subject="", keep_case_ownership=True)
    plain = wire.send(kind="reply", incoming_id=case["id"], to=[CUSTOMER], subject="")
    arrived = wire.deliver(forward, collaborate, kept, plain)
    subjects = {key: parse(arrived[key][0].data)["Subject"] for key in arrived}
    assert subjects[forward] == f"Fwd: Invoice {tag}"
    assert subjects[collaborate] == f"Your view? {tag}"
    assert subjects[kept] == f"Re: Invoice {tag}"
    assert subjects[plain] == "Re: Invoice"


def test_a_reply_to_a_reply_keeps_one_tracking_id(wire):
    first = wire.incoming(subject="Refund")
    tag = f"[#{first['tracking_id']}]"
    again = wire.incoming(subject=f"Re: Re: Refund {tag}")  # the customer answered our reply
    assert again["tracking_id"] == first["tracking_id"]
    reply = wire.send(kind="reply", incoming_id=again["id"], to=[CUSTOMER], subject="")
    subject = parse(wire.one(reply).data)["Subject"]
    assert subject == f"Re: Re: Re: Refund {tag}"
    assert subject.count(first["tracking_id"]) == 1


# --- envelope, log and Bcc ----------------------------------------------------------------------


def test_the_log_bcc_and_bcc_recipients_are_in_the_envelope_never_in_the_headers(wire):
    wire.settings(log_email_address="archive@log.example.net")
    message_id = wire.send(to=[CUSTOMER], cc=["boss@example.org"], bcc=["secret@example.org"])
    received = wire.one(message_id)
    assert received.mail_from == "support@acme.test"
    assert sorted(received.rcpt_tos) == sorted([CUSTOMER, "boss@example.org", "secret@example.org",
                                                "archive@log.example.net"])
    headers = header_block(received.data).lower()
    assert b"archive@log" not in headers and b"secret@" not in headers and b"bcc" not in headers
    mime = parse(received.data)
    assert [a.addr_spec for a in mime["To"].addresses] == [CUSTOMER]
    assert [a.addr_spec for a in mime["Cc"].addresses] == ["boss@example.org"]
    assert wire.row(message_id)["recipients"]["archive@log.example.net"] == ("log", "accepted")


def test_a_refused_log_address_never_fails_the_message(app, world, make_node, agent_api, admin_api, client):
    from tests.compose.conftest import Wire
    from tests.smtp_servers import SmtpServer

    with SmtpServer(rcpt_replies={"archive@log.example.net": ["550 5.1.1 No such user"]}) as server:
        wire = Wire(app, client, world, server, make_node, agent_api, admin_api)
        wire.settings(log_email_address="archive@log.example.net")
        message_id = wire.send(to=[CUSTOMER])
        assert wire.one(message_id).rcpt_tos == [CUSTOMER]
        row = wire.row(message_id)
        assert row["status"] == "sent"
        assert row["recipients"]["archive@log.example.net"] == ("log", "failed")


def test_every_kind_but_redirect_uses_its_from_mailbox_as_envelope_sender(wire):
    case = wire.incoming()
    ids = [wire.send(kind=kind, incoming_id=case["id"], to=[CUSTOMER], subject="")
           for kind in ("reply", "forward", "collaborate")] + [wire.send()]
    for message_id, arrivals in wire.deliver(*ids).items():
        (received,) = arrivals
        assert received.mail_from == "support@acme.test"
        assert parse(received.data)["From"].addresses[0].addr_spec == "support@acme.test"


def test_a_redirect_with_envelope_sender_on_goes_out_as_the_mailbox(wire):
    raw = raw_incoming()
    case = wire.incoming(raw=raw)
    message_id = wire.send(kind="redirect", incoming_id=case["id"], to=["expert@example.net"],
                           cc=["second@example.net"], subject=None, body_text=None)
    received = wire.one(message_id)
    assert received.mail_from == "support@acme.test"
    assert sorted(received.rcpt_tos) == ["expert@example.net", "second@example.net"]
    mime = parse(received.data)
    assert mime["From"].addresses[0].addr_spec == CUSTOMER  # the original sender stays
    assert (mime["Resent-From"].addresses[0].addr_spec, mime["Resent-From"].addresses[0].display_name) == \
        ("support@acme.test", "Acme Support")
    assert [a.addr_spec for a in mime["Resent-To"].addresses] == ["expert@example.net"]
    assert [a.addr_spec for a in mime["Resent-Cc"].addresses] == ["second@example.net"]
    assert mime["Resent-Date"] and mime["Resent-Message-ID"] == wire.row(message_id)["message_id"]
    assert mime["Message-ID"] == "<orig-1@example.org>"
    # Resent as received: the original bytes follow the Resent-* block unchanged.
    assert received.data.endswith(raw)
    assert received.data.startswith(b"Resent-From:")


def test_a_redirect_with_envelope_sender_off_goes_out_as_the_original_sender(wire):
    wire.settings(envelope_sender_mailbox=False)
    case = wire.incoming(subject="Bitte weiterleiten", body_text="Grüße aus Köln\n")  # no raw: rebuilt
    message_id = wire.send(kind="redirect", incoming_id=case["id"], to=["expert@example.net"],
                           subject=None, body_text=None)
    received = wire.one(message_id)
    assert received.mail_from == CUSTOMER
    mime = parse(received.data)
    assert mime["From"].addresses[0].addr_spec == CUSTOMER
    assert mime["From"].addresses[0].display_name == "Customer"
    assert mime["Subject"] == "Bitte weiterleiten"  # no tracking ID added to a redirect
    assert mime["Resent-From"].addresses[0].addr_spec == "support@acme.test"
    assert [a.addr_spec for a in mime["Resent-To"].addresses] == ["expert@example.net"]
    assert mime["Resent-Date"] and mime["Resent-Message-ID"]
    assert text_of_mime(mime) == "Grüße aus Köln\n"


# --- replies and forwards ---------------------------------------------------------------------


def test_a_reply_carries_in_reply_to_and_references(wire):
    case = wire.incoming(raw=raw_incoming(message_id="<second@example.org>",
                                          extra="References: <first@acme.test>\r\n"))
    message_id = wire.send(kind="reply", incoming_id=case["id"], to=[CUSTOMER], subject="")
    mime = parse(wire.one(message_id).data)
    assert mime["In-Reply-To"] == "<second@example.org>"
    assert mime["References"].split() == ["<first@acme.test>", "<second@example.org>"]
    assert mime["Message-ID"] == wire.row(message_id)["message_id"]


def test_a_forward_carries_the_original_as_message_rfc822(wire):
    raw = raw_incoming(subject="Original question")
    case = wire.incoming(raw=raw)
    message_id = wire.send(kind="forward", incoming_id=case["id"], to=["partner@example.net"], subject="",
                           body_text="See below.\n")
    mime = parse(wire.one(message_id).data)
    assert mime.get_content_type() == "multipart/mixed"
    (attached,) = [part for part in mime.iter_attachments() if part.get_content_type() == "message/rfc822"]
    original = attached.get_content()
    assert original["Subject"] == "Original question"
    assert original["Message-ID"] == "<orig-1@example.org>"
    assert original.get_content().replace("\r\n", "\n") == "Die Lampe ist kaputt. Grüße\n"
    assert text_of_mime(mime) == "See below.\n"


def text_of_mime(mime, subtype: str = "plain") -> str:
    """A body as a reader sees it; lines end in LF here (the wire's CRLF read back)."""
    return mime.get_body(preferencelist=(subtype,)).get_content().replace("\r\n", "\n")


# --- column width -------------------------------------------------------------------------------

URL = "https://shop.example.org/orders/2026/" + "a1b2c3-" * 14 + "?ref=mail-sender&x=1"
PARAGRAPH = ("Thank you for your patience while we looked into the delivery of your order; the "
             "parcel left our warehouse this morning and should reach you within two working days. ")
BODY = f"{PARAGRAPH}Track it at {URL} whenever you like.\n\n> {PARAGRAPH}\n>> {PARAGRAPH}\n"


def test_text_is_wrapped_at_72_without_breaking_a_word_or_url_and_quotes_keep_their_prefix(wire):
    wire.settings(column_width=72)
    message_id = wire.send(body_text=BODY, body_html=f"<p>{PARAGRAPH * 3}</p>")
    mime = parse(wire.one(message_id).data)
    lines = text_of_mime(mime).split("\n")
    assert URL in lines  # whole, on a line of its own
    assert all(len(line) <= 72 for line in lines if line != URL)
    assert " ".join(" ".join(lines).split()).count(" ".join(PARAGRAPH.split())) == 1
    quoted = [line for line in lines if line.startswith("> ")]
    double = [line for line in lines if line.startswith(">> ")]
    assert len(quoted) >= 2 and len(double) >= 2
    assert " ".join(line[2:] for line in quoted) == PARAGRAPH.strip()
    assert " ".join(line[3:] for line in double) == PARAGRAPH.strip()
    html = text_of_mime(mime, "html")
    assert f"<p>{PARAGRAPH * 3}</p>" in html  # HTML is never wrapped


def test_a_blank_width_leaves_long_lines_to_quoted_printable(wire):
    wire.settings(column_width=None)
    message_id = wire.send(body_text=BODY)
    received = wire.one(message_id)
    mime = parse(received.data)
    assert text_of_mime(mime) == BODY  # the long lines arrive whole
    part = mime.get_body(preferencelist=("plain",))
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert all(len(line) <= 78 for line in received.data.split(b"\r\n"))
    assert URL.encode() in quopri.decodestring(part.get_payload().encode())


# --- charset ------------------------------------------------------------------------------------


def test_iso_8859_1_where_the_text_fits_and_utf8_where_it_does_not(wire):
    wire.settings(default_charset="ISO-8859-1")
    latin = wire.send(subject="Grüße", body_text="Schöne Grüße aus Köln.\n")
    euro = wire.send(subject="Preis", body_text="Das kostet 5 € (fünf Euro).\n")
    arrived = wire.deliver(latin, euro)
    latin_mime, euro_mime = parse(arrived[latin][0].data), parse(arrived[euro][0].data)
    assert latin_mime.get_content_charset() == "iso-8859-1"
    assert text_of_mime(latin_mime) == "Schöne Grüße aus Köln.\n"
    assert "Sch=F6ne Gr=FC=DFe" in arrived[latin][0].data.decode("ascii")
    assert latin_mime["Subject"].startswith("Grüße")
    assert euro_mime.get_content_charset() == "utf-8"
    assert text_of_mime(euro_mime) == "Das kostet 5 € (fünf Euro).\n"
    assert wire.row(latin)["charset"] == "iso-8859-1"
    assert wire.row(euro)["charset"] == "utf-8"


# --- bodies -------------------------------------------------------------------------------------


def test_html_goes_as_an_alternative_and_attachments_keep_a_non_ascii_filename(wire):
    pdf = b"%PDF-1.4 fake\x00\xff"
    message_id = wire.send(body_text="Plain words.\n", body_html="<p>Rich <b>words</b> €</p>",
                           attachments=[{"filename": "Prüfbericht €.pdf", "content_type": "application/pdf",
                                         "content_base64": base64.b64encode(pdf).decode()}])
    received = wire.one(message_id)
    mime = parse(received.data)
    assert mime.get_content_type() == "multipart/mixed"
    alternative = next(mime.iter_parts())
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert text_of_mime(mime, "html") == "<p>Rich <b>words</b> €</p>\n"
    (attachment,) = mime.iter_attachments()
    assert attachment.get_filename() == "Prüfbericht €.pdf"
    assert b"filename*=utf-8''Pr%C3%BCfbericht%20%E2%82%AC.pdf" in received.data  # RFC 2231
    assert attachment.get_content() == pdf


# --- training mode ------------------------------------------------------------------------------


def test_training_withholds_outside_recipients_and_keeps_the_message(wire, app):
    wire.settings(training_enabled=True, log_email_address="archive@log.example.net")
    internal = wire.send(to=[COLLEAGUE], subject="Internal only")
    external = wire.send(to=[CUSTOMER], subject="Outside only")
    mixed = wire.send(to=[CUSTOMER, COLLEAGUE], bcc=["help@acme.test"], subject="Both sides")
    arrived = wire.deliver(internal, external, mixed)

    assert [r.rcpt_tos for r in arrived[internal]] == [[COLLEAGUE]]
    row = wire.row(internal)
    assert row["status"] == "sent"
    assert row["recipients"] == {COLLEAGUE: ("to", "accepted"), "archive@log.example.net": ("log", "training")}

    assert arrived[external] == []
    row = wire.row(external)
    assert row["status"] == "training" and row["training"]
    assert row["recipients"] == {CUSTOMER: ("to", "training"), "archive@log.example.net": ("log", "training")}
    assert parse(row["raw_copy"])["To"].addresses[0].addr_spec == CUSTOMER  # the full copy is kept

    assert [sorted(r.rcpt_tos) for r in arrived[mixed]] == [[COLLEAGUE, "help@acme.test"]]
    row = wire.row(mixed)
    assert row["status"] == "sent" and row["training"]
    assert row["recipients"][CUSTOMER] == ("to", "training")
    assert row["recipients"]["archive@log.example.net"] == ("log", "training")

    # Visible in the Outbox, with its copy.
    client = app.test_client()
    login(client, "agent", AGENT_PASSWORD)
    listed = client.get("/outbox?status=training").data
    assert b"Outside only" in listed and b"Internal only" not in listed and b"Both sides" not in listed
    copy = client.get(f"/outbox/{external}/raw")
    withheld = wire.row(external)
    assert copy.status_code == 200 and copy.data == withheld["raw_copy"]
    assert parse(copy.data)["Subject"] == f"Outside only [#{withheld['tracking_id']}]"


def test_training_delivers_an_internal_log_bcc(wire):
    wire.settings(training_enabled=True, log_email_address="log@acme.test")
    message_id = wire.send(to=[CUSTOMER])
    assert [r.rcpt_tos for r in wire.deliver(message_id)[message_id]] == [["log@acme.test"]]
    row = wire.row(message_id)
    assert row["status"] == "training"  # the log never decides: no real recipient got it
    assert row["recipients"]["log@acme.test"] == ("log", "accepted")


@pytest.mark.databases  # the claim's own writes, on both databases
def test_a_settings_change_decides_training_again_for_recipients_not_yet_settled(wire):
    wire.settings(training_enabled=True)
    queued_in_training = wire.send(to=[CUSTOMER], subject="Queued in training")
    assert wire.row(queued_in_training)["recipients"][CUSTOMER] == ("to", "training")
    wire.settings(training_enabled=False)
    assert [r.rcpt_tos for r in wire.deliver(queued_in_training)[queued_in_training]] == [[CUSTOMER]]
    assert wire.row(queued_in_training)["status"] == "sent"

    wire.node.stop(timeout=10)
    wire.node = None
    queued_before = wire.send(to=[CUSTOMER], subject="Queued before training")
    wire.settings(training_enabled=True)
    assert wire.deliver(queued_before)[queued_before] == []
    assert wire.row(queued_before)["status"] == "training"


# --- header safety ------------------------------------------------------------------------------


@pytest.mark.databases  # the claim's own writes, on both databases
def test_a_message_that_cannot_be_composed_safely_fails_with_the_reason_and_is_never_sent(wire, app):
    message_id = wire.send(subject="Fine at first")
    with app.app_context():
        # As if the row had been changed behind the engine's back: a header break in the subject.
        db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == message_id)
                           .values(subject="Hi\r\nBcc: victim@example.org"))
        db.session.commit()
    wire.settings(tracking_id_enabled=False)  # a new version: the message is composed again
    assert wire.deliver(message_id)[message_id] == []
    row = wire.row(message_id)
    assert row["status"] == "failed"
    assert re.search(r"cannot be composed safely.*subject.*(carriage return|line feed)", row["last_error"], re.I)
    assert wire.server.messages == []


@pytest.mark.databases  # the claim's own writes, on both databases
def test_a_requeued_training_message_stays_withheld_while_training_is_on(wire, app):
    from scheduler.message_actions import requeue

    wire.settings(training_enabled=True)
    message_id = wire.send(to=[CUSTOMER], subject="Requeued")
    assert wire.deliver(message_id)[message_id] == []
    # Stopped first, so that the running node cannot take the requeued message before it is read.
    stop(app, wire.pid)
    wait_until(lambda: not any(s.wanted or s.busy for s in wire.node.senders.values()), what="senders stopped")
    with app.app_context():
        requeue("admin", wire.pid, message_id)  # every recipient not accepted is pending again
    assert wire.row(message_id)["recipients"][CUSTOMER] == ("to", "pending")
    # Same settings version: no re-render; the claim itself withholds the outside recipient.
    start(app, wire.pid)
    wire.deliver(message_id)
    assert wire.server.messages == []
    assert wire.row(message_id)["status"] == "training"
    assert wire.row(message_id)["recipients"][CUSTOMER] == ("to", "training")


def test_a_message_whose_recipients_are_all_withheld_needs_no_server(wire, app):
    from tests.smtp_servers import SmtpServer
    from webapp.core.models import DeliveryAttempt

    # Nothing listens on that port: no recipient is delivered, so no server is needed.
    wire.settings(training_enabled=True, smtp_port=SmtpServer.free_port())
    message_id = wire.send(to=[CUSTOMER], subject="Nobody inside")
    wire.deliver(message_id)
    assert wire.row(message_id)["status"] == "training"
    with app.app_context():
        assert db.session.query(DeliveryAttempt).filter_by(message_id=message_id).count() == 0
