"""No header smuggled, no recipient added: every way of writing a line break, in every field
that reaches a header, delivered to a real SMTP server (aiosmtpd on loopback) or refused.

FORMS lists the ways: CR, LF, CRLF, NUL, the line separators of Unicode and the other
characters str.splitlines() breaks at, each encoded-word variant that Python 3.11.7's email
package decodes, and RFC 2231 parameter tricks. FIELDS lists the places: the subject, To, Cc
and Bcc (addresses and display names), attachment file names and content types (API and the
Compose upload), mailbox names and addresses (directory), an incoming message's sender as
From and envelope sender, the log Bcc address (settings), and the raw headers of incoming
messages that are replied to, forwarded or redirected.

Each attempt ends in one of two ways:
- refused: a 4xx that names the field, and nothing queued or changed;
- delivered: what the server received parses (email.parser, every part walked) with no header
  line that was not meant — the customer's own lines of a forwarded or redirected message are
  carried as received, and nothing else — no line break in any value we wrote, and RCPT TO and
  MAIL FROM exactly the intended ones.

The cases are counted and shown in the terminal summary.
"""
from __future__ import annotations

import base64
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as reading
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from tests.agents.conftest import admin_api, agent_api, world  # noqa: F401  (fixtures)
from tests.compose.conftest import wire  # noqa: F401  (fixture)
from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, csrf_from, login
from tests.scheduler.conftest import app_config, make_node, smtp_server  # noqa: F401  (fixtures)
from webapp.core.database import db
from webapp.core.models import IncomingMessage, Mailbox, MailSenderSettings, OutgoingMessage

PAYLOAD = "X-Injected: yes"
CUSTOMER, FRIEND, LOG = "customer@example.org", "friend@example.org", "log@acme.test"
SUPPORT = "support@acme.test"
PDF = base64.b64encode(b"%PDF-1.4 test").decode("ascii")


def _b64(text: str, charset: str = "utf-8") -> str:
    return base64.b64encode(text.encode(charset)).decode("ascii")


# Each form puts PAYLOAD on a line of its own, if a reader were to take the break.
FORMS = {
    "CR": f"a\r{PAYLOAD}",
    "LF": f"a\n{PAYLOAD}",
    "CRLF": f"a\r\n{PAYLOAD}",
    "CRLF, an SMTP command": "a>\r\nRCPT TO:<victim@evil.test>",
    "NUL": f"a\x00{PAYLOAD}",
    "U+2028": f"a\u2028{PAYLOAD}",
    "U+2029": f"a\u2029{PAYLOAD}",
    "U+0085": f"a\u0085{PAYLOAD}",
    # Where str.splitlines() breaks too, as the email package does when it writes a header again.
    "VT": f"a\x0b{PAYLOAD}",
    "FF": f"a\x0c{PAYLOAD}",
    "FS": f"a\x1c{PAYLOAD}",
    "GS": f"a\x1d{PAYLOAD}",
    "RS": f"a\x1e{PAYLOAD}",
    "q, =0D=0A": "=?utf-8?q?a=0D=0AX-Injected:_yes?=",
    "q, =0A": "=?utf-8?q?a=0AX-Injected:_yes?=",
    "Q, =0D": "=?UTF-8?Q?a=0DX-Injected:_yes?=",
    "q, =00": "=?utf-8?q?a=00X-Injected:_yes?=",
    "q, U+2028": "=?utf-8?q?a=E2=80=A8X-Injected:_yes?=",
    "b, CRLF": f"=?utf-8?b?{_b64(chr(97) + chr(13) + chr(10) + PAYLOAD)}?=",
    "b, U+0085": f"=?utf-8?b?{_b64(chr(97) + chr(0x85) + PAYLOAD)}?=",
    "b, unpadded": f"=?utf-8?b?{_b64('a' + chr(10) + PAYLOAD + '!').rstrip('=')}?=",
    "b, a space inside": f"=?utf-8?b?{_b64('a' + chr(10) + PAYLOAD)[:8]} {_b64('a' + chr(10) + PAYLOAD)[8:]}?=",
    "b, UTF-16": f"=?utf-16-le?b?{_b64('a' + chr(10) + PAYLOAD, 'utf-16-le')}?=",
    "empty charset": "=??q?a=0AX-Injected:_yes?=",
    "a blank charset": "=? ?q?a=0AX-Injected:_yes?=",
    "an unknown charset": "=?x-unknown?q?a=0AX-Injected:_yes?=",
    "charset*language": "=?utf-8*en?q?a=0AX-Injected:_yes?=",
    "a space in the encoded text": "=?utf-8?q?a =0AX-Injected:_yes?=",
    "no closing ?=": "=?utf-8?q?a=0AX-Injected:_yes",
    # Decoded once, it is the first q form: a reader that decodes twice, or a store of the decoded text.
    "an encoded word in an encoded word": "=?utf-8?q?=3D=3Futf-8=3Fq=3Fa=3D0AX-Injected:=5Fyes=3F=3D?=",
    "RFC 2231 value": "utf-8''a%0D%0AX-Injected%3A%20yes",
    "RFC 2231 filename*=": "a\"; filename*=utf-8''a%0D%0AX-Injected%3A%20yes; x=\"",
    "RFC 2231 filename*0*=": "a\"; filename*0*=utf-8''a%0D%0A; filename*1=\"X-Injected: yes",
}
# The encoded words above that the email package reads as a break: the forms are real only if it does.
# The other two are read by no reader as one (ours refuses them all the same).
DECODED_BY_THE_EMAIL_PACKAGE = [name for name, form in FORMS.items() if form.startswith("=?")
                                and name not in ("no closing ?=", "an encoded word in an encoded word")]
_BREAKS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def test_the_encoded_word_forms_are_ones_the_email_package_decodes_to_a_break():
    for name in DECODED_BY_THE_EMAIL_PACKAGE:
        assert _BREAKS.search(str(reading.header_factory("Subject", FORMS[name]))), name


# --- the count, in the terminal summary ---------------------------------------------------


class Tally:
    def __init__(self):
        self.outcomes = Counter()
        self.seconds = 0.0
        self.fields = 0

    def pytest_terminal_summary(self, terminalreporter):
        if self.outcomes:
            terminalreporter.write_sep("-", "header injection sweep")
            terminalreporter.write_line(
                f"{sum(self.outcomes.values())} cases ({self.fields} fields x {len(FORMS)} forms, "
                f"some fields in several kinds of message) in {self.seconds:.1f} s: "
                + ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.outcomes.items())))


TALLY = Tally()


# --- what was sent and what must arrive ---------------------------------------------------


@dataclass
class Queued:
    """A message that was accepted: what must arrive for it."""

    case: str
    message_id: int
    rcpt: set[str]
    mail_from: str
    original: bytes | None = None  # the customer's message, carried as received (forward, redirect)
    rebuilt: bool = False  # the customer's message rebuilt from fields: ours, so checked as ours
    redirect: bool = False
    hidden: set[str] = field(default_factory=set)  # Bcc and the log address: in the envelope only


@dataclass
class Sweep:
    wire: object
    app: object
    world: dict
    queued: list[Queued] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)

    def api(self, method: str, path: str, body, *, admin=False):
        headers = self.wire.admin_api if admin else self.wire.agent_api
        return self.app.test_client().open(path, method=method, json=body, headers=headers)

    def count(self, model) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(model))

    def refused(self, case: str, response, field_name, *, model=OutgoingMessage, before=None) -> bool:
        """Whether the call was refused as it must be: 4xx naming the field (or one of the
        fields, a tuple), nothing written."""
        if response.status_code < 400:
            return False
        self.outcomes["refused"] += 1
        if response.status_code >= 500:
            self.problems.append(f"{case}: {response.status_code}")
        names = field_name if isinstance(field_name, tuple) else (field_name,)
        if response.is_json and not set(names) & set(response.json.get("fields", {})):
            self.problems.append(f"{case}: refused ({response.status_code}) without naming {field_name}: "
                                 f"{response.json}")
        if not response.is_json and not any(f"<strong>{name}</strong>" in _error_box(response) for name in names):
            self.problems.append(f"{case}: refused ({response.status_code}) without naming {field_name}")
        if before is not None and self.count(model) != before:
            self.problems.append(f"{case}: refused, yet a {model.__name__} was written")
        return True

    def message(self, case: str, field_name, body: dict, *, rcpt=(CUSTOMER,), mail_from=SUPPORT,
                original=None, rebuilt=False, hidden=()) -> None:
        """Queues a message (POST /api/v1/messages as the agent); refused, or what must arrive."""
        body = {"kind": "origination", "to": [CUSTOMER], "subject": "Hello", "body_text": "Hi.\n", **body}
        before = self.count(OutgoingMessage)
        response = self.api("POST", "/api/v1/messages", body)
        if self.refused(case, response, field_name, before=before):
            return
        self.queued.append(Queued(case, response.json["id"], set(rcpt), mail_from, original, rebuilt,
                                  redirect=body["kind"] == "redirect", hidden=set(hidden)))

    def incoming(self, case: str, field_name: str, body: dict) -> int | None:
        """Records a customer's message on support@ as the mail receiver would; its id, or None if refused."""
        before = self.count(IncomingMessage)
        response = self.api("POST", "/api/v1/incoming", {"mailbox_id": self.world["support_id"], **body},
                            admin=True)
        if self.refused(case, response, field_name, model=IncomingMessage, before=before):
            return None
        return response.json["id"]

    def deliver_and_check(self) -> None:
        if not self.queued:
            return
        arrived = self.wire.deliver(*(q.message_id for q in self.queued))
        for queued in self.queued:
            self.outcomes["delivered"] += 1
            got = arrived[queued.message_id]
            if len(got) != 1:
                self.problems.append(f"{queued.case}: arrived {len(got)} times "
                                     f"(status {self.wire.row(queued.message_id)['status']})")
                continue
            self.problems.extend(f"{queued.case}: {problem}" for problem in arrival_problems(queued, got[0]))


def _error_box(response) -> str:
    """The message box of a refused form: the fields it names, each by its label."""
    found = re.search(r'<div class="error-box" role="alert".*?</div>', response.get_data(as_text=True), re.DOTALL)
    return found.group() if found else ""


# --- reading what arrived -------------------------------------------------------------------

# The header fields we write at the top of a message, and in the parts we build.
OUR_FIELDS = {"from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references", "mime-version",
              "content-type", "content-transfer-encoding", "content-disposition"}
RESENT_FIELDS = ["Resent-From", "Resent-Date", "Resent-Message-ID", "Resent-To"]


def header_names(data: bytes) -> list[str]:
    return list(BytesParser(policy=reading).parsebytes(data, headersonly=True).keys())


def _parts(message, inside_original=False):
    """(part, whether it is the customer's) for every part, a forwarded message's insides too."""
    yield message, inside_original
    if message.is_multipart():
        for part in message.get_payload():
            yield from _parts(part, inside_original or message.get_content_type() == "message/rfc822")


def arrival_problems(queued: Queued, received) -> list[str]:
    problems = []
    if {a.lower() for a in received.rcpt_tos} != queued.rcpt:
        problems.append(f"RCPT TO {received.rcpt_tos}, not {sorted(queued.rcpt)}")
    if received.mail_from.lower() != queued.mail_from.lower():
        problems.append(f"MAIL FROM {received.mail_from!r}, not {queued.mail_from!r}")
    data = received.data
    top = data.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace").lower()
    problems.extend(f"{address} shows in the header" for address in queued.hidden if address in top)
    message = BytesParser(policy=reading).parsebytes(data)
    carried = queued.original is not None and not queued.rebuilt
    if carried and queued.redirect:  # our Resent-* block, then the message as received
        expected = RESENT_FIELDS + header_names(queued.original)
        if list(message.keys()) != expected:
            problems.append(f"header fields {list(message.keys())}, not {expected}")
        if not data.endswith(queued.original):
            problems.append("the redirected message is not the one received")
        return problems + _value_problems(message, RESENT_FIELDS)
    injected_as_received = len(re.findall(rb"(?im)^X-Injected:", queued.original or b""))
    if len(re.findall(rb"(?im)^X-Injected:", data)) != injected_as_received:
        problems.append("a line X-Injected: that nobody wrote")
    for part, theirs in _parts(message):
        names = [name.lower() for name in part.keys()]
        if theirs and carried:
            continue  # checked as a whole below
        if theirs and part.get_content_type() != "message/rfc822":
            names = [n for n in names if n not in OUR_FIELDS]
            if names:
                problems.append(f"the forwarded message carries {names}")
            continue
        stray = [n for n in names if n not in OUR_FIELDS and not n.startswith("resent-")]
        if stray:
            problems.append(f"a part carries {stray}")
        problems.extend(_value_problems(part, part.keys()))
        if part.get_content_type() == "message/rfc822" and carried:
            inner = part.get_payload(0)
            if list(inner.keys()) != header_names(queued.original):
                problems.append(f"the forwarded message's fields {list(inner.keys())}, "
                                f"not as received {header_names(queued.original)}")
    return problems


def _value_problems(part, names) -> list[str]:
    problems = []
    for name in names:
        for value in part.get_all(name) or []:
            if _BREAKS.search(str(value)):
                problems.append(f"{name} reads as {str(value)!r}")
    return problems


# --- the fields -------------------------------------------------------------------------------


def _display_names(form: str) -> list[str]:
    return [f"{form} <{CUSTOMER}>", '"' + form.replace("\\", "\\\\").replace('"', '\\"') + f'" <{CUSTOMER}>']


def api_subject(sweep, name, form):
    sweep.message(name, "subject", {"subject": f"Hello {form}"})


def api_recipient(role):
    def attempt(sweep, name, form):
        for number, value in enumerate([f"{CUSTOMER}{form}", *_display_names(form)]):
            body = {"to": [] if role != "to" else [value], role: [value]}
            sweep.message(f"{name} #{number}", role, body, hidden=(CUSTOMER,) if role == "bcc" else ())
    return attempt


def api_filename(sweep, name, form):
    sweep.message(name, "attachments", {"attachments": [
        {"filename": f"invoice {form}.pdf", "content_type": "application/pdf", "content_base64": PDF}]})


def api_content_type(sweep, name, form):
    sweep.message(name, "attachments", {"attachments": [
        {"filename": "invoice.pdf", "content_type": f"application/pdf{form}", "content_base64": PDF}]})


class Compose:
    """The agent's Compose page: a cookie session, and its CSRF token."""

    def __init__(self, sweep):
        self.sweep = sweep
        self.client = sweep.app.test_client()
        assert login(self.client, "agent", AGENT_PASSWORD).status_code == 302
        self.token = csrf_from(self.client.get("/compose").text)

    def send(self, name, field_label, *, form=None, raw=None, boundary=None, hidden=()):
        headers = {"X-CSRFToken": self.token, "HX-Request": "true"}
        before = self.sweep.count(OutgoingMessage)
        if raw is not None:
            response = self.client.post("/compose", data=raw, headers=headers,
                                        content_type=f"multipart/form-data; boundary={boundary}")
        else:
            values = {"kind": "origination", "to": CUSTOMER, "subject": "Hello", "body_text": "Hi.\n", **form}
            response = self.client.post("/compose", data=values, headers=headers)
        if self.sweep.refused(name, response, field_label, before=before):
            return
        queued = self.sweep.count(OutgoingMessage)
        if queued != before + 1:
            self.sweep.problems.append(f"{name}: answered {response.status_code}, {queued - before} queued")
            return
        with self.sweep.app.app_context():
            newest = db.session.scalar(select(func.max(OutgoingMessage.id)))
        self.sweep.queued.append(Queued(name, newest, {CUSTOMER}, SUPPORT, hidden=set(hidden)))


def compose_subject(sweep, name, form):
    Compose(sweep).send(name, "Subject", form={"subject": f"Hello {form}"})


def compose_recipient(role, label):
    def attempt(sweep, name, form):
        page = Compose(sweep)
        for number, value in enumerate([f"{CUSTOMER}{form}", *_display_names(form)]):
            page.send(f"{name} #{number}", label, form={"to": "" if role != "to" else value, role: value},
                      hidden=(CUSTOMER,) if role == "bcc" else ())
    return attempt


def _upload(disposition: str, content_type: str) -> tuple[bytes, str]:
    """A Compose form with one file, its part's headers written as given (a browser's own bytes)."""
    boundary = "sweep-boundary-7f3a"
    lines = []
    for key, value in {"kind": "origination", "to": CUSTOMER, "subject": "Invoice", "body_text": "Attached."}.items():
        lines += [f"--{boundary}", f'Content-Disposition: form-data; name="{key}"', "", value]
    lines += [f"--{boundary}", f"Content-Disposition: form-data; name=\"attachments\"; {disposition}",
              f"Content-Type: {content_type}", "", "%PDF-1.4 test", f"--{boundary}--", ""]
    return "\r\n".join(lines).encode("utf-8"), boundary


def compose_upload_filename(sweep, name, form):
    page = Compose(sweep)
    escaped = form.replace("\\", "\\\\").replace('"', '\\"')
    encoded = quote(f"invoice {form}.pdf".encode("utf-8"), safe="")
    half = len(encoded) // 2
    while "%" in encoded[half - 2:half]:
        half -= 1
    for label, disposition in (
            ("filename=", f'filename="invoice {escaped}.pdf"'),
            ("filename*=", f"filename*=utf-8''{encoded}"),
            ("filename*0*=", f"filename*0*=utf-8''{encoded[:half]}; filename*1*={encoded[half:]}")):
        raw, boundary = _upload(disposition, "application/pdf")
        page.send(f"{name} ({label})", "Attachments", raw=raw, boundary=boundary)


def compose_upload_content_type(sweep, name, form):
    raw, boundary = _upload('filename="invoice.pdf"', f"application/pdf{form}")
    Compose(sweep).send(name, "Attachments", raw=raw, boundary=boundary)


def _mailbox_row(sweep) -> tuple:
    with sweep.app.app_context():
        mailbox = db.session.get(Mailbox, sweep.world["support_id"])
        return mailbox.address, mailbox.name


def _directory_change(sweep, name, field_name, change) -> None:
    before = _mailbox_row(sweep)
    response = change()
    if response.status_code >= 400:
        sweep.refused(name, response, field_name)
        if _mailbox_row(sweep) != before:
            sweep.problems.append(f"{name}: refused, yet the mailbox changed")
        return
    address, _ = _mailbox_row(sweep)
    sweep.message(name, "from_mailbox_id", {}, mail_from=address)


def mailbox_name_api(sweep, name, form):
    _directory_change(sweep, name, "name", lambda: sweep.api(
        "PATCH", f"/api/v1/mailboxes/{sweep.world['support_id']}", {"name": f"Acme {form}"}, admin=True))


def mailbox_name_page(sweep, name, form):
    client = sweep.app.test_client()
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 302
    token = csrf_from(client.get("/admin/directory").text)
    address, _ = _mailbox_row(sweep)
    _directory_change(sweep, name, "Display name", lambda: client.post(
        f"/admin/directory/mailboxes/{sweep.world['support_id']}", headers={"X-CSRFToken": token},
        data={"address": address, "name": f"Acme {form}", "department_id": "", "priority": "3"}))


def mailbox_address_api(sweep, name, form):
    _directory_change(sweep, name, "address", lambda: sweep.api(
        "PATCH", f"/api/v1/mailboxes/{sweep.world['support_id']}", {"address": f"support{form}@acme.test"},
        admin=True))


def log_address(sweep, name, form):
    with sweep.app.app_context():
        version = db.session.scalar(select(MailSenderSettings.version)
                                    .where(MailSenderSettings.partition_id == sweep.world["partition_id"]))
    response = sweep.api("PUT", "/api/v1/mail-sender/settings",
                         {"version": version, "log_email_address": f"{LOG}{form}"}, admin=True)
    if response.status_code >= 400:
        sweep.refused(name, response, "log_email_address")
        with sweep.app.app_context():
            if db.session.scalar(select(MailSenderSettings.version)
                                 .where(MailSenderSettings.partition_id == sweep.world["partition_id"])) != version:
                sweep.problems.append(f"{name}: refused, yet the settings changed")
        return
    saved = response.json["log_email_address"]
    sweep.message(name, "log_email_address", {}, rcpt=(CUSTOMER, saved.lower()), hidden=(saved.lower(),))


def _answers(sweep, name, incoming_id, original, *, rebuilt=False) -> None:
    """A reply, a forward and a redirect of the incoming message. Refused, each names the subject
    taken from the incoming message or the incoming message itself."""
    if incoming_id is None:
        sweep.outcomes["refused"] += 2  # three answers not tried: the refused recording counted once
        return
    answer = {"incoming_id": incoming_id, "subject": None}
    sweep.message(f"{name}, reply", ("subject", "incoming_id"), {**answer, "kind": "reply"})
    sweep.message(f"{name}, forward", ("subject", "incoming_id"), {**answer, "kind": "forward", "to": [FRIEND]},
                  rcpt=(FRIEND,), original=original, rebuilt=rebuilt)
    sweep.message(f"{name}, redirect", "incoming_id", {**answer, "kind": "redirect", "to": [FRIEND], "body_text": None},
                  rcpt=(FRIEND,), original=original, rebuilt=rebuilt)


def incoming_fields(field_name):
    def attempt(sweep, name, form):
        values = _display_names(form) if field_name == "from" else [f"Hello {form}"]
        for number, value in enumerate(values):
            case = f"{name} #{number}"
            incoming_id = sweep.incoming(case, field_name, {"from": CUSTOMER, field_name: value})
            _answers(sweep, case, incoming_id, b"", rebuilt=True)
    return attempt


def envelope_sender(sweep, name, form):
    # SMTP Envelope Sender off: a redirect's MAIL FROM is the original sender's address.
    sweep.wire.settings(envelope_sender_mailbox=False)
    for number, value in enumerate([f"{CUSTOMER}{form}", *_display_names(form)]):
        case = f"{name} #{number}"
        incoming_id = sweep.incoming(case, "from", {"from": value})
        if incoming_id is None:
            continue
        sweep.message(f"{case}, redirect", "incoming_id",
                      {"kind": "redirect", "incoming_id": incoming_id, "to": [FRIEND], "subject": None,
                       "body_text": None}, rcpt=(FRIEND,), mail_from=CUSTOMER, original=b"", rebuilt=True)


RAW_HEADERS = {
    "Subject": lambda form: b"Subject: Hello " + form,
    "From": lambda form: b'From: "' + form + b'" <' + CUSTOMER.encode() + b">",
    "Reply-To": lambda form: b"Reply-To: " + form + b" <replies@example.org>",
    "Message-ID": lambda form: b"Message-ID: <a" + form + b"@example.org>",
    "References": lambda form: b"References: <first@example.org> " + form,
}


def raw_header(header):
    def attempt(sweep, name, form):
        lines = {"From": f"Customer <{CUSTOMER}>".encode(), "To": SUPPORT.encode(), "Subject": b"Where is my order?",
                 "Message-ID": b"<original@example.org>", "Date": b"Mon, 30 Nov 2026 10:00:00 +0000",
                 "References": b"<first@example.org>", "Reply-To": b"<replies@example.org>"}
        made = [RAW_HEADERS[header](form.encode("utf-8")) if key == header else key.encode() + b": " + value
                for key, value in lines.items()]
        raw = b"\r\n".join(made) + b"\r\n\r\nHello\r\n"
        incoming_id = sweep.incoming(name, "raw", {"raw": base64.b64encode(raw).decode("ascii")})
        original = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
        _answers(sweep, name, incoming_id, original)
    return attempt


FIELDS = {
    "subject (API)": api_subject,
    "To (API)": api_recipient("to"),
    "Cc (API)": api_recipient("cc"),
    "Bcc (API)": api_recipient("bcc"),
    "attachment file name (API)": api_filename,
    "attachment content type (API)": api_content_type,
    "subject (Compose)": compose_subject,
    "To (Compose)": compose_recipient("to", "To"),
    "Cc (Compose)": compose_recipient("cc", "Cc"),
    "Bcc (Compose)": compose_recipient("bcc", "Bcc"),
    "attachment file name (Compose upload)": compose_upload_filename,
    "attachment content type (Compose upload)": compose_upload_content_type,
    "mailbox display name (directory API)": mailbox_name_api,
    "mailbox display name (directory page)": mailbox_name_page,
    "mailbox address (directory API)": mailbox_address_api,
    "log Bcc address (settings)": log_address,
    "incoming sender as From (fields)": incoming_fields("from"),
    "incoming subject (fields)": incoming_fields("subject"),
    "original sender as envelope sender (settings)": envelope_sender,
    **{f"incoming raw {header}": raw_header(header) for header in RAW_HEADERS},
}


@pytest.mark.parametrize("field_name", FIELDS)
def test_no_form_of_line_break_smuggles_a_header_or_a_recipient(request, app, world, wire, field_name):
    if not request.config.pluginmanager.is_registered(TALLY):
        request.config.pluginmanager.register(TALLY, "header-injection-tally")
    started = time.monotonic()
    sweep = Sweep(wire, app, world)
    for form_name, form in FORMS.items():
        FIELDS[field_name](sweep, f"{field_name}, {form_name}", form)
    sweep.deliver_and_check()
    TALLY.outcomes.update(sweep.outcomes)
    TALLY.fields += 1
    TALLY.seconds += time.monotonic() - started
    assert sum(sweep.outcomes.values()) >= len(FORMS)
    assert not sweep.problems, "\n".join(sweep.problems)
