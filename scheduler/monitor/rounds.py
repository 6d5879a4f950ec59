"""The monitor job: a round per partition, on one node at a time.

The job runs one round per partition every monitor-sleep minutes while the monitor is enabled,
on whichever node first sets the round mark (a compare-and-set UPDATE on MonitorState), so that
several nodes never notify twice. Notifications go straight over the partition's SMTP server,
never through the queue they warn about, and to the webhook when one is set (webhook.py): its
retries run on a second job per partition, every few seconds, on whichever node claims each.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from webapp.core import route_state
from webapp.core.clock import db_now, minutes, utcnow
from webapp.core.database import db
from webapp.core.models import MailSenderSettings, MonitorState, OutgoingMessage, Partition

if TYPE_CHECKING:
    from ..node import Node
from . import retention, webhook
from .definitions import (
    above_threshold,
    is_alert,
    monitor_state,
    pending_count,
    stuck_condition,
    stuck_count,
    stuck_messages,
)
from .notifications import (
    NOTIFY_LIST_LIMIT,
    ROUTE_PAUSED_KIND,
    STUCK_KIND,
    THRESHOLD_KIND,
    Notified,
    notify,
    route_paused_text,
    stuck_facts,
    stuck_text,
    threshold_facts,
    threshold_text,
)

log = logging.getLogger("mailsender.monitor")
# How often each node looks whether a round is due, at most (product minutes are coarser).
CHECK_SECONDS = 5.0


def _ensure_state(partition_id: int) -> None:
    """Partitions get their row when made; this only covers a row lost some other way."""
    if monitor_state(partition_id) is not None:
        return
    try:
        db.session.add(MonitorState(partition_id=partition_id))
        db.session.commit()
    except IntegrityError:  # another node made it first
        db.session.rollback()


def schedule(node: "Node") -> None:
    """Puts the monitor on the node's scheduler: one job per partition, added as partitions appear.

    Each job looks every few seconds whether its partition's round is due; the round itself
    runs at most once per monitor-sleep minutes across all nodes (see run_round). Beside it, the
    partition's retention purge, under a guard of the same kind (retention.py). A node
    configured with MAILSENDER_MONITOR off runs none of them.
    """
    if not node.app.config["MAILSENDER_MONITOR"]:
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
                node.add_job(_webhook_job, "interval", args=(node, partition_id), seconds=check_seconds,
                             id=f"monitor-webhook:{partition_id}", replace_existing=True, next_run_time=utcnow())
                retention.schedule_partition(node, partition_id, check_seconds)
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


def _webhook_job(node: "Node", partition_id: int) -> None:
    """The webhook's retries, on a job of their own: a slow receiver never holds up a round."""
    if not node.active or node.stopping:
        return
    try:
        webhook.retry_due(partition_id)
    except Exception:
        log.exception("monitor webhook retries for partition %s failed", partition_id)
        db.session.rollback()


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
    above = above_threshold(pending, threshold)
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
            sent = notify(settings, THRESHOLD_KIND, *threshold_text(settings, pending), loop, token_source,
                          facts=threshold_facts(settings, pending))
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
    table = OutgoingMessage.__table__
    newly_stuck = list(db.session.execute(
        update(table)
        .where(table.c.partition_id == partition_id, stuck_condition(), table.c.stuck_notified_at.is_(None))
        .values(stuck_notified_at=db_now())
        .returning(table.c.id)).scalars())
    db.session.commit()
    if newly_stuck:
        newly_stuck.sort()
        listed = stuck_messages(partition_id, ids=newly_stuck[:NOTIFY_LIST_LIMIT])
        sent = notify(settings, STUCK_KIND, *stuck_text(settings, listed, len(newly_stuck)), loop, token_source,
                      facts=stuck_facts(listed, len(newly_stuck)))
        sends.append(sent)
        if not sent.ok:
            db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id.in_(newly_stuck))
                               .values(stuck_notified_at=None).execution_options(synchronize_session=False))
        db.session.commit()

    # A paused route is announced once (its e-mail goes over that route, and may well fail: the
    # webhook and the window's banner are the channels that do not depend on it).
    paused = route_state.unannounced_pause(partition_id, settings.version)
    if paused is not None:
        paused.pause_notified_at = utcnow()
        reason = paused.paused_reason or "a configuration fault"
        db.session.commit()
        sends.append(notify(settings, ROUTE_PAUSED_KIND, *route_paused_text(settings, reason), loop, token_source,
                            facts={"route": paused.route, "reason": reason,
                                   "paused_at": paused.paused_at.isoformat() if paused.paused_at else None}))
        db.session.commit()

    total_stuck = stuck_count(partition_id)
    alert = is_alert(True, pending, threshold, total_stuck)
    values: dict = {"alert_active": alert}
    # The banner says when the e-mail failed, even where the webhook told somebody.
    failed = [n for n in sends if not n.email_ok]
    if failed:
        values["notify_error"] = failed[-1].error
    elif sends or not alert:
        values["notify_error"] = None
    db.session.execute(update(MonitorState).where(state_filter).values(**values)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    return RoundReport(pending=pending, stuck=total_stuck, alert_active=alert, notifications=sends)
