"""The monitor's definitions, once for the window, the API and the job alike.

- pending: queued + deferred + sending;
- stuck: not delivered and not moving, for one of four reasons (REASON_TEXT): held by a node
  that stopped answering (its lease on its name ran out: from that moment, not when the claim's
  own lease would), claimed past its lease, deferred after STUCK_ATTEMPTS attempts or more, or
  waiting (queued or deferred) longer than the stuck age (MAILSENDER_STUCK_AGE_MINUTES product
  minutes since it was queued).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import and_, case, func, or_, select

from webapp.core.clock import db_now, minutes, utcnow
from webapp.core.database import db
from webapp.core.models import MonitorState, OutgoingMessage
from webapp.core.settings.store import get_settings
from webapp.core.states import DEFERRED, PENDING_STATES, QUEUED

from ..claims import lease_ran_out, node_gone

# A deferred message that has been tried this often is stuck: retrying alone is not helping.
STUCK_ATTEMPTS = 3

REASON_NODE = "node_gone"
REASON_LEASE = "lease_expired"
REASON_FAILURES = "repeated_failures"
REASON_WAITING = "waiting_too_long"
REASON_TEXT = {
    REASON_NODE: "held by a node that stopped answering",
    REASON_LEASE: "claimed past its lease",
    REASON_FAILURES: f"deferred after {STUCK_ATTEMPTS} or more attempts",
    REASON_WAITING: "waiting longer than the stuck age",
}

_MESSAGE = OutgoingMessage


def stuck_age_seconds() -> float:
    return minutes(current_app.config["MAILSENDER_STUCK_AGE_MINUTES"]).total_seconds()


def _stuck_rules():
    """(reason, condition) in the order a message's reason is chosen; timed by the database."""
    return [
        (REASON_NODE, node_gone()),
        (REASON_LEASE, lease_ran_out()),
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


def above_threshold(pending: int, threshold: int) -> bool:
    """More messages pending than the monitor's threshold."""
    return pending > threshold


def is_alert(enabled: bool, pending: int, threshold: int, stuck: int) -> bool:
    """The alert: the monitor is on, and pending exceeds the threshold or anything is stuck."""
    return bool(enabled) and (above_threshold(pending, threshold) or stuck > 0)


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
        return above_threshold(self.pending, self.threshold)


def overview(partition_id: int, *, limit: int, after_id: int | None = None) -> Overview:
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
