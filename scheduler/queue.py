"""The queue: enqueue, and (in the engine) claim, mark sent/deferred/failed, release."""
from __future__ import annotations

from datetime import timedelta

from flask import current_app

from webapp.extensions import db
from webapp.models import QUEUED, MailSenderSettings, MessageRecipient, OutgoingMessage, utcnow

from .compose import make_message_id, render


def minutes(count: float) -> timedelta:
    """`count` of the product's minutes (MAILSENDER_MINUTE_SECONDS each)."""
    return timedelta(seconds=count * current_app.config["MAILSENDER_MINUTE_SECONDS"])


def enqueue(message: OutgoingMessage, settings: MailSenderSettings) -> OutgoingMessage:
    """Queues a message that the caller has validated: its Message-ID, recipients and bytes.

    Adds to the session without committing, so the caller commits the message together with
    whatever else the request changed (an answered flag, an idempotency key).
    """
    now = utcnow()
    message.status = QUEUED
    message.queued_at = now
    message.expires_at = now + minutes(current_app.config["MAILSENDER_LIFETIME_MINUTES"])
    message.message_id = message.message_id or make_message_id(message.envelope_from or message.from_address)
    seen: set[str] = set()
    for role, addresses in (("to", message.to_addresses), ("cc", message.cc_addresses),
                            ("bcc", message.bcc_addresses), ("log", [settings.log_email_address])):
        for address in addresses or []:
            if address and address.lower() not in seen:
                seen.add(address.lower())
                message.recipients.append(MessageRecipient(address=address, role=role))
    render(message, settings)
    db.session.add(message)
    db.session.flush()
    return message
