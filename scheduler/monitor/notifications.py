"""The monitor's notifications: their text, their recipients, and their delivery."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr

from flask import current_app
from sqlalchemy import select, update

from webapp.core.clock import db_now, utcnow
from webapp.core.compose import make_message_id
from webapp.core.database import db
from webapp.core.models import Mailbox, MailSenderSettings, Notification, Partition, User
from webapp.core.states import ATTEMPT_ACCEPTED, CHANNEL_OFF, CHANNEL_OK, CHANNEL_PENDING, RCPT_ACCEPTED, ROLE_ADMIN

from ..smtp.pipeline import SmtpConnection
from ..smtp.session import SmtpConfig
from . import webhook
from .definitions import StuckMessage, oldest_pending_seconds

log = logging.getLogger("mailsender.monitor")

THRESHOLD_KIND = "threshold"
STUCK_KIND = "stuck"
ROUTE_PAUSED_KIND = "route_paused"
# A notification lists at most this many messages, then says how many more there are.
NOTIFY_LIST_LIMIT = 200


@dataclass
class Notified:
    """One notification sent, or tried (its Notification row, read back): each channel's outcome."""

    id: int
    kind: str
    email_ok: bool
    error: str | None  # why the e-mail was not accepted
    webhook_status: str = CHANNEL_OFF
    webhook_error: str | None = None

    @property
    def ok(self) -> bool:
        """Somebody was told, or the webhook is still trying to tell: else the caller tries again later."""
        return self.email_ok or self.webhook_status in (CHANNEL_OK, CHANNEL_PENDING)


def _partition_name(partition_id: int) -> str:
    return db.session.scalar(select(Partition.name).where(Partition.id == partition_id)) or str(partition_id)


def threshold_text(settings: MailSenderSettings, pending: int) -> tuple[str, str]:
    name = _partition_name(settings.partition_id)
    oldest = oldest_pending_seconds(settings.partition_id)
    subject = f"[Mail Sender] {name}: {pending} messages pending (threshold {settings.monitor_pending_threshold})"
    body = (f"{pending} messages are waiting to be sent in partition {name}, more than the threshold of "
            f"{settings.monitor_pending_threshold}.\n"
            + (f"The oldest has waited {_duration(oldest)}.\n" if oldest is not None else "")
            + "\nCheck the Monitor section of the Mail Sender window: are the senders running, and does "
              "the SMTP server accept mail?\n\nYou get this message once each time the queue grows past the "
              "threshold.\n")
    return subject, body


def route_paused_text(settings: MailSenderSettings, reason: str) -> tuple[str, str]:
    name = _partition_name(settings.partition_id)
    subject = f"[Mail Sender] {name}: sending paused, the SMTP settings need attention"
    body = (f"The senders of partition {name} stopped sending: the SMTP server answered\n\n    {reason}\n\n"
            "That is a fault of the settings (a login, a certificate, the EHLO name), which every message "
            "would meet alike, so no message was failed: they stay queued.\n\nFix the SMTP settings in the "
            "Mail Sender window and Save (or Test the saved ones, if the fault was mended at the server): "
            "sending resumes at once.\n\nYou get this message once for each pause.\n")
    return subject, body


def stuck_text(settings: MailSenderSettings, listed: list[StuckMessage], total: int) -> tuple[str, str]:
    name = _partition_name(settings.partition_id)
    subject = f"[Mail Sender] {name}: {total} {'message is' if total == 1 else 'messages are'} stuck"
    lines = [f"{total} {'message has' if total == 1 else 'messages have'} stopped moving in partition {name}:", ""]
    for message in listed:
        lines.append(f"#{message.id} ({message.status}, {message.reason_text}; queued {_duration(message.age_seconds)}"
                     f" ago) to {', '.join(message.to) or '-'}: {message.subject or '(no subject)'}")
        if message.last_error:
            lines.append(f"    last reply: {message.last_error}")
    if total > len(listed):
        lines.append(f"... and {total - len(listed)} more.")
    lines += ["", "Remove or requeue them in the Monitor section of the Mail Sender window; a message held for "
              "review (the server may have it) takes Send again or Mark as sent instead.",
              "Each message is reported once."]
    return subject, "\n".join(lines) + "\n"


def threshold_facts(settings: MailSenderSettings, pending: int) -> dict:
    """A threshold notification's figures, as the webhook carries them."""
    return {"pending": pending, "threshold": settings.monitor_pending_threshold,
            "oldest_pending_seconds": oldest_pending_seconds(settings.partition_id)}


def stuck_facts(listed: list[StuckMessage], total: int) -> dict:
    """A stuck notification's figures: how many are newly stuck, and those it lists."""
    return {"stuck_count": total,
            "messages": [{"id": m.id, "status": m.status, "reason": m.reason, "age_seconds": m.age_seconds,
                          "attempt_count": m.attempt_count, "last_error": m.last_error} for m in listed]}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def notification_recipients(partition_id: int) -> list[str]:
    """The email addresses of the partition's active administrators."""
    rows = db.session.scalars(select(User.email).where(
        User.partition_id == partition_id, User.role == ROLE_ADMIN, User.disabled.is_(False),
        User.email != "").order_by(User.id)).all()
    seen, addresses = set(), []
    for address in rows:
        if address and address.lower() not in seen:
            seen.add(address.lower())
            addresses.append(address)
    return addresses


def notification_sender(settings: MailSenderSettings) -> str:
    """Who notifications come from: the default From mailbox, else the SMTP user, else any mailbox."""
    if settings.origination_from_mailbox_id is not None:
        address = db.session.scalar(select(Mailbox.address).where(
            Mailbox.id == settings.origination_from_mailbox_id, Mailbox.partition_id == settings.partition_id))
        if address:
            return address
    if "@" in (settings.smtp_username or ""):
        return settings.smtp_username
    address = db.session.scalar(select(Mailbox.address).where(Mailbox.partition_id == settings.partition_id)
                                .order_by(Mailbox.id).limit(1))
    return address or "mail-sender@localhost"


def build_notification(sender: str, recipients: list[str], subject: str, body: str) -> bytes:
    mime = EmailMessage(policy=SMTP)
    mime["From"] = formataddr(("Mail Sender monitor", sender))
    mime["To"] = ", ".join(recipients)
    mime["Subject"] = subject
    mime["Date"] = format_datetime(utcnow())
    mime["Message-ID"] = make_message_id(sender)
    # Marks the message as made by a machine (RFC 3834), so that auto-responders stay quiet.
    mime["Auto-Submitted"] = "auto-generated"
    mime.set_content(body, charset="utf-8")
    return mime.as_bytes(policy=SMTP)


def notify(settings: MailSenderSettings, kind: str, subject: str, body: str, loop=None, token_source=None, *,
           facts: dict | None = None) -> Notified:
    """Sends one notification on every channel, records each channel's outcome, and never raises.

    The one entry point for every kind. Channels: the webhook when one is set (its first attempt
    now, bounded by webhook.TIMEOUT_SECONDS, and first, so that a hanging SMTP server cannot hold
    it up; its retries later, on the monitor's webhook job), then the e-mail to every active
    administrator over the partition's SMTP settings; the window's banner and Monitor section
    read the row. `facts`: what the notification is about as JSON-able figures, for the webhook.
    `loop`: run the SMTP session there (a node's loop) instead of a loop of its own.
    """
    recipients = notification_recipients(settings.partition_id)
    record = Notification(partition_id=settings.partition_id, kind=kind, recipients=recipients,
                          subject=subject, body=body, facts=dict(facts or {}), ok=False)
    if settings.webhook_url:
        record.webhook_status = CHANNEL_PENDING
        record.webhook_next_at = db_now()
    db.session.add(record)
    db.session.commit()  # the row first: the webhook's JSON carries its id
    notification_id = record.id
    if settings.webhook_url:
        try:
            webhook.attempt(notification_id, settings)
        except Exception:  # a later run of the webhook job tries again, once the lease is over
            log.exception("monitor: webhook for notification %s not attempted", notification_id)
            db.session.rollback()
    email_ok, email_error = _send_email(settings, recipients, subject, body, loop, token_source)
    db.session.execute(update(Notification).where(Notification.id == notification_id)
                       .values(ok=email_ok, error=email_error).execution_options(synchronize_session=False))
    db.session.commit()
    webhook_status, webhook_error = db.session.execute(
        select(Notification.webhook_status, Notification.webhook_error).where(Notification.id == notification_id)).one()
    return Notified(notification_id, kind, email_ok, email_error, webhook_status, webhook_error)


def _send_email(settings: MailSenderSettings, recipients: list[str], subject: str, body: str, loop,
                token_source) -> tuple[bool, str | None]:
    """The e-mail to the administrators: (accepted by the server for at least one, the error)."""
    ok, error = False, None
    try:
        if not recipients:
            raise _NotSent("no active administrator of this partition has an email address")
        sender = notification_sender(settings)
        data = build_notification(sender, recipients, subject, body)
        config = SmtpConfig.from_settings(settings, current_app.config)
        accepted, refused = _deliver(config, sender, recipients, data, loop, token_source)
        ok = bool(accepted)
        if refused:
            error = "; ".join(refused)
    except _NotSent as failure:
        error = str(failure)
    except Exception as failure:  # a bad key, a token source, a closed loop: the banner says why
        log.exception("monitor: notification for partition %s not sent", settings.partition_id)
        error = f"{type(failure).__name__}: {failure}"
    if not ok and not error:
        error = "not sent"
    return ok, error


class _NotSent(Exception):
    pass


def _deliver(config: SmtpConfig, sender: str, recipients: list[str], data: bytes, loop,
             token_source) -> tuple[list[str], list[str]]:
    """One SMTP session: (accepted addresses, refusals as "address: code text")."""

    async def session():
        connection = SmtpConnection()
        try:
            return await connection.send(config, sender, recipients, data, token_source)
        finally:
            await connection.close()

    if loop is not None:
        delivery = asyncio.run_coroutine_threadsafe(session(), loop).result(timeout=config.command_timeout * 6 + 5)
    else:
        delivery = asyncio.run(session())
    accepted, refused = [], []
    for transaction in delivery.transactions:
        for reply in transaction.recipients:
            if reply.status == RCPT_ACCEPTED:
                accepted.append(reply.address)
            else:
                refused.append(f"{reply.address}: {f'{reply.code} ' if reply.code else ''}{reply.text}".strip())
        if not transaction.recipients and transaction.outcome != ATTEMPT_ACCEPTED:
            refused.append(transaction.detail)
    if delivery.unreachable and delivery.transactions:
        refused = [delivery.transactions[0].detail]
    return accepted, refused
