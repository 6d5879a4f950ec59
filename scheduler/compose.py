"""Settings + message → the bytes to send. Rendered once at enqueue; again only when the
settings version changes."""
from __future__ import annotations

import base64
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from webapp.models import MailSenderSettings, OutgoingMessage


def make_message_id(from_address: str) -> str:
    """A Message-ID in the From address's domain, made once when the message is queued."""
    domain = from_address.rpartition("@")[2].strip(" >") or "mailsender.invalid"
    return make_msgid(domain=domain)


def compose_message(message: OutgoingMessage, settings: MailSenderSettings) -> EmailMessage:
    """The MIME message for `message` under `settings`."""
    mime = EmailMessage(policy=SMTP)
    mime["From"] = message.from_address
    if message.to_addresses:
        mime["To"] = ", ".join(message.to_addresses)
    if message.cc_addresses:
        mime["Cc"] = ", ".join(message.cc_addresses)
    mime["Subject"] = message.subject
    mime["Date"] = format_datetime(message.queued_at)
    mime["Message-ID"] = message.message_id
    charset = settings.default_charset or "utf-8"
    mime.set_content(message.body_text or "", charset=_usable_charset(message.body_text or "", charset))
    if message.body_html:
        mime.add_alternative(message.body_html, subtype="html",
                             charset=_usable_charset(message.body_html, charset))
    for attachment in message.attachments or []:
        maintype, _, subtype = (attachment.get("content_type") or "application/octet-stream").partition("/")
        mime.add_attachment(base64.b64decode(attachment["content_base64"]), maintype=maintype,
                            subtype=subtype or "octet-stream", filename=attachment.get("filename"))
    return mime


def render(message: OutgoingMessage, settings: MailSenderSettings) -> None:
    """Stores the message's bytes with the settings version they were built under."""
    mime = compose_message(message, settings)
    message.rendered = mime.as_bytes(policy=SMTP)
    message.rendered_version = settings.version
    message.charset = mime.get_content_charset() or _first_text_charset(mime)


def _usable_charset(text: str, charset: str) -> str:
    # Where the text cannot be encoded in the chosen charset, UTF-8 keeps every character.
    try:
        text.encode(charset)
        return charset
    except (UnicodeEncodeError, LookupError):
        return "utf-8"


def _first_text_charset(mime: EmailMessage) -> str | None:
    for part in mime.walk():
        if part.get_content_maintype() == "text":
            return part.get_content_charset()
    return None
