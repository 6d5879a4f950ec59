"""Outgoing and incoming messages: validating, building and queueing them.

One function each for the compose form and the API alike: `submit_message` (an agent's message
to the queue) and `record_incoming` (a customer's message as the mail receiver got it). Both
check every field before writing anything, and commit once.
"""
from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.parser import BytesParser

from flask import current_app
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from . import audit, send_later, tracking
from .addresses import (
    DEFAULT_CONTENT_TYPE,
    AddressError,
    check_content_type,
    check_header_value,
    decode_header_text,
    parse_address,
    split_address_list,
)
from .clock import iso, lifetime_end, utcnow
from .compose import (
    ComposeError,
    given_msg_id,
    given_msg_ids,
    is_withheld,
    make_message_id,
    raw_thread,
    render,
    training_domains,
)
from .database import db, newest_first
from .directory.lookups import get_in_partition, mailboxes_seen_by, parse_id, sees_mailbox
from .from_rules import decide_from
from .logs import log_after_commit
from .models import (
    Case,
    IncomingMessage,
    Mailbox,
    MailSenderSettings,
    MessageRecipient,
    OutgoingMessage,
    Partition,
    User,
)
from .refusal import Refusal
from .settings.store import get_settings
from .states import (
    ANSWER_LABELS,
    FORWARD,
    LOG_ROLE,
    MESSAGE_KINDS,
    ORIGINATION,
    PENDING_STATES,
    QUEUED,
    RCPT_TRAINING,
    REDIRECT,
    REPLY,
    SCHEDULED,
    SHOWN_STATES,
)

log = logging.getLogger("mailsender.outbox")

# What the browser calls each field, for message boxes that name every bad field by its label.
FIELD_LABELS = {
    "kind": "Kind",
    "incoming_id": "Incoming message",
    "from_mailbox_id": "From",
    "to": "To",
    "cc": "Cc",
    "bcc": "Bcc",
    "subject": "Subject",
    "body_text": "Text",
    "body_html": "HTML",
    "attachments": "Attachments",
    "keep_case_ownership": "Keep Case Ownership",
    "send_at": "Send at",
    "Idempotency-Key": "Idempotency-Key",
}
# The header fields of an incoming message's thread, as given in its fields.
THREAD_LABELS = {"message_id": "Message-ID", "in_reply_to": "In-Reply-To", "references": "References"}

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}\Z")


class MessageError(Refusal):
    """A refused message: the status to answer, a sentence, and every bad field with its reason."""


@dataclass
class Submitted:
    """What a submission produced; `created` is False when an Idempotency-Key answered it."""

    message: OutgoingMessage
    created: bool


@dataclass
class Recorded:
    incoming: IncomingMessage
    created: bool


# --- field checks -------------------------------------------------------------------------


def check_idempotency_key(key: str | None) -> str | None:
    """The key, or None when absent; MessageError 400 for one that is not 1..200 visible ASCII."""
    if key is None or key == "":
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise MessageError(400, "The Idempotency-Key header must be 1 to 200 visible ASCII characters.",
                           {"Idempotency-Key": "1 to 200 visible ASCII characters, no spaces."})
    return key


def _address_items(value, name: str, errors: dict) -> list[str]:
    """The unparsed addresses of a list of strings or of one comma-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return split_address_list(value) if not any(c in value for c in "\r\n\x00") else [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item for item in value if item.strip()]
    errors[name] = "A list of e-mail addresses is expected."
    return []


def _parse_addresses(items: list[str], name: str, errors: dict) -> list[str]:
    """The normalised addresses; every bad one is named in errors[name]."""
    result, problems = [], []
    for item in items:
        try:
            result.append(parse_address(item).address)
        except AddressError as error:
            problems.append(str(error))
    if problems:
        errors[name] = " ".join(problems)
    return result


def _recipients(data: dict, errors: dict) -> tuple[list[str], list[str], list[str]]:
    """To, Cc and Bcc, counted before any is parsed: past MAILSENDER_MAX_RECIPIENTS in all, each
    list that has some is named and none is parsed (a list of 100,000 would hold the write lock)."""
    items = {name: _address_items(data.get(name), name, errors) for name in ("to", "cc", "bcc")}
    limit = current_app.config["MAILSENDER_MAX_RECIPIENTS"]
    total = sum(len(found) for found in items.values())
    if total > limit:
        for name, found in items.items():
            if found:
                errors[name] = (f"At most {limit} recipients in all (To, Cc and Bcc together); "
                                f"this message has {total}.")
        return [], [], []
    to, cc, bcc = (_parse_addresses(items[name], name, errors) for name in ("to", "cc", "bcc"))
    return to, cc, bcc


def _text(value, name: str, errors: dict, *, header: bool = False, label: str | None = None) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        errors[name] = "Text is expected."
        return ""
    if header:
        try:
            check_header_value(value, label or FIELD_LABELS.get(name, name))
        except AddressError as error:
            errors[name] = str(error)
            return ""
        limit = current_app.config["MAILSENDER_MAX_SUBJECT_LENGTH"]
        if len(value) > limit:
            errors[name] = f"At most {limit} characters."
    elif "\x00" in value:
        errors[name] = "The text contains a NUL character."
    return value


def _id(value, name: str, errors: dict) -> int | None:
    if value is None or value == "":
        return None
    found = parse_id(value)
    if found is None:
        errors[name] = "An id (a whole number) is expected."
    return found


def _attachments(value, errors: dict) -> tuple[list[dict], int]:
    """The attachments as stored ({filename, content_type, content_base64}) and their total size."""
    if value is None or value == []:
        return [], 0
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        errors["attachments"] = "A list of {filename, content_type, content_base64} is expected."
        return [], 0
    result, problems, total = [], [], 0
    for number, item in enumerate(value, start=1):
        filename = item.get("filename")
        content_type = item.get("content_type") or DEFAULT_CONTENT_TYPE
        content = item.get("content_base64")
        if not isinstance(filename, str) or not filename.strip():
            problems.append(f"Attachment {number} needs a file name.")
            continue
        filename = re.split(r"[\\/]", filename.strip())[-1].strip()  # a path's last part
        try:
            check_header_value(filename, f"The file name of attachment {number}")
            content_type = check_content_type(content_type)
        except AddressError as error:
            problems.append(str(error))
            continue
        if not isinstance(content, str):
            problems.append(f"Attachment {number} ({filename}) needs content_base64.")
            continue
        try:
            data = base64.b64decode(content.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            problems.append(f"Attachment {number} ({filename}) is not valid base64.")
            continue
        total += len(data)
        result.append({"filename": filename, "content_type": content_type,
                       "content_base64": base64.b64encode(data).decode("ascii")})
    if problems:
        errors["attachments"] = " ".join(problems)
    return result, total


def _flag(value, name: str, errors: dict) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        errors[name] = "true or false is expected."
        return False
    return value


# --- cases --------------------------------------------------------------------------------


def open_case(partition_id: int, subject: str, owner: User | None = None) -> Case:
    """A new case with its tracking ID (prefix of the partition, number of the case)."""
    partition = db.session.get(Partition, partition_id)
    case = Case(partition_id=partition_id, subject=subject or "",
                owner_user_id=owner.id if owner else None,
                # A placeholder that cannot collide, until the case has its number.
                tracking_id="new-" + secrets.token_hex(16))
    db.session.add(case)
    db.session.flush()
    case.tracking_id = tracking.make_tracking_id(partition.name, case.id)
    return case


def _case_for_subject(partition_id: int, subject: str) -> Case | None:
    tracking_id = tracking.find_in_subject(subject)
    if tracking_id is None:
        return None
    return db.session.scalars(
        select(Case).where(Case.partition_id == partition_id, Case.tracking_id == tracking_id)
    ).first()


# --- outgoing -----------------------------------------------------------------------------


def not_queued(errors: dict[str, str]) -> str:
    """The refusal's sentence: each bad field by its label, and what is wrong with it."""
    return "The message was not queued: " + "; ".join(
        f"{FIELD_LABELS.get(name, name)}: {why.rstrip('.')}" for name, why in errors.items()) + "."


def looks_empty(data: dict) -> bool:
    """A message with neither subject nor text nor attachments, that the compose form asks to
    confirm before queueing it (a redirect takes none of them: it is never empty)."""
    if data.get("kind") == REDIRECT:
        return False
    return not any((str(data.get(name) or "")).strip() for name in ("subject", "body_text", "body_html")) \
        and not data.get("attachments")


def enqueue(message: OutgoingMessage, settings: MailSenderSettings, *,
            not_before: datetime | None = None) -> OutgoingMessage:
    """Queues a message that the caller has validated: its Message-ID, recipients and bytes.
    `not_before`: no sender may claim it earlier (send_later.not_before); it joins the queue then.

    Adds to the session without committing, so the caller commits the message together with
    whatever else the request changed (an answered flag, an idempotency key).
    """
    now = not_before or utcnow()
    message.status = QUEUED
    message.queued_at = now
    message.retry_at = not_before
    message.expires_at = lifetime_end(now)
    # A redirect's Resent-Message-ID is ours: in the mailbox's domain, not the original sender's.
    mailbox = db.session.get(Mailbox, message.from_mailbox_id) if message.from_mailbox_id else None
    message.message_id = message.message_id or make_message_id(
        mailbox.address if mailbox is not None else (message.envelope_from or message.from_address))
    seen: set[str] = set()
    for role, addresses in (("to", message.to_addresses), ("cc", message.cc_addresses),
                            ("bcc", message.bcc_addresses), (LOG_ROLE, [settings.log_email_address])):
        for address in addresses or []:
            if address and address.lower() not in seen:
                seen.add(address.lower())
                message.recipients.append(MessageRecipient(address=address, role=role))
    # ComposeError (a ValueError) when the message cannot be composed safely: nothing is queued.
    render(message, settings)
    db.session.add(message)
    db.session.flush()
    log_after_commit(db.session, log, "message queued", message_id=message.id, partition=message.partition_id,
                     kind=message.kind, recipients=len(message.recipients),
                     not_before=iso(not_before))
    return message



def _refuse_foreign(kind: str, incoming: IncomingMessage, decision, settings: MailSenderSettings) -> None:
    """Incoming mail on a mailbox of a department the user is not in is not theirs to answer,
    redirect, forward or collaborate on: 403. A reply may still go out from one of the user's own
    mailboxes, where replies may change their From (the From rules chose it, not the default)."""
    if kind == REPLY and decision.mailbox.id != incoming.mailbox_id:
        return
    where = f"This message came in on {incoming.mailbox.address}, a mailbox of a department you are not in"
    if kind == REPLY and settings.allow_change_reply_from:
        why = f"{where}: answer it from one of your own mailboxes."
    else:
        why = f"{where}."
    raise MessageError(403, why, {"incoming_id": why})


def _existing_outgoing(user: User, key: str) -> OutgoingMessage | None:
    return db.session.scalars(
        select(OutgoingMessage).where(OutgoingMessage.partition_id == user.partition_id,
                                      OutgoingMessage.user_id == user.id,
                                      OutgoingMessage.idempotency_key == key)
    ).first()


def submit_message(user: User, data: dict, *, idempotency_key: str | None = None) -> Submitted:
    """Validates `data` (the fields of POST /api/v1/messages) and queues the message.

    Every field is checked before anything is written; on any error a Refusal says which and
    nothing is queued: MessageError 413 (attachments over MAILSENDER_MAX_ATTACHMENT_BYTES
    together), 422 (bad fields) or 409 (a reply to a message answered in training mode); the From
    rules' FromRuleError 403 (a From outside the rules) or 422 (no usable From). The same
    Idempotency-Key again answers the first message.
    """
    key = check_idempotency_key(idempotency_key)
    if key is not None:
        existing = _existing_outgoing(user, key)
        if existing is not None:
            return Submitted(existing, False)
    if not isinstance(data, dict):
        raise MessageError(400, "The message must be an object of fields.")

    errors: dict[str, str] = {}
    kind = data.get("kind")
    if kind not in MESSAGE_KINDS:
        errors["kind"] = f"One of {', '.join(MESSAGE_KINDS)}."
    incoming_id = _id(data.get("incoming_id"), "incoming_id", errors)
    to, cc, bcc = _recipients(data, errors)
    subject = _text(data.get("subject"), "subject", errors, header=True)
    body_text = _text(data.get("body_text"), "body_text", errors)
    body_html = _text(data.get("body_html"), "body_html", errors)
    attachments, attachment_bytes = _attachments(data.get("attachments"), errors)
    keep_case_ownership = _flag(data.get("keep_case_ownership"), "keep_case_ownership", errors)
    send_at = send_later.parse_send_at(data.get("send_at"), errors)
    from_choice = data.get("from_mailbox_id")

    limit = current_app.config["MAILSENDER_MAX_ATTACHMENT_BYTES"]
    if attachment_bytes > limit:
        raise MessageError(413, f"The attachments are too large: {attachment_bytes} bytes together, "
                                f"at most {limit} allowed.",
                           {"attachments": f"At most {limit} bytes together."})

    incoming = None
    if incoming_id is not None:
        incoming = get_in_partition(IncomingMessage, incoming_id, user.partition_id)
        if incoming is None:
            errors["incoming_id"] = "There is no incoming message with this id."
    if kind in MESSAGE_KINDS:
        if kind == ORIGINATION and incoming_id is not None:
            errors["incoming_id"] = "A new message starts a new case: it answers no incoming message."
        elif kind != ORIGINATION and incoming_id is None and "incoming_id" not in errors:
            errors["incoming_id"] = f"A {kind} needs the incoming message it is about."
    if not (to or cc or bcc) and not any(name in errors for name in ("to", "cc", "bcc")):
        errors["to"] = "Empty, as are Cc and Bcc: a message needs at least one recipient."
    if kind == REDIRECT:
        for name, value in (("subject", subject), ("body_text", body_text), ("body_html", body_html),
                            ("attachments", attachments)):
            if value:
                errors[name] = "A redirect resends the message as received: leave this empty."
    if errors:
        raise MessageError(422, not_queued(errors), errors)

    settings = get_settings(user.partition_id)
    decision = decide_from(user, kind, settings, incoming=incoming, chosen_mailbox_id=from_choice)
    if incoming is not None and not sees_mailbox(user, incoming.mailbox):
        _refuse_foreign(kind, incoming, decision, settings)
    if kind == REPLY and incoming.answered_in_training:
        raise MessageError(409, "This message was answered in training mode and stays answered.",
                           {"incoming_id": "Answered in training mode."})

    subject_taken = False  # from the incoming message, when the user typed none
    if kind == ORIGINATION:
        case = open_case(user.partition_id, subject, user)
    else:
        case = incoming.case
        if not subject and kind != REDIRECT:
            subject = ("Fwd: " if kind == FORWARD else "Re: ") + incoming.subject
            subject_taken = True
    if kind == REDIRECT:
        subject, body_text, body_html = incoming.subject, incoming.body_text, incoming.body_html
    priority_mailbox = decision.mailbox if kind == ORIGINATION else incoming.mailbox
    message = OutgoingMessage(
        partition_id=user.partition_id,
        kind=kind,
        user_id=user.id,
        case_id=case.id,
        incoming_id=incoming.id if incoming else None,
        tracking_id=case.tracking_id,
        message_id="",
        from_mailbox_id=decision.mailbox.id,
        from_address=decision.from_address,
        envelope_from=decision.envelope_from,
        to_addresses=to,
        cc_addresses=cc,
        bcc_addresses=bcc,
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        attachments=attachments,
        keep_case_ownership=keep_case_ownership,
        priority=priority_mailbox.priority,
        send_at=send_at,
        idempotency_key=key,
    )
    if keep_case_ownership:
        case.owner_user_id = user.id
    try:
        enqueue(message, settings, not_before=send_later.not_before(send_at))
    except ComposeError as error:
        db.session.rollback()
        why = f"The message could not be composed: {error}"
        if error.field == "subject" and subject_taken:
            why = (f"The subject taken from the incoming message cannot be sent safely ({error}); "
                   "type one of your own.")
        raise MessageError(422, why, {error.field: why} if error.field else None) from None
    except (ValueError, TypeError, LookupError) as error:
        db.session.rollback()
        raise MessageError(422, f"The message could not be composed: {error}") from None
    if kind == REPLY:
        incoming.answered_at = utcnow()
        if settings.training_enabled:
            incoming.answered_in_training = True
    audit.record(user, "message.queue", partition_id=user.partition_id, target=message, kind=kind,
                 from_source=decision.source, recipients=len(to) + len(cc) + len(bcc),
                 tracking_id=case.tracking_id, send_at=iso(send_at), not_before=iso(message.retry_at))
    existing = _commit_or_winner(lambda: _existing_outgoing(user, key) if key else None)
    return Submitted(existing, False) if existing is not None else Submitted(message, True)


# --- incoming -----------------------------------------------------------------------------


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value).rstrip("\r\n")


def _raw_header(raw_items: list, name: str, errors: dict, required: bool = False) -> str:
    values = [value for key, value in raw_items if key.lower() == name.lower()]
    if not values:
        if required:
            errors["raw"] = f"The message has no {name} header."
        return ""
    if len(values) > 1:
        errors["raw"] = f"The message has more than one {name} header."
        return ""
    text = _unfold(values[0]).strip()
    # Bytes that are not ASCII arrive escaped; read them as UTF-8 (RFC 6532) for checking.
    return text.encode("ascii", "surrogateescape").decode("utf-8", "replace")


def _body_text(mime, subtype: str) -> str:
    part = mime.get_body(preferencelist=(subtype,))
    if part is None:
        return ""
    try:
        return part.get_content()
    except (LookupError, ValueError, AttributeError, KeyError):
        payload = part.get_payload(decode=True) or b""
        return payload.decode("utf-8", "replace")


def _parse_raw(value, errors: dict) -> tuple[bytes, dict]:
    if not isinstance(value, str):
        errors["raw"] = "The whole message, base64-encoded, is expected."
        return b"", {}
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        errors["raw"] = "This is not valid base64."
        return b"", {}
    limit = current_app.config["MAILSENDER_MAX_ATTACHMENT_BYTES"] + 1024 * 1024
    if len(raw) > limit:
        raise MessageError(413, f"The message is too large: at most {limit} bytes.",
                           {"raw": f"At most {limit} bytes."})
    mime = BytesParser(policy=email_policy.default).parsebytes(raw)
    items = list(mime.raw_items())
    fields = {
        "from": _raw_header(items, "From", errors, required=True),
        "subject": _raw_header(items, "Subject", errors),
        "message_id": _raw_header(items, "Message-ID", errors),
    }
    if "raw" in errors:
        return raw, {}
    try:
        fields["body_text"] = _body_text(mime, "plain")
        fields["body_html"] = _body_text(mime, "html")
    except Exception:  # a broken MIME structure still records the message, without bodies
        fields["body_text"] = fields["body_html"] = ""
    return raw, fields


def _msg_id(value, name: str, errors: dict) -> str:
    """A structured incoming message's msg-id field ("" when absent); errors[name] says what is wrong."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        errors[name] = "Text is expected."
        return ""
    try:
        return given_msg_id(value.strip(" \t"), THREAD_LABELS[name])
    except ComposeError as error:
        errors[name] = str(error)
        return ""


def _msg_ids(value, name: str, errors: dict) -> list[str]:
    """A References field: a list of msg-ids or one text of them separated by spaces."""
    if value is None or value == "" or value == []:
        return []
    if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(i, str) for i in value))):
        errors[name] = "A list of Message-IDs, or one text of them separated by spaces, is expected."
        return []
    try:
        return given_msg_ids(value, THREAD_LABELS[name])
    except ComposeError as error:
        errors[name] = str(error)
        return []


def _existing_incoming(partition_id: int, key: str) -> IncomingMessage | None:
    return db.session.scalars(
        select(IncomingMessage).where(IncomingMessage.partition_id == partition_id,
                                      IncomingMessage.idempotency_key == key)
    ).first()


def record_incoming(actor: User, data: dict, *, idempotency_key: str | None = None) -> Recorded:
    """Records a customer's message on a mailbox of the actor's partition, from fields
    ({mailbox_id, from, subject, body_text, body_html, message_id, in_reply_to, references}) or
    from the raw RFC 5322 bytes ({mailbox_id, raw}, base64). Given as fields without a Message-ID,
    it gets one of ours (in the mailbox's domain), so that a reply to it threads. It joins the
    case whose tracking ID its subject carries, else opens a new case. MessageError names every
    bad field; nothing is written on an error.
    """
    key = check_idempotency_key(idempotency_key)
    partition_id = actor.partition_id
    if key is not None:
        existing = _existing_incoming(partition_id, key)
        if existing is not None:
            return Recorded(existing, False)
    if not isinstance(data, dict):
        raise MessageError(400, "The message must be an object of fields.")
    errors: dict[str, str] = {}
    mailbox_id = _id(data.get("mailbox_id"), "mailbox_id", errors)
    mailbox = None
    if mailbox_id is None and "mailbox_id" not in errors:
        errors["mailbox_id"] = "The mailbox the message came in on is needed."
    elif mailbox_id is not None:
        mailbox = get_in_partition(Mailbox, mailbox_id, partition_id)
        if mailbox is None:
            errors["mailbox_id"] = "There is no mailbox with this id."

    raw = None
    if data.get("raw") not in (None, ""):
        raw, fields = _parse_raw(data.get("raw"), errors)
        where = "raw"
    else:
        fields = {name: data.get(name) for name in ("from", "subject", "message_id", "body_text", "body_html")}
        where = None
    sender = subject = message_id = body_text = body_html = in_reply_to = ""
    references: list[str] = []
    if fields:
        if fields.get("from") in (None, ""):
            errors[where or "from"] = "The sender (From) is needed."
        elif not isinstance(fields["from"], str):
            errors[where or "from"] = "Text is expected."
        else:
            try:
                sender = parse_address(fields["from"]).formatted()
            except AddressError as error:
                errors[where or "from"] = f"From: {error}"
        subject = _text(fields.get("subject"), where or "subject", errors, header=True, label="Subject")
        if raw is not None:
            message_id = _text(fields.get("message_id"), "raw", errors, header=True, label="Message-ID")
            in_reply_to, references = raw_thread(raw)
        else:
            message_id = _msg_id(fields.get("message_id"), "message_id", errors)
            in_reply_to = _msg_id(data.get("in_reply_to"), "in_reply_to", errors)
            references = _msg_ids(data.get("references"), "references", errors)
        body_text = _text(fields.get("body_text"), where or "body_text", errors)
        body_html = _text(fields.get("body_html"), where or "body_html", errors)
    if errors:
        raise MessageError(422, "The incoming message was not recorded.", errors)
    # Stored as people read it (checked above, decoded too), so a tracking ID in it is found.
    subject = decode_header_text(subject)
    if raw is None and not message_id:
        message_id = make_message_id(mailbox.address)

    case = _case_for_subject(partition_id, subject) or open_case(partition_id, subject)
    incoming = IncomingMessage(
        partition_id=partition_id, mailbox_id=mailbox.id, case_id=case.id, from_address=sender,
        subject=subject, body_text=body_text, body_html=body_html, message_id=message_id.strip(),
        in_reply_to=in_reply_to, reference_ids=references, raw=raw, idempotency_key=key,
    )
    db.session.add(incoming)
    db.session.flush()
    # A reply scheduled on the case would answer what the customer said before this.
    send_later.cancel_scheduled_replies(actor, case, incoming)
    audit.record(actor, "incoming.record", partition_id=partition_id, target=incoming,
                 mailbox_id=mailbox.id, case_id=case.id, tracking_id=case.tracking_id)
    existing = _commit_or_winner(lambda: _existing_incoming(partition_id, key) if key else None)
    return Recorded(existing, False) if existing is not None else Recorded(incoming, True)


def _commit_or_winner(find_winner):
    """Commits; None when that worked. Where two requests with the same Idempotency-Key ran at
    once and the other one committed first, rolls back and returns its row: the first result
    is the answer. Any other integrity error is raised."""
    try:
        db.session.commit()
        return None
    except IntegrityError:
        db.session.rollback()
        winner = find_winner()
        if winner is None:
            raise
        return winner


# --- reading ------------------------------------------------------------------------------


def visible_messages(user: User, status: str | None = None):
    """The select of messages the user may see (their own; an administrator's, the partition's),
    in one state when `status` is given; MessageError 422 for a state that does not exist.
    Scheduled and queued part the queued messages by whether their time has come."""
    if status is not None and status not in SHOWN_STATES:
        raise MessageError(422, "Unknown state.", {"status": f"One of {', '.join(SHOWN_STATES)}."})
    query = select(OutgoingMessage).where(OutgoingMessage.partition_id == user.partition_id)
    if not user.is_admin:
        query = query.where(OutgoingMessage.user_id == user.id)
    if status == SCHEDULED:
        query = query.where(OutgoingMessage.status == QUEUED, OutgoingMessage.retry_at > utcnow())
    elif status == QUEUED:
        query = query.where(OutgoingMessage.status == QUEUED,
                            or_(OutgoingMessage.retry_at.is_(None), OutgoingMessage.retry_at <= utcnow()))
    elif status:
        query = query.where(OutgoingMessage.status == status)
    return query


def get_visible_message(user: User, message_id) -> OutgoingMessage | None:
    message = get_in_partition(OutgoingMessage, message_id, user.partition_id)
    if message is None or (not user.is_admin and message.user_id != user.id):
        return None
    return message


def cancel_message(user: User, message_id) -> OutgoingMessage:
    """Cancels a message the user may see (their own; an administrator's, the partition's) while
    no sender may claim it yet (send_later.cancel): 404 for another's, 409 once too late."""
    message = get_visible_message(user, message_id)
    if message is None:
        raise send_later.CancelRefused(404, "No such message.")
    return send_later.cancel(user, message)


def list_messages(user: User, *, limit: int, status: str | None = None,
                  before_id: int | None = None) -> tuple[list[OutgoingMessage], int | None]:
    """One page of the visible messages, newest first, and the id to continue before (or None).

    Keyset paging on id, so a page never repeats or skips rows while new messages arrive.
    """
    return newest_first(visible_messages(user, status), OutgoingMessage.id, limit=limit, before_id=before_id)


def is_pending(message: OutgoingMessage) -> bool:
    return message.status in PENDING_STATES


def log_copy_withheld_in_training(settings: MailSenderSettings) -> bool | None:
    """While training mode is on, whether the log Bcc copy is withheld too (the Log e-mail
    address is outside the company domains, as compose.decide_training judges it); None while
    training mode is off, or with no log address."""
    domains = training_domains(settings)
    if domains is None or not settings.log_email_address:
        return None
    return is_withheld(settings.log_email_address, domains)



class Seen:
    """What `viewer` may see of a message: all of it, but the log Bcc address, which only
    administrators see (it is hidden on purpose, in the envelope only), and the lease holder of
    an attempt (its node's lease token is the engine's fencing, none of an agent's business)."""

    def __init__(self, message: OutgoingMessage, viewer: User):
        self.admin = viewer.is_admin
        self.hidden = set() if viewer.is_admin else \
            {r.address.lower() for r in message.recipients if r.role == LOG_ROLE}

    def recipients(self, rows):
        """Recipient rows or attempt entries ({address, ...}) but the hidden ones."""
        return [r for r in rows if (r.address if hasattr(r, "address") else r.get("address", "")).lower()
                not in self.hidden]

    def withheld(self, message: OutgoingMessage) -> list[str]:
        """The recipients shown that training mode withheld: nothing was sent to them."""
        return [r.address for r in self.recipients(message.recipients)
                if r.status == RCPT_TRAINING and r.role != LOG_ROLE]

    @staticmethod
    def log_copy(message: OutgoingMessage) -> str | None:
        """Where the log Bcc copy stands (its recipient's status; None without a log address).
        Every viewer may know what became of the copy, though agents never see its address."""
        return next((r.status for r in message.recipients if r.role == LOG_ROLE), None)

    def text(self, text: str | None) -> str | None:
        """A reply's text or an error with the hidden addresses taken out."""
        for address in self.hidden:
            if text:
                text = re.sub(re.escape(address), "[hidden]", text, flags=re.IGNORECASE)
        return text

    def attempts(self, message: OutgoingMessage) -> list[dict]:
        """The message's timeline: each delivery attempt as the API and the Outbox show it."""
        return [self.attempt(a) for a in message.attempts]

    def attempt(self, attempt) -> dict:
        """One DeliveryAttempt: where it went, who sent it, how long each stage took (ms), the
        class of the answer and the server's queue id, and each recipient's reply."""
        return {
            "at": iso(attempt.at), "node": attempt.node, "outcome": attempt.outcome, "code": attempt.code,
            "detail": self.text(attempt.detail),
            # "": the partition's own SMTP settings (the Mail Sender parameters).
            "route": attempt.route or "",
            "class": attempt.answer,
            "class_label": ANSWER_LABELS.get(attempt.answer) if attempt.answer else None,
            "queue_id": attempt.queue_id,
            "timings": _timings(attempt.timings),
            "lease_owner": attempt.lease_owner if self.admin else None,
            "recipients": [{"address": r.get("address"), "code": r.get("code"), "text": self.text(r.get("text")),
                            "status": r.get("status")}
                           for r in self.recipients(attempt.recipients or [])],
        }


# The stages of an SMTP transaction an attempt times, in their order: opening the session
# (only for the transaction that opened it), the commands up to the data, and the end of data.
TIMED_STAGES = ("connect", "commands", "end")


def _timings(stored: dict | None) -> dict | None:
    if not isinstance(stored, dict):
        return None
    return {stage: stored[stage] for stage in TIMED_STAGES if isinstance(stored.get(stage), (int, float))}


def message_fields(message: OutgoingMessage, viewer: User) -> dict:
    """The message as API.md shows it (and a few more fields), as `viewer` may see it (Seen)."""
    seen = Seen(message, viewer)
    return {
        "id": message.id,
        "status": message.shown_status,
        "kind": message.kind,
        "from": message.from_address,
        "from_mailbox_id": message.from_mailbox_id,
        "envelope_from": message.envelope_from,
        "to": list(message.to_addresses or []),
        "cc": list(message.cc_addresses or []),
        "bcc": list(message.bcc_addresses or []),
        "subject": message.subject,
        "message_id": message.message_id,
        "tracking_id": message.tracking_id,
        "case_id": message.case_id,
        "incoming_id": message.incoming_id,
        "keep_case_ownership": message.keep_case_ownership,
        "training": message.training,
        "queued_at": iso(message.queued_at),
        "send_at": iso(message.send_at),
        # Until when it may be cancelled (POST .../cancel); None once a sender may claim it.
        "cancel_until": iso(message.retry_at) if message.is_scheduled else None,
        "finished_at": iso(message.finished_at),
        "last_error": seen.text(message.last_error),
        "raw_copy_available": message.has_raw_copy,
        "recipients": [
            {"address": r.address, "role": r.role, "status": r.status, "code": r.code, "text": seen.text(r.text)}
            for r in seen.recipients(message.recipients)
        ],
        "attempts": seen.attempts(message),
    }


def incoming_fields(incoming: IncomingMessage) -> dict:
    return {
        "id": incoming.id,
        "case_id": incoming.case_id,
        "tracking_id": incoming.case.tracking_id,
        "mailbox_id": incoming.mailbox_id,
        "from": incoming.from_address,
        "subject": incoming.subject,
        "message_id": incoming.message_id,
        "in_reply_to": incoming.in_reply_to or "",
        "references": list(incoming.reference_ids or []),
        "answered": incoming.answered_at is not None,
        "answered_in_training": incoming.answered_in_training,
    }


def recent_incoming(user: User, limit: int = 50) -> list[IncomingMessage]:
    """The newest incoming messages the user may answer (their departments' mailboxes'; an
    administrator's, the partition's), for the compose form's choice."""
    return list(db.session.scalars(
        select(IncomingMessage).where(IncomingMessage.partition_id == user.partition_id,
                                      IncomingMessage.mailbox_id.in_(mailboxes_seen_by(user)))
        .order_by(IncomingMessage.id.desc()).limit(limit)
    ))
