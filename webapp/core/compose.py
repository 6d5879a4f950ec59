"""Settings + message → the bytes to send, their envelope sender, and who is withheld in training.

Rendered once at enqueue, and again only when a setting the bytes depend on changes, so the drain path
never builds or parses a message. Every header this module writes is checked twice: each value
before it is written (no CR, LF or NUL, also inside encoded words), and the finished bytes are
read back with the email package and must say exactly what was meant — the same headers, the
same addresses, the same subject — or the message is refused with the reason (ComposeError).

Header values are encoded and folded here rather than by the email package, because its
folding decodes encoded-word look-alikes typed by people (`=?utf-8?q?=0A?=`) into the very
line breaks it should keep out, and loses such text when it is harmless.
"""
from __future__ import annotations

import base64
import codecs
import re
from dataclasses import dataclass
from email.charset import Charset
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.policy import EmailPolicy
from email.policy import default as PARSING
from email.utils import format_datetime, make_msgid
from urllib.parse import quote

from .addresses import DEFAULT_CONTENT_TYPE, Address, AddressError, check_header_value, parse_address
from .database import db
from .from_rules import mailbox_header
from .models import IncomingMessage, Mailbox, MailSenderSettings, OutgoingMessage
from .settings.fields import MIME_CHARSETS
from .settings.store import company_domains
from .states import COLLABORATE, FORWARD, RCPT_DEFERRED, RCPT_PENDING, RCPT_TRAINING, REDIRECT, REPLY
from .tracking import add_to_subject


class _AsWritten(EmailPolicy):
    """SMTP's policy, but a header field read from source is written on the lines it came on.

    The email package splits such a field with str.splitlines(), which also breaks at VT, FF,
    FS, GS and RS: a forwarded message with one of them in a header field would go out with a
    header line its sender never wrote. Only CR and LF end a line here, as in the parser.
    """

    def fold_binary(self, name, value):
        if hasattr(value, "name") or self.refold_source != "none":
            return super().fold_binary(name, value)
        folded = name + ": " + self.linesep.join(re.split(r"\r\n|\r|\n", value)) + self.linesep
        return folded.encode("utf8" if self.utf8 else "ascii", "surrogateescape")


# Raw header values made here are folded already: written as they are, never refolded.
GENERATING = _AsWritten(linesep="\r\n", refold_source="none")
MAX_LINE = 78
TRAINING_TEXT = "withheld: training mode is on and the address is outside the company domains"
# Kinds whose subject carries the tracking ID whatever the setting.
TRACKED_KINDS = (FORWARD, COLLABORATE)
# A msg-id we repeat (In-Reply-To, References): no "=?" in it, which readers decode as an encoded word.
_MSG_ID = re.compile(r"<(?:[\x21-\x3b\x3f-\x7e]|=(?!\?))+>")
# A msg-id someone hands us as a field (a structured incoming message's Message-ID, In-Reply-To,
# References): RFC 5322 3.6.4 without the obsolete forms, <id-left@id-right>, each a dot-atom-text
# or the right a domain literal. Stricter than _MSG_ID, which reads what arrived in raw bytes.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_GIVEN_MSG_ID = re.compile(rf"<{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[\x21-\x5a\x5e-\x7e]*\])>")
MSG_ID_MAX_LENGTH = 250
REFERENCES_MAX = 100
# The most msg-ids a reply's References carries: the thread's first and its latest, the way RFC
# 5537 3.4.4 trims, so that a long thread does not grow the header without limit.
THREAD_MAX = 20
# A msg-id read from raw bytes that could not go on one header line (998) is not repeated.
_LINE_FIT = 998 - len("In-Reply-To: ")
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_PRINTABLE = re.compile(r"[\x20-\x7e\t]*\Z")
_QUOTE_PREFIX = re.compile(r"(?:>[ \t]?)+")


class ComposeError(ValueError):
    """A message that cannot be composed safely; the text says why, for a person, and `field`
    names the input at fault where it is known (the subject, the incoming message)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass
class Composed:
    """What is stored for sending: the bytes, MAIL FROM, and the charset of the text."""

    data: bytes
    envelope_from: str
    charset: str | None


def make_message_id(from_address: str) -> str:
    """A Message-ID in the From address's domain, made once when the message is queued."""
    domain = from_address.rpartition("@")[2].strip(" >") or "mailsender.invalid"
    return make_msgid(domain=domain)


# --- parameters -----------------------------------------------------------------------------


def subject_for(message: OutgoingMessage, settings: MailSenderSettings) -> str:
    """The subject as sent: with the case's tracking ID when the setting is on, and always for
    forward, collaborate and Keep Case Ownership; never twice. A redirect keeps its subject."""
    subject = message.subject or ""
    if message.kind == REDIRECT or not message.tracking_id:
        return subject
    if settings.tracking_id_enabled or message.kind in TRACKED_KINDS or message.keep_case_ownership:
        return add_to_subject(subject, message.tracking_id)
    return subject


def envelope_sender(message: OutgoingMessage, settings: MailSenderSettings,
                    mailbox: Mailbox | None = None) -> str:
    """MAIL FROM: the From mailbox's address; for a redirect, the mailbox's address when "SMTP
    Envelope Sender" is on, else the original sender's (who stays in From either way)."""
    if message.kind == REDIRECT and settings.envelope_sender_mailbox and mailbox is not None:
        return parse_address(mailbox.address).address
    return _parsed(message.from_address, "From").address


def wrap_text(text: str, width: int | None) -> str:
    """Plain text hard-wrapped at `width` characters; None or 0: unchanged.

    Lines break only at spaces, so a word or URL longer than the width stays whole on a line of
    its own; a quoted line keeps its prefix (`> `, `>> `) on every line it becomes.
    """
    if not width:
        return text
    out: list[str] = []
    for line in text.split("\n"):
        out.extend(_wrap_line(line, width))
    return "\n".join(out)


def _wrap_line(line: str, width: int) -> list[str]:
    if len(line) <= width:
        return [line]
    quoted = _QUOTE_PREFIX.match(line)
    prefix = quoted.group() if quoted else ""
    # Each piece: the whitespace before a word, and the word; the first keeps its indentation.
    pieces = re.findall(r"(\s*)(\S+)", line[len(prefix):])
    if len(pieces) <= 1:
        return [line]
    continuation = prefix if not prefix or prefix.endswith((" ", "\t")) else prefix + " "
    lines: list[str] = []
    current = prefix + pieces[0][0] + pieces[0][1]
    for space, word in pieces[1:]:
        if len(current) + len(space) + len(word) <= width:
            current += space + word
        else:
            lines.append(current)
            current = continuation + word
    lines.append(current)
    return lines


def body_charset(text: str, default_charset: str | None) -> str:
    """The default charset's MIME name where it can carry `text`, else utf-8 (nothing is lost)."""
    name = _mime_charset(default_charset or "utf-8")
    try:
        text.encode(name)
        return name
    except (UnicodeEncodeError, LookupError):
        return "utf-8"


# The codecs of the MIME charsets Save accepts (settings/fields.py), whatever alias names them.
_MIME_CODECS = {codecs.lookup(name).name for name in MIME_CHARSETS}


def _mime_charset(name: str) -> str:
    """The MIME name of one of the MIME charsets (`latin1` → iso-8859-1, `utf8` → utf-8); utf-8 for
    any other name, known to Python or not, so that a row saved before Save checked the name
    (idna, punycode …) still composes every message."""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        return "utf-8"
    if codec not in _MIME_CODECS:
        return "utf-8"
    if codec == "ascii":
        return "us-ascii"
    if re.fullmatch(r"iso8859-\d+", codec):
        return codec.replace("iso8859", "iso-8859")
    if codec.startswith("iso2022_"):
        return "iso-2022-" + codec[len("iso2022_"):].replace("_", "-")
    if re.fullmatch(r"cp125\d", codec):
        return codec.replace("cp", "windows-")
    return Charset(codec).input_charset


def training_domains(settings: MailSenderSettings) -> set[str] | None:
    """The company's domains while training mode is on; None when it is off (nothing withheld)."""
    if not settings.training_enabled:
        return None
    return {domain.lower().strip() for domain in company_domains(settings)}


def is_withheld(address: str, domains: set[str] | None) -> bool:
    """In training mode, an address outside the company domains (exactly, not their subdomains)."""
    return domains is not None and address.rpartition("@")[2].lower() not in domains


def decide_training(message: OutgoingMessage, domains: set[str] | None) -> None:
    """Withholds the message's outside recipients while training mode is on (log Bcc included).

    Decided again for recipients not yet settled, and for those withheld before the message was
    ever handed to a server (training mode turned off since). Sets `message.training`.
    """
    for recipient in message.recipients:
        open_ = recipient.status in (RCPT_PENDING, RCPT_DEFERRED, None)
        withheld_before_any_attempt = recipient.status == RCPT_TRAINING and not message.attempt_count
        if not (open_ or withheld_before_any_attempt):
            continue
        if is_withheld(recipient.address, domains):
            recipient.status, recipient.text = RCPT_TRAINING, TRAINING_TEXT
        elif recipient.status == RCPT_TRAINING:
            recipient.status, recipient.text = RCPT_PENDING, None
    message.training = any(r.status == RCPT_TRAINING for r in message.recipients)


# --- header values ----------------------------------------------------------------------------


def _checked(value: str, what: str, field: str | None = None) -> str:
    try:
        return check_header_value(value, what)
    except AddressError as error:
        raise ComposeError(str(error), field) from None


def _parsed(value: str, what: str, field: str | None = None) -> Address:
    try:
        return parse_address(value)
    except AddressError as error:
        raise ComposeError(f"{what}: {error}", field) from None


def _header_charset(text: str, charset: str) -> str:
    """The charset for encoded words: the default where it carries the text and has an encoding
    for headers (us-ascii has none: it would write the text bare), else utf-8."""
    try:
        text.encode(charset)
        return charset if Charset(charset.lower()).header_encoding else "utf-8"
    except (UnicodeEncodeError, LookupError):
        return "utf-8"


def _fold_at(pieces: list[str], name: str) -> str | None:
    """Pieces (each after the first begins with its separating space) folded into lines of at
    most MAX_LINE; None when one piece alone is too long."""
    lines, current = [], f"{name}: {pieces[0]}"
    for piece in pieces[1:]:
        if len(current) + len(piece) > MAX_LINE:
            lines.append(current)
            current = piece
        else:
            current += piece
    lines.append(current)
    if any(len(line) > MAX_LINE for line in lines):
        return None
    return "\r\n".join(lines)[len(name) + 2:]


def _encoded(text: str, name: str, charset: str) -> str:
    return Header(text, _header_charset(text, charset), header_name=name,
                  maxlinelen=MAX_LINE).encode(linesep="\r\n")


def unstructured_value(name: str, text: str, charset: str) -> str:
    """An unstructured field (Subject) as written: plain where plain text reads back exactly,
    else RFC 2047 encoded words in the charset (utf-8 where it does not fit)."""
    if text == "":
        return ""
    if (_PRINTABLE.match(text) and "=?" not in text and text == text.strip()):
        folded = _fold_at(re.split(r"(?=[ \t])(?<=\S)", text), name)
        if folded is not None:
            return folded
    return _encoded(text, name, charset)


def _phrase(display_name: str, name: str, charset: str) -> str:
    if _ATOM_PHRASE.match(display_name) and "=?" not in display_name:
        return display_name
    if _PRINTABLE.match(display_name) and "=?" not in display_name and "\t" not in display_name \
            and display_name == display_name.strip():
        return '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    # One encoded word, however long: readers disagree on the space between adjacent encoded
    # words in a phrase (RFC 2047 drops it; the email package adds one).
    return Header(display_name, _header_charset(display_name, charset), maxlinelen=10000).encode()


def address_value(name: str, addresses: list[Address], charset: str) -> str:
    """An address field as written: `phrase <addr>` or `addr`, comma-separated, folded between
    words (never inside an address or a quoted name)."""
    chunks: list[str] = []
    for index, address in enumerate(addresses):
        if address.display_name:
            chunks.extend(_phrase(address.display_name, name, charset).split("\r\n "))
            chunks.append(f"<{address.address}>")
        else:
            chunks.append(address.address)
        if index < len(addresses) - 1:
            chunks[-1] += ","
    lines, current = [], f"{name}:"
    for chunk in chunks:
        if current != f"{name}:" and len(current) + 1 + len(chunk) > MAX_LINE:
            lines.append(current)
            current = " " + chunk
        else:
            current += " " + chunk
    lines.append(current)
    return "\r\n".join(lines)[len(name) + 2:]


def _msg_ids_value(name: str, ids: list[str]) -> str:
    return _fold_at([(" " if index else "") + msg_id for index, msg_id in enumerate(ids)], name) \
        or " ".join(ids)


# --- the message ----------------------------------------------------------------------------


@dataclass
class _Header:
    name: str
    value: str  # as written (folded, encoded)
    meaning: object  # what it must read back as: a str, or a list of Address


def display_name(text: str) -> str:
    """A display name as it goes out: runs of spaces and tabs are one space in a phrase, and mail
    readers show them so, so it is written that way from the start."""
    return re.sub(r"[ \t]+", " ", text or "").strip()


def _address_header(name: str, addresses: list[Address], charset: str) -> _Header:
    addresses = [Address(a.address, display_name(a.display_name)) for a in addresses]
    return _Header(name, address_value(name, addresses, charset), addresses)


def _text_header(name: str, text: str, charset: str) -> _Header:
    return _Header(name, unstructured_value(name, text, charset), text)


def _plain_header(name: str, value: str) -> _Header:
    _checked(value, name)
    return _Header(name, value, value)


def _valid_msg_id(value: str | None) -> str | None:
    value = (value or "").strip()
    if value and not value.startswith("<"):
        value = f"<{value}>"
    return value if _MSG_ID.fullmatch(value) else None


def given_msg_id(value: str, what: str) -> str:
    """`value` when it is one msg-id we may repeat in a header field, else ComposeError saying why
    (`what` names it for a person)."""
    _checked(value, what)
    if len(value) > MSG_ID_MAX_LENGTH:
        raise ComposeError(f"{what}: at most {MSG_ID_MAX_LENGTH} characters.")
    if "=?" in value:  # readers decode it as an encoded word, even inside angle brackets
        raise ComposeError(f"{what}: no encoded word (=?) in a Message-ID.")
    if not _GIVEN_MSG_ID.fullmatch(value):
        raise ComposeError(f"{what} must be one Message-ID such as <id@example.org>.")
    return value


def given_msg_ids(value: str | list[str], what: str) -> list[str]:
    """The msg-ids of a References field given as a list or as one text separated by spaces,
    each checked as given_msg_id, in order and without repeats; at most REFERENCES_MAX."""
    if isinstance(value, str):
        _checked(value, what)  # a line break is refused as one, not read as a separator
        value = value.split()
    found: list[str] = []
    for number, item in enumerate(value, start=1):
        msg_id = given_msg_id(item.strip(" \t"), f"{what} (Message-ID {number})")
        if msg_id not in found:
            found.append(msg_id)
    if len(found) > REFERENCES_MAX:
        raise ComposeError(f"{what}: at most {REFERENCES_MAX} Message-IDs.")
    return found


def raw_thread(raw: bytes) -> tuple[str, list[str]]:
    """The thread a message's raw bytes name: In-Reply-To's first msg-id ("" for none) and the
    msg-ids of References, without repeats. A field that cannot be read is left out."""
    def msg_ids(name: str) -> list[str]:
        found: list[str] = []
        try:
            for value in parsed.get_all(name) or []:
                found.extend(m for m in _MSG_ID.findall(str(value)) if m not in found and len(m) <= _LINE_FIT)
        except Exception:  # an unreadable field is left out, not the reply
            return []
        return found

    try:
        parsed = BytesHeaderParser(policy=PARSING).parsebytes(raw)
    except Exception:
        return "", []
    replied = msg_ids("In-Reply-To")
    return (replied[0] if replied else ""), msg_ids("References")


def _references(incoming: IncomingMessage) -> list[str]:
    """A reply's References (RFC 5322 3.6.4): the incoming message's References, else its
    In-Reply-To, then its own Message-ID; at most THREAD_MAX, the first and the latest.
    For a raw message, as its bytes say; for one given as fields, as recorded."""
    if incoming.raw:
        in_reply_to, found = raw_thread(incoming.raw)
    else:
        in_reply_to = _valid_msg_id(incoming.in_reply_to) or ""
        found = [m for m in map(_valid_msg_id, incoming.reference_ids or []) if m]
    if not found and in_reply_to:
        found = [in_reply_to]
    own = _valid_msg_id(incoming.message_id)
    if own and own not in found:
        found.append(own)
    return found if len(found) <= THREAD_MAX else found[:1] + found[-(THREAD_MAX - 1):]


def _text_part(mime: EmailMessage, text: str, subtype: str, charset: str, *, alternative: bool = False) -> str:
    """Adds `text` as a text part in the charset that carries it; 7bit where it can be, else
    quoted-printable, which keeps long lines whole without a hard wrap. Returns the charset."""
    chosen = body_charset(text, charset)
    data = text.encode(chosen)
    short = all(len(line) <= MAX_LINE for line in data.split(b"\n"))
    cte = "7bit" if data.isascii() and short else "quoted-printable"
    if alternative:
        mime.add_alternative(text, subtype=subtype, charset=chosen, cte=cte)
    else:
        mime.set_content(text, subtype=subtype, charset=chosen, cte=cte)
    return chosen


def _normal_newlines(text: str) -> str:
    return (text or "").replace("\r\n", "\n").replace("\r", "\n")


def _body(mime: EmailMessage, text: str, html: str, settings: MailSenderSettings, *,
          width: int | None) -> str | None:
    """Sets the bodies on `mime`: text (wrapped), with an HTML alternative when there is HTML."""
    charset = _mime_charset(settings.default_charset or "utf-8")
    text, html = _normal_newlines(text), _normal_newlines(html)
    if html and not text:
        return _text_part(mime, html, "html", charset)
    chosen = _text_part(mime, wrap_text(text, width), "plain", charset)
    if html:
        _text_part(mime, html, "html", charset, alternative=True)
    return chosen


# RFC 2231 attribute-char: what a parameter value may carry without percent-encoding.
_ATTRIBUTE_CHARS = "!#$&+-.^_`|~"
# A plain, quoted file name: printable ASCII but the quote, the backslash and what could start an
# encoded word (which readers decode even inside quotes).
_PLAIN_FILENAME = re.compile(r"[\x20-\x7e]+\Z")


def disposition_value(filename: str) -> str:
    """The Content-Disposition value of an attachment named `filename`, as written: quoted where
    the name is plain ASCII, else per RFC 2231 (`filename*=utf-8''…`, continued over several
    lines where long), so that no reader decodes it as an encoded word."""
    if _PLAIN_FILENAME.match(filename) and not set(filename) & set('"\\') and "=?" not in filename \
            and len(filename) < 60:
        return f'attachment; filename="{filename}"'
    encoded = quote(filename.encode("utf-8"), safe=_ATTRIBUTE_CHARS)
    chunks, start = [], 0
    while start < len(encoded):  # pieces of at most 60, never cutting a %XX in two
        end = min(start + 60, len(encoded))
        while end < len(encoded) and "%" in encoded[end - 2:end]:
            end -= 1
        chunks.append(encoded[start:end])
        start = end
    if len(chunks) == 1:
        return f"attachment; filename*=utf-8''{encoded}"
    pieces = [f"filename*{n}*=" + ("utf-8''" if n == 0 else "") + chunk for n, chunk in enumerate(chunks)]
    return "attachment;\r\n " + ";\r\n ".join(pieces)


def _attach(mime: EmailMessage, attachments: list[dict]) -> None:
    for number, attachment in enumerate(attachments or [], start=1):
        filename = _checked(attachment.get("filename") or f"attachment-{number}",
                            f"The file name of attachment {number}")
        content_type = _checked(attachment.get("content_type") or DEFAULT_CONTENT_TYPE,
                                f"The content type of attachment {number}")
        maintype, _, subtype = content_type.partition("/")
        data = base64.b64decode(attachment["content_base64"])
        # The name is not handed to the email package, which would decode an encoded word in it.
        mime.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream")
        part = mime.get_payload()[-1]
        del part["Content-Disposition"]
        part.set_raw("Content-Disposition", disposition_value(filename))


def original_bytes(incoming: IncomingMessage, settings: MailSenderSettings) -> bytes:
    """The incoming message as received: its raw bytes (CRLF line ends), or, when only its fields
    were given, a faithful rebuild of them (From, To the mailbox, Subject, Date, Message-ID, bodies)."""
    if incoming.raw:
        return re.sub(rb"\r\n|\r|\n", b"\r\n", incoming.raw)
    charset = _mime_charset(settings.default_charset or "utf-8")
    headers = [_address_header("From", [_parsed(incoming.from_address, "The original sender", "incoming_id")],
                               charset)]
    if incoming.mailbox is not None:
        headers.append(_address_header("To", [_parsed(incoming.mailbox.address, "The mailbox")], charset))
    if incoming.subject:
        headers.append(_text_header("Subject", _checked(incoming.subject, "The original subject", "incoming_id"),
                                    charset))
    headers.append(_plain_header("Date", format_datetime(incoming.received_at)))
    msg_id = _valid_msg_id(incoming.message_id)
    if msg_id:
        headers.append(_plain_header("Message-ID", msg_id))
    replied = _valid_msg_id(incoming.in_reply_to)
    if replied:
        headers.append(_plain_header("In-Reply-To", replied))
    references = [m for m in map(_valid_msg_id, incoming.reference_ids or []) if m]
    if references:
        headers.append(_Header("References", _msg_ids_value("References", references),
                               _checked(" ".join(references), "References")))
    mime = EmailMessage(policy=GENERATING)
    for header in headers:
        mime.set_raw(header.name, header.value)
    _body(mime, incoming.body_text, incoming.body_html, settings, width=None)
    return mime.as_bytes(policy=GENERATING)


def compose(message: OutgoingMessage, settings: MailSenderSettings, *,
            incoming: IncomingMessage | None = None, mailbox: Mailbox | None = None) -> Composed:
    """The bytes of `message` under `settings`, checked; ComposeError when they cannot be made safely.

    `incoming` is the message a reply, forward, collaborate or redirect is about; `mailbox` the
    From mailbox (a redirect's Resent-From and, with "SMTP Envelope Sender" on, its MAIL FROM).
    """
    charset = _mime_charset(settings.default_charset or "utf-8")
    envelope = envelope_sender(message, settings, mailbox)
    if message.kind == REDIRECT:
        return _compose_redirect(message, settings, incoming, mailbox, envelope, charset)

    headers = [
        _address_header("From", [_parsed(message.from_address, "From")], charset),
    ]
    if message.to_addresses:
        headers.append(_address_header("To", [_parsed(a, "To") for a in message.to_addresses], charset))
    if message.cc_addresses:
        headers.append(_address_header("Cc", [_parsed(a, "Cc") for a in message.cc_addresses], charset))
    _checked(message.subject or "", "The subject", "subject")  # before the tag's strip() could hide a break
    subject = subject_for(message, settings)
    headers.append(_text_header("Subject", _checked(subject, "The subject", "subject"), charset))
    headers.append(_plain_header("Date", format_datetime(message.queued_at)))
    headers.append(_plain_header("Message-ID", _checked(message.message_id, "The Message-ID")))
    if message.kind == REPLY and incoming is not None:
        references = _references(incoming)
        if references:
            headers.append(_plain_header("In-Reply-To", references[-1]))
            headers.append(_Header("References", _msg_ids_value("References", references),
                                   _checked(" ".join(references), "References")))

    mime = EmailMessage(policy=GENERATING)
    for header in headers:
        mime.set_raw(header.name, header.value)
    chosen = _body(mime, message.body_text, message.body_html, settings, width=settings.column_width)
    original = None
    if message.kind == FORWARD and incoming is not None:
        original = original_bytes(incoming, settings)
        mime.add_attachment(BytesParser(policy=GENERATING).parsebytes(original))
    _attach(mime, message.attachments)
    data = mime.as_bytes(policy=GENERATING)
    _read_back(data, headers, only_ours=True)
    _read_back_parts(data, [a.get("filename") or f"attachment-{n}" for n, a in enumerate(message.attachments or [], 1)],
                     original)
    return Composed(data, envelope, chosen)


def _compose_redirect(message, settings, incoming, mailbox, envelope, charset) -> Composed:
    if incoming is None:
        raise ComposeError("A redirect needs the incoming message it resends.")
    # Resent by the mailbox it came in on, named as its From header would name it.
    resent_from = _parsed(mailbox_header(mailbox) if mailbox is not None else envelope, "Resent-From")
    headers = [
        _address_header("Resent-From", [resent_from], charset),
        _plain_header("Resent-Date", format_datetime(message.queued_at)),
        _plain_header("Resent-Message-ID", _checked(message.message_id, "The Message-ID")),
    ]
    if message.to_addresses:
        headers.append(_address_header("Resent-To", [_parsed(a, "To") for a in message.to_addresses], charset))
    if message.cc_addresses:
        headers.append(_address_header("Resent-Cc", [_parsed(a, "Cc") for a in message.cc_addresses], charset))
    block = "".join(f"{h.name}: {h.value}\r\n" for h in headers).encode("ascii")
    data = block + original_bytes(incoming, settings)
    _read_back(data, headers, only_ours=False)
    return Composed(data, envelope, message.charset)


# Fields the email package adds on the top level of a message it builds.
_MIME_FIELDS = {"mime-version", "content-type", "content-transfer-encoding"}


# The header fields of a part we build, under the top level.
_PART_FIELDS = _MIME_FIELDS | {"content-disposition"}


def _read_back_parts(data: bytes, filenames: list[str], original: bytes | None = None) -> None:
    """Parses the whole message as a receiver would and refuses it unless every part we built
    has only the MIME fields, none of them carrying a line break or NUL once unfolded (the
    boundary and the charset included), and each attachment reads back with its name as given.
    A forwarded message (message/rfc822) is the customer's own: its insides are not ours, but
    its header fields must read back as those of `original`, as received."""
    parsed = BytesParser(policy=PARSING).parsebytes(data)
    names = []
    for part in _our_parts(parsed):
        if original is not None and part.get_content_type() == "message/rfc822":
            received = BytesHeaderParser(policy=PARSING).parsebytes(original).keys()
            if part.get_payload(0).keys() != received:
                raise ComposeError("the forwarded message would carry other header fields than it came with",
                                   "incoming_id")
        for name, raw in part.raw_items():
            if part is not parsed and name.lower() not in _PART_FIELDS:
                raise ComposeError(f"a part of the message would carry the header field {name}")
            if re.search(r"[\r\n\x00]", re.sub(r"\r?\n(?=[ \t])", "", raw).rstrip("\r\n")):
                raise ComposeError(f"the {name} field of a part would carry a line break or NUL")
        if part.get_content_disposition() == "attachment" and part.get_content_type() != "message/rfc822":
            names.append(part.get_filename())
    if names != filenames:
        raise ComposeError(f"the attachments would be named {names}, not {filenames}")


def _our_parts(message):
    yield message
    if message.is_multipart():
        for part in message.get_payload():
            if part.get_content_type() == "message/rfc822":
                yield part  # its own headers, not what it holds
            else:
                yield from _our_parts(part)


def _read_back(data: bytes, headers: list[_Header], *, only_ours: bool) -> None:
    """Parses the finished header section as a receiver would and refuses the message unless our
    header fields read back exactly as meant: the same fields in the same order, the same
    addresses and text, no line break or NUL in any value, and (for our own messages) no field
    we did not write, no Bcc. Address fields and encoded words go through the email package's
    parser (the one whose mistakes matter); plain text only needs unfolding.
    """
    end = data.find(b"\r\n\r\n")
    parsed = BytesHeaderParser(policy=PARSING).parsebytes(data[:end + 4] if end >= 0 else data)
    items = list(parsed.raw_items())
    names = [name for name, _ in items]
    expected = [h.name for h in headers]
    if names[:len(expected)] != expected:
        raise ComposeError(f"the header fields would read back as {names[:len(expected)]}, "
                           f"not {expected}")
    if only_ours:
        extra = [n for n in names[len(expected):] if n.lower() not in _MIME_FIELDS]
        if extra or len(names) - len(expected) > len(_MIME_FIELDS):
            raise ComposeError(f"the message would carry header fields nobody wrote: {extra or names}")
    for header, (name, raw) in zip(headers, items):
        unfolded = re.sub(r"\r\n(?=[ \t])", "", raw)
        if re.search(r"[\r\n\x00]", unfolded):
            raise ComposeError(f"the {name} field would carry a line break or NUL")
        if isinstance(header.meaning, list):
            value = PARSING.header_fetch_parse(name, raw)
            got = [(a.addr_spec.lower(), a.display_name) for a in getattr(value, "addresses", ())]
            meant = [(a.address.lower(), a.display_name) for a in header.meaning]
            if got != meant:
                raise ComposeError(f"the {name} field would read back as {got}, not {meant}")
            continue
        text = str(PARSING.header_fetch_parse(name, raw)) if "=?" in unfolded else unfolded
        if re.search(r"[\r\n\x00]", text):
            raise ComposeError(f"the {name} field would carry a line break or NUL")
        if text != header.meaning:
            raise ComposeError(f"the {name} field would read back as {text!r}, not {header.meaning!r}")


# --- storing ----------------------------------------------------------------------------------


def render(message: OutgoingMessage, settings: MailSenderSettings, domains: set[str] | None = None) -> None:
    """Stores the message's bytes, envelope sender and charset under the settings' version, and
    re-decides training for its recipients. ComposeError when it cannot be composed safely.

    `domains`: training_domains(settings), when the caller has it already (one query per batch).
    """
    incoming = db.session.get(IncomingMessage, message.incoming_id) if message.incoming_id else None
    mailbox = db.session.get(Mailbox, message.from_mailbox_id) if message.from_mailbox_id else None
    composed = compose(message, settings, incoming=incoming, mailbox=mailbox)
    message.rendered = composed.data
    message.rendered_version = settings.render_version
    message.envelope_from = composed.envelope_from
    if composed.charset:
        message.charset = composed.charset
    decide_training(message, domains if domains is not None else training_domains(settings))
