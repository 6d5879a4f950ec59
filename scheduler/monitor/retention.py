"""The retention purge: what has been kept long enough goes, a slice at a time.

Per partition, a purge round every MAILSENDER_PURGE_MINUTES product minutes, on whichever node
first sets its mark: the monitor's own guard (rounds.py, _take_round), a compare-and-set UPDATE
on PurgeState timed by the database's clock, so that of several nodes exactly one purges.

What goes (ages in product days, clock.days: real days unless MAILSENDER_MINUTE_SECONDS is
shortened; a keeping time of 0 keeps that kind for ever):
- sent, failed and removed messages (PURGED_STATES) that ended more than MAILSENDER_RETAIN_DAYS
  ago: the message with its content (bodies, attachments, the rendered bytes that are the raw
  copy), its recipients and its delivery attempts. Queued, deferred, sending and held messages
  are never purged, whatever their age, nor training and cancelled ones;
- audit events older than MAILSENDER_AUDIT_RETAIN_DAYS;
- the monitor's notifications older than MAILSENDER_NOTIFICATION_RETAIN_DAYS (but one whose
  webhook is still being retried).

The message row goes too, rather than staying as a tombstone: nothing else refers to an
outgoing message but its own content, recipients and attempts (audit events name it by id
only, and go by their own, longer, keeping time), and the row itself holds what retention is
about (addresses, subject, the last error). A tombstone would have to be blanked, and kept from
Requeue (a failed or removed one with no content to send) and from the lists: every rule that
reads messages would have to know it. The one thing lost with it is its Idempotency-Key, which
no client repeats after months.

Each transaction removes at most MAILSENDER_PURGE_SLICE rows of one kind, the oldest first by a
range of an index in (time, id) order, and commits: no purge holds the write lock (all of it,
on SQLite) for longer than one slice, and the senders' writes go in between.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from flask import current_app
from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from webapp.core import audit
from webapp.core.clock import days, db_now, minutes, utcnow
from webapp.core.database import begin_read, db
from webapp.core.models import (
    AuditEvent,
    DeliveryAttempt,
    MessageContent,
    MessageRecipient,
    Notification,
    OutgoingMessage,
    PurgeState,
)
from webapp.core.states import CHANNEL_PENDING, PURGED_STATES

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("mailsender.retention")

AUDIT_ACTION = "retention.purge"
AUDIT_ACTOR = "retention"
# The kinds a purge counts, in the order the window lists them.
KINDS = ("messages", "attempts", "recipients", "audit_events", "notifications")


@dataclass
class PurgeReport:
    """What one purge removed, by kind, and the transactions (slices) it took."""

    messages: int = 0
    attempts: int = 0
    recipients: int = 0
    audit_events: int = 0
    notifications: int = 0
    slices: int = 0
    # Stopped before the end (the node stopping): the next purge goes on from there.
    stopped: bool = False

    @property
    def removed(self) -> int:
        """Every row removed: the messages' content rows go with their messages, uncounted."""
        return sum(getattr(self, kind) for kind in KINDS)

    def counts(self) -> dict[str, int]:
        return {kind: getattr(self, kind) for kind in KINDS}


@dataclass
class LastPurge:
    """The last purge of a partition as the window and GET /api/v1/monitor show it."""

    at: datetime
    node: str | None
    counts: dict[str, int] = field(default_factory=dict)
    slices: int = 0

    @property
    def removed(self) -> int:
        return sum(self.counts.values())


def last_purge(partition_id: int) -> LastPurge | None:
    """The partition's last purge that ran, or None before the first."""
    row = db.session.scalars(select(PurgeState).where(PurgeState.partition_id == partition_id)).first()
    if row is None or row.finished_at is None:
        return None
    return LastPurge(at=row.finished_at, node=row.last_run_node,
                     counts={kind: getattr(row, kind) or 0 for kind in KINDS}, slices=row.slices or 0)


def keeping_days() -> dict[str, float]:
    """The keeping times, in product days, of the kinds purged by age (0: kept for ever)."""
    config = current_app.config
    return {"messages": float(config["MAILSENDER_RETAIN_DAYS"]),
            "audit_events": float(config["MAILSENDER_AUDIT_RETAIN_DAYS"]),
            "notifications": float(config["MAILSENDER_NOTIFICATION_RETAIN_DAYS"])}


# --- the round mark -----------------------------------------------------------------------


def _ensure_state(partition_id: int) -> None:
    if db.session.scalar(select(PurgeState.id).where(PurgeState.partition_id == partition_id)) is not None:
        return
    try:
        db.session.add(PurgeState(partition_id=partition_id))
        db.session.commit()
    except IntegrityError:  # another node made it first
        db.session.rollback()


def _take_purge(partition_id: int, node_name: str) -> bool:
    """Sets the purge mark if a purge is due; True when this node won it (as rounds._take_round)."""
    interval = minutes(current_app.config["MAILSENDER_PURGE_MINUTES"]).total_seconds()
    # Looking first, in a read, keeps the nodes from taking SQLite's write lock at every check.
    begin_read()
    last = db.session.scalar(select(PurgeState.last_run_at).where(PurgeState.partition_id == partition_id))
    db.session.rollback()
    if last is not None and (utcnow() - last).total_seconds() < interval * 0.9:
        return False
    _ensure_state(partition_id)
    result = db.session.execute(
        update(PurgeState)
        .where(PurgeState.partition_id == partition_id,
               or_(PurgeState.last_run_at.is_(None), PurgeState.last_run_at <= db_now(-interval)))
        .values(last_run_at=db_now(), last_run_node=node_name)
        .execution_options(synchronize_session=False))
    db.session.commit()
    return result.rowcount == 1


# --- the purge ----------------------------------------------------------------------------


def _cutoff(setting: str, now: datetime) -> datetime | None:
    """The moment before which that kind goes; None where it is kept for ever (0 days or less)."""
    keep = float(current_app.config[setting])
    return now - days(keep) if keep > 0 else None


def run_purge(partition_id: int, node_name: str, *, force: bool = False, slice_size: int | None = None,
              keep_going: Callable[[], bool] | None = None) -> PurgeReport | None:
    """One purge of the partition, if one is due and no other node took it; else None.

    `force`: purge now whatever the mark says (still setting it). `slice_size`: rows a
    transaction (MAILSENDER_PURGE_SLICE by default). `keep_going`: asked before each slice; a
    purge told to stop records what it removed so far, and the next one goes on. Records the
    result on the partition's PurgeState, and an audit event when it removed anything. Commits.
    """
    if force:
        _ensure_state(partition_id)
        db.session.execute(update(PurgeState).where(PurgeState.partition_id == partition_id)
                           .values(last_run_at=db_now(), last_run_node=node_name)
                           .execution_options(synchronize_session=False))
        db.session.commit()
    elif not _take_purge(partition_id, node_name):
        return None
    size = max(1, int(slice_size or current_app.config["MAILSENDER_PURGE_SLICE"]))
    going = keep_going or (lambda: True)
    now = utcnow()
    report = PurgeReport()
    message_cutoff = _cutoff("MAILSENDER_RETAIN_DAYS", now)
    audit_cutoff = _cutoff("MAILSENDER_AUDIT_RETAIN_DAYS", now)
    notification_cutoff = _cutoff("MAILSENDER_NOTIFICATION_RETAIN_DAYS", now)
    if message_cutoff is not None:
        _purge_messages(partition_id, message_cutoff, size, report, going)
    if audit_cutoff is not None:
        _purge_rows(AuditEvent, AuditEvent.at, (), partition_id, audit_cutoff, size, report, "audit_events", going)
    if notification_cutoff is not None:
        _purge_rows(Notification, Notification.created_at, (Notification.webhook_status != CHANNEL_PENDING,),
                    partition_id, notification_cutoff, size, report, "notifications", going)
    db.session.execute(update(PurgeState).where(PurgeState.partition_id == partition_id)
                       .values(finished_at=utcnow(), last_run_node=node_name, slices=report.slices,
                               **report.counts())
                       .execution_options(synchronize_session=False))
    if report.removed:
        audit.record(AUDIT_ACTOR, AUDIT_ACTION, partition_id=partition_id, **report.counts(), slices=report.slices,
                     stopped=report.stopped, node=node_name,
                     before={"messages": _iso(message_cutoff), "audit_events": _iso(audit_cutoff),
                             "notifications": _iso(notification_cutoff)})
    db.session.commit()
    if report.removed:
        log.info("purge of partition %s on %s: %s in %s slices", partition_id, node_name, report.counts(),
                 report.slices)
    return report


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _slices(select_slice, remove_slice, size: int, report: PurgeReport, going: Callable[[], bool]) -> None:
    """Runs slices until one finds fewer than `size` rows: each selects its rows (the oldest after
    the last slice's, by the index's order), removes them and commits."""
    after = None
    while True:
        if not going():
            report.stopped = True
            db.session.rollback()
            return
        rows = db.session.execute(select_slice(after).limit(size)).all()
        if not rows:
            db.session.rollback()
            return
        remove_slice([row.id for row in rows])
        db.session.commit()
        report.slices += 1
        if len(rows) < size:
            return
        after = tuple(rows[-1])


def _purge_messages(partition_id: int, cutoff: datetime, size: int, report: PurgeReport,
                    going: Callable[[], bool]) -> None:
    message = OutgoingMessage

    def select_slice(after):
        query = (select(message.finished_at, message.id)
                 .where(message.partition_id == partition_id, message.finished_at < cutoff,
                        message.status.in_(PURGED_STATES)))
        # Past the last slice's (time, id): the old messages that stay (training, cancelled) are
        # read once a purge, not once a slice.
        if after is not None:
            query = query.where(tuple_(message.finished_at, message.id) > after)
        # Locked until the commit (PostgreSQL; SQLite's transaction holds the write lock from its
        # first statement): a Requeue at the same moment waits, then finds the message gone,
        # and never requeues one whose content was removed. A message locked by another
        # transaction is left for the next purge.
        return query.order_by(message.finished_at, message.id).with_for_update(skip_locked=True)

    def remove_slice(ids: list[int]) -> None:
        # The message's own rows first, each counted, then the messages.
        db.session.execute(delete(MessageContent).where(MessageContent.message_id.in_(ids))
                           .execution_options(synchronize_session=False))
        report.recipients += db.session.execute(
            delete(MessageRecipient).where(MessageRecipient.message_id.in_(ids))
            .execution_options(synchronize_session=False)).rowcount
        report.attempts += db.session.execute(
            delete(DeliveryAttempt).where(DeliveryAttempt.message_id.in_(ids))
            .execution_options(synchronize_session=False)).rowcount
        report.messages += db.session.execute(
            delete(message).where(message.id.in_(ids)).execution_options(synchronize_session=False)).rowcount

    _slices(select_slice, remove_slice, size, report, going)


def _purge_rows(model, moment, conditions: tuple, partition_id: int, cutoff: datetime, size: int,
                report: PurgeReport, kind: str, going: Callable[[], bool]) -> None:
    """Rows of `model` of the partition whose `moment` is before `cutoff` (and `conditions`)."""

    def select_slice(after):
        query = select(moment, model.id).where(model.partition_id == partition_id, moment < cutoff, *conditions)
        if after is not None:
            query = query.where(tuple_(moment, model.id) > after)
        return query.order_by(moment, model.id)

    def remove_slice(ids: list[int]) -> None:
        removed = db.session.execute(delete(model).where(model.id.in_(ids))
                                     .execution_options(synchronize_session=False)).rowcount
        setattr(report, kind, getattr(report, kind) + removed)

    _slices(select_slice, remove_slice, size, report, going)


# --- the job ------------------------------------------------------------------------------


def schedule_partition(node: "Node", partition_id: int, check_seconds: float) -> None:
    """Puts the partition's purge job on the node's scheduler, beside its monitor job: it looks
    every few seconds whether a purge is due; the purge runs on one node (run_purge)."""
    node.add_job(_purge_job, "interval", args=(node, partition_id), seconds=check_seconds,
                 id=f"retention:{partition_id}", replace_existing=True, next_run_time=utcnow())


def _purge_job(node: "Node", partition_id: int) -> None:
    if not node.active or node.stopping:
        return
    try:
        run_purge(partition_id, node.name, keep_going=lambda: node.active and not node.stopping)
    except Exception:
        log.exception("purge for partition %s failed", partition_id)
        db.session.rollback()
