"""The monitor: what counts as pending and stuck, and the job that notifies the administrators.

The definitions live here once, for the window, the API and the job alike:
- pending: queued + deferred + sending;
- stuck: not delivered and not moving, for one of three reasons (REASON_TEXT): claimed past its
  lease, deferred after STUCK_ATTEMPTS attempts or more, or waiting (queued or deferred) longer
  than the stuck age (MAILSENDER_STUCK_AGE_MINUTES product minutes since it was queued).

The job runs one round per partition every monitor-sleep minutes while the monitor is enabled,
on whichever node first sets the round mark (a compare-and-set UPDATE on MonitorState), so that
several nodes never notify twice. Notifications go straight over the partition's SMTP server,
never through the queue they warn about.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from typing import TYPE_CHECKING

from flask import current_app
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from webapp.extensions import db
from webapp.models import (
    DEFERRED,
    PENDING_STATES,
    QUEUED,
    RCPT_ACCEPTED,
    ROLE_ADMIN,
    SENDING,
    Mailbox,
    MailSenderSettings,
    MonitorState,
    Notification,
    OutgoingMessage,
    Partition,
    User,
    utcnow,
)
from webapp.settings import get_settings

from .compose import make_message_id
from .queue import db_now, minutes
from .transport import SmtpConfig, SmtpConnection

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("mailsender.monitor")

# A deferred message that has been tried this often is stuck: retrying alone is not helping.
STUCK_ATTEMPTS = 3

REASON_LEASE = "lease_expired"
REASON_FAILURES = "repeated_failures"
REASON_WAITING = "waiting_too_long"
REASON_TEXT = {
    REASON_LEASE: "claimed past its lease",
    REASON_FAILURES: f"deferred after {STUCK_ATTEMPTS} or more attempts",
    REASON_WAITING: "waiting longer than the stuck age",
}

THRESHOLD_KIND = "threshold"
STUCK_KIND = "stuck"
# A notification lists at most this many messages, then says how many more there are.
NOTIFY_LIST_LIMIT = 200
# How often each node looks whether a round is due, at most (product minutes are coarser).
CHECK_SECONDS = 5.0

_MESSAGE = OutgoingMessage


# --- the definitions ----------------------------------------------------------------------


def stuck_age_seconds() -> float:
    return minutes(current_app.config["MAILSENDER_STUCK_AGE_MINUTES"]).total_seconds()


def _stuck_rules():
    """(reason, condition) in the order a message's reason is chosen; timed by the database."""
    return [
        (REASON_LEASE, and_(_MESSAGE.status == SENDING,
                            or_(_MESSAGE.lease_until.is_(None), _MESSAGE.lease_until < db_now()))),
        (REASON_FAILURES, and_(_MESSAGE.status == DEFERRED, _MESSAGE.attempt_count >= STUCK_ATTEMPTS)),
        (REASON_WAITING, and_(_MESSAGE.status.in_((QUEUED, DEFERRED)),
                              _MESSAGE.queued_at < db_now(-stuck_age_seconds()))),
    ]


def stuck_condition():
    """The SQL condition that a message is stuck."""
    return or_(*(condition for _, condition in _stuck_rules()))


def stuck_reason():
    """The SQL expression naming why a stuck message is stuck (one of REASON_TEXT's keys)."""
    return case(*((condition, reason) for reason, condition in _stuck_rules()), else_=None)


@dataclass
class StuckMessage:
    id: int
    status: str
    reason: str
    queued_at: datetime
    age_seconds: float
    last_error: str | None
    subject: str
    to: list[str]
    attempt_count: int
    notified: bool

    @property
    def reason_text(self) -> str:
        return REASON_TEXT.get(self.reason, self.reason)


def pending_count(partition_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(_MESSAGE).where(
        _MESSAGE.partition_id == partition_id, _MESSAGE.status.in_(PENDING_STATES))) or 0


def oldest_pending_seconds(partition_id: int, now: datetime | None = None) -> float | None:
    """How long the oldest pending message has been in the queue, or None when none is pending."""
    oldest = db.session.scalar(select(func.min(_MESSAGE.queued_at)).where(
        _MESSAGE.partition_id == partition_id, _MESSAGE.status.in_(PENDING_STATES)))
    if oldest is None:
        return None
    return max(0.0, round(((now or utcnow()) - oldest).total_seconds(), 1))


def stuck_count(partition_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(_MESSAGE).where(
        _MESSAGE.partition_id == partition_id, stuck_condition())) or 0


def stuck_messages(partition_id: int, *, limit: int | None = None, after_id: int | None = None,
                   ids: list[int] | None = None, now: datetime | None = None) -> list[StuckMessage]:
    """The partition's stuck messages in id order, each with its reason (keyset paging on id)."""
    now = now or utcnow()
    reason = stuck_reason().label("reason")
    query = (select(_MESSAGE.id, _MESSAGE.status, reason, _MESSAGE.queued_at, _MESSAGE.last_error,
                    _MESSAGE.subject, _MESSAGE.to_addresses, _MESSAGE.attempt_count, _MESSAGE.stuck_notified_at)
             .where(_MESSAGE.partition_id == partition_id, stuck_condition())
             .order_by(_MESSAGE.id))
    if after_id is not None:
        query = query.where(_MESSAGE.id > after_id)
    if ids is not None:
        query = query.where(_MESSAGE.id.in_(ids))
    if limit is not None:
        query = query.limit(limit)
    return [
        StuckMessage(id=row.id, status=row.status, reason=row.reason, queued_at=row.queued_at,
                     age_seconds=max(0.0, round((now - row.queued_at).total_seconds(), 1)),
                     last_error=row.last_error, subject=row.subject or "", to=list(row.to_addresses or []),
                     attempt_count=row.attempt_count or 0, notified=row.stuck_notified_at is not None)
        for row in db.session.execute(query)
    ]


def is_alert(enabled: bool, pending: int, threshold: int, stuck: int) -> bool:
    """The alert: the monitor is on, and pending exceeds the threshold or anything is stuck."""
    return bool(enabled) and (pending > threshold or stuck > 0)


@dataclass
class Overview:
    """What the window's Monitor section, its banner and GET /api/v1/monitor show."""

    enabled: bool
    sleep_minutes: int
    threshold: int
    pending: int
    oldest_pending_seconds: float | None
    stuck: list[StuckMessage]
    stuck_count: int
    next_after: int | None  # the id to continue the stuck list after, when there is more
    alert_active: bool
    notify_error: str | None
    last_run_at: datetime | None
    last_run_node: str | None

    @property
    def above_threshold(self) -> bool:
        return self.pending > self.threshold


def overview(partition_id: int, *, limit: int = 25, after_id: int | None = None) -> Overview:
    """The partition's monitor figures now, with one page of its stuck messages."""
    settings = get_settings(partition_id)
    state = monitor_state(partition_id)
    now = utcnow()
    pending = pending_count(partition_id)
    total_stuck = stuck_count(partition_id)
    page = stuck_messages(partition_id, limit=limit + 1, after_id=after_id, now=now)
    more = len(page) > limit
    page = page[:limit]
    return Overview(
        enabled=settings.monitor_enabled,
        sleep_minutes=settings.monitor_sleep_minutes,
        threshold=settings.monitor_pending_threshold,
        pending=pending,
        oldest_pending_seconds=oldest_pending_seconds(partition_id, now),
        stuck=page,
        stuck_count=total_stuck,
        next_after=page[-1].id if more and page else None,
        alert_active=is_alert(settings.monitor_enabled, pending, settings.monitor_pending_threshold, total_stuck),
        notify_error=state.notify_error if state is not None else None,
        last_run_at=state.last_run_at if state is not None else None,
        last_run_node=state.last_run_node if state is not None else None,
    )


def monitor_state(partition_id: int) -> MonitorState | None:
    return db.session.scalars(select(MonitorState).where(MonitorState.partition_id == partition_id)).first()


def _ensure_state(partition_id: int) -> None:
    """Partitions get their row when made; this only covers a row lost some other way."""
    if monitor_state(partition_id) is not None:
        return
    try:
        db.session.add(MonitorState(partition_id=partition_id))
        db.session.commit()
    except IntegrityError:  # another node made it first
        db.session.rollback()


# --- the job ------------------------------------------------------------------------------


def schedule(node: "Node") -> None:
    """Puts the monitor on the node's scheduler: one job per partition, added as partitions appear.

    Each job looks every few seconds whether its partition's round is due; the round itself
    runs at most once per monitor-sleep minutes across all nodes (see run_round). A node
    configured with MAILSENDER_MONITOR off runs none.
    """
    if not node.app.config.get("MAILSENDER_MONITOR", True):
        return
    check_seconds = max(0.1, min(CHECK_SECONDS, node.minute_seconds / 4))
    known: set[int] = set()

    def follow_partitions() -> None:
        if not node.active or node.stopping:
            return
        for partition_id in db.session.scalars(select(Partition.id)).all():
            if partition_id not in known:
                known.add(partition_id)
                node.add_job(_round_job, "interval", args=(node, partition_id), seconds=check_seconds,
                             id=f"monitor:{partition_id}", replace_existing=True, next_run_time=utcnow())
        db.session.rollback()

    node.add_job(follow_partitions, "interval", seconds=max(1.0, check_seconds), id="monitor:partitions",
                 next_run_time=utcnow())


def _round_job(node: "Node", partition_id: int) -> None:
    if not node.active or node.stopping:
        return
    try:
        run_round(partition_id, node.name, loop=node.loop, token_source=node.token_source(partition_id))
    except Exception:
        log.exception("monitor round for partition %s failed", partition_id)
        db.session.rollback()


@dataclass
class Notified:
    """One notification a round sent, or tried to send (its Notification row, read back)."""

    id: int
    kind: str
    ok: bool
    error: str | None


@dataclass
class RoundReport:
    """What one round found and did (for logs and tests)."""

    pending: int
    stuck: int
    alert_active: bool
    notifications: list[Notified]


def _take_round(partition_id: int, node_name: str, settings: MailSenderSettings) -> bool:
    """Sets the round mark if the round is due; True when this node won the round.

    The mark is one compare-and-set UPDATE timed by the database's clock: of several nodes
    looking at once, exactly one sees its UPDATE change the row.
    """
    interval = minutes(settings.monitor_sleep_minutes).total_seconds()
    # Looking first keeps the nodes from writing at every check (SQLite takes its write lock).
    last = db.session.scalar(select(MonitorState.last_run_at).where(MonitorState.partition_id == partition_id))
    if last is not None and (utcnow() - last).total_seconds() < interval * 0.9:
        return False
    result = db.session.execute(
        update(MonitorState)
        .where(MonitorState.partition_id == partition_id,
               or_(MonitorState.last_run_at.is_(None), MonitorState.last_run_at <= db_now(-interval)))
        .values(last_run_at=db_now(), last_run_node=node_name)
        .execution_options(synchronize_session=False))
    db.session.commit()
    return result.rowcount == 1


def run_round(partition_id: int, node_name: str, *, loop: asyncio.AbstractEventLoop | None = None,
              token_source=None, force: bool = False) -> RoundReport | None:
    """One monitor round for the partition, if it is due and no other node took it; else None.

    A saved monitor-sleep counts from the last round, so a change applies from the next one.
    `loop`: run the SMTP session there (the node's loop) instead of a loop of its own.
    `force`: run now whatever the mark says (still setting it).
    """
    settings = db.session.scalars(
        select(MailSenderSettings).where(MailSenderSettings.partition_id == partition_id)).first()
    if settings is None or not settings.monitor_enabled:
        db.session.rollback()
        return None
    _ensure_state(partition_id)
    if force:
        db.session.execute(update(MonitorState).where(MonitorState.partition_id == partition_id)
                           .values(last_run_at=db_now(), last_run_node=node_name)
                           .execution_options(synchronize_session=False))
        db.session.commit()
    elif not _take_round(partition_id, node_name, settings):
        return None

    pending = pending_count(partition_id)
    threshold = settings.monitor_pending_threshold
    above = pending > threshold
    sends: list[Notified] = []
    state_filter = MonitorState.partition_id == partition_id

    if above:
        previous = db.session.scalar(select(MonitorState.threshold_notified_at).where(state_filter))
        renotify = minutes(current_app.config["MAILSENDER_RENOTIFY_MINUTES"]).total_seconds()
        # Once per crossing (the mark is cleared when pending falls back), again after the interval.
        won = db.session.execute(
            update(MonitorState)
            .where(state_filter, or_(MonitorState.threshold_notified_at.is_(None),
                                     MonitorState.threshold_notified_at <= db_now(-renotify)))
            .values(threshold_notified_at=db_now(), above_threshold=True)
            .execution_options(synchronize_session=False)).rowcount == 1
        if not won:
            db.session.execute(update(MonitorState).where(state_filter).values(above_threshold=True)
                               .execution_options(synchronize_session=False))
        db.session.commit()
        if won:
            sent = _notify(settings, THRESHOLD_KIND, *_threshold_text(settings, pending), loop, token_source)
            sends.append(sent)
            if not sent.ok:  # nobody was told: the next round tries again
                db.session.execute(update(MonitorState).where(state_filter)
                                   .values(threshold_notified_at=previous)
                                   .execution_options(synchronize_session=False))
            db.session.commit()
    else:
        db.session.execute(update(MonitorState).where(state_filter)
                           .values(above_threshold=False, threshold_notified_at=None)
                           .execution_options(synchronize_session=False))
        db.session.commit()

    # Each stuck message is reported once: marking it first means no other round lists it too.
    table = _MESSAGE.__table__
    newly_stuck = list(db.session.execute(
        update(table)
        .where(table.c.partition_id == partition_id, stuck_condition(), table.c.stuck_notified_at.is_(None))
        .values(stuck_notified_at=db_now())
        .returning(table.c.id)).scalars())
    db.session.commit()
    if newly_stuck:
        newly_stuck.sort()
        listed = stuck_messages(partition_id, ids=newly_stuck[:NOTIFY_LIST_LIMIT])
        sent = _notify(settings, STUCK_KIND, *_stuck_text(settings, listed, len(newly_stuck)), loop, token_source)
        sends.append(sent)
        if not sent.ok:
            db.session.execute(update(_MESSAGE).where(_MESSAGE.id.in_(newly_stuck))
                               .values(stuck_notified_at=None).execution_options(synchronize_session=False))
        db.session.commit()

    total_stuck = stuck_count(partition_id)
    alert = is_alert(True, pending, threshold, total_stuck)
    values: dict = {"alert_active": alert}
    failed = [n for n in sends if not n.ok]
    if failed:
        values["notify_error"] = failed[-1].error
    elif sends or not alert:
        values["notify_error"] = None
    db.session.execute(update(MonitorState).where(state_filter).values(**values)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    return RoundReport(pending=pending, stuck=total_stuck, alert_active=alert, notifications=sends)


# --- notifications ------------------------------------------------------------------------


def _partition_name(partition_id: int) -> str:
    return db.session.scalar(select(Partition.name).where(Partition.id == partition_id)) or str(partition_id)


def _threshold_text(settings: MailSenderSettings, pending: int) -> tuple[str, str]:
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


def _stuck_text(settings: MailSenderSettings, listed: list[StuckMessage], total: int) -> tuple[str, str]:
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
    lines += ["", "Remove or requeue them in the Monitor section of the Mail Sender window.",
              "Each message is reported once."]
    return subject, "\n".join(lines) + "\n"


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


def _notify(settings: MailSenderSettings, kind: str, subject: str, body: str, loop, token_source) -> Notified:
    """Sends one notification to every active administrator and records it; never raises."""
    recipients = notification_recipients(settings.partition_id)
    record = Notification(partition_id=settings.partition_id, kind=kind, recipients=recipients,
                          subject=subject, body=body, ok=False)
    try:
        if not recipients:
            raise _NotSent("no active administrator of this partition has an email address")
        sender = notification_sender(settings)
        data = build_notification(sender, recipients, subject, body)
        config = SmtpConfig.from_settings(settings, current_app.config)
        accepted, refused = _deliver(config, sender, recipients, data, loop, token_source)
        record.ok = bool(accepted)
        if refused:
            record.error = "; ".join(refused)
    except _NotSent as error:
        record.error = str(error)
    except Exception as error:  # a bad key, a token source, a closed loop: the banner says why
        log.exception("monitor: notification for partition %s not sent", settings.partition_id)
        record.error = f"{type(error).__name__}: {error}"
    if not record.ok and not record.error:
        record.error = "not sent"
    db.session.add(record)
    db.session.commit()
    return Notified(record.id, record.kind, record.ok, record.error)


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
        if not transaction.recipients and transaction.outcome != "accepted":
            refused.append(transaction.detail)
    if delivery.unreachable and delivery.transactions:
        refused = [delivery.transactions[0].detail]
    return accepted, refused
