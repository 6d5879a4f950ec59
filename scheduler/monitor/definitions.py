"""The monitor's definitions, once for the window, the API and the job alike.

- pending: queued + deferred + sending;
- stuck: not delivered and not moving, for one of five reasons (REASON_TEXT): held by a node
  that stopped answering (its lease on its name ran out: from that moment, not when the claim's
  own lease would), claimed past its lease, deferred after STUCK_ATTEMPTS attempts or more,
  waiting (queued or deferred) longer than the stuck age (MAILSENDER_STUCK_AGE_MINUTES product
  minutes since it was queued), or held for review (an unclear outcome: nothing sends it until
  an administrator decides). Every stuck message is pending but the held ones.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import and_, case, func, or_, select, tuple_, union_all, update
from sqlalchemy.exc import IntegrityError

from webapp.core.clock import db_now, minutes, utcnow
from webapp.core.database import db
from webapp.core.models import MonitorState, Notification, OutgoingMessage, QueueFigures
from webapp.core.settings.store import get_settings
from webapp.core.states import (
    CHANNEL_FAILED,
    CHANNEL_OK,
    CHANNEL_PENDING,
    DEFERRED,
    FAILED,
    HELD,
    PENDING_STATES,
    QUEUED,
    REMOVED,
)

from ..claims import lease_ran_out, node_gone
from .errors import error_in_words
from .retention import LastPurge, keeping_days, last_purge

# A deferred message that has been tried this often is stuck: retrying alone is not helping.
STUCK_ATTEMPTS = 3

REASON_NODE = "node_gone"
REASON_LEASE = "lease_expired"
REASON_FAILURES = "repeated_failures"
REASON_WAITING = "waiting_too_long"
REASON_HELD = "held_for_review"
REASON_TEXT = {
    REASON_NODE: "held by a node that stopped answering",
    REASON_LEASE: "claimed past its lease",
    REASON_FAILURES: f"deferred after {STUCK_ATTEMPTS} or more attempts",
    REASON_WAITING: "waiting longer than the stuck age",
    REASON_HELD: "held for review: the server may have it (Send again or Mark as sent)",
}
# The states a stuck message may be in: the pending ones, and held.
STUCK_STATES = (*PENDING_STATES, HELD)

_MESSAGE = OutgoingMessage

log = logging.getLogger("mailsender.monitor")

# Up to this many pending messages, the counts are exact and made at each request: bounded so,
# a count reads at most this many index entries however long the queue. Above it, the window
# shows the last full count (QueueFigures), "about N", with its age.
EXACT_COUNT_LIMIT = 10_000
# A full count older than this is counted again, in the background, by one process at a time.
FIGURES_MAX_AGE_SECONDS = 4.0
# A count not finished by then is presumed to have died with its process: another may start.
COUNT_TIMEOUT_SECONDS = 120.0


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
        (REASON_HELD, _MESSAGE.status == HELD),
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

    @property
    def last_error_text(self) -> str | None:
        """The last error in words a person reads (a connection error too, which has no SMTP code)."""
        return error_in_words(self.last_error)


def _pending(partition_id: int):
    return and_(_MESSAGE.partition_id == partition_id, _MESSAGE.status.in_(PENDING_STATES))


def pending_count(partition_id: int) -> int:
    """The exact count of pending messages: O(pending). The window uses queue_counts instead."""
    return db.session.scalar(select(func.count()).select_from(_MESSAGE).where(_pending(partition_id))) or 0


def bounded_pending_count(partition_id: int, limit: int) -> int:
    """The pending count, or limit + 1 when there are more: reads at most limit + 1 index entries."""
    first = select(_MESSAGE.id).where(_pending(partition_id)).limit(limit + 1).subquery()
    return db.session.scalar(select(func.count()).select_from(first)) or 0


def oldest_pending_seconds(partition_id: int, now: datetime | None = None) -> float | None:
    """How long the oldest pending message has been in the queue, or None when none is pending.

    One lookup per state: with the states in one IN, the index (partition, state, queue time)
    is no longer in queue-time order and every pending message would be read.
    """
    firsts = [select(func.min(_MESSAGE.queued_at)).where(_MESSAGE.partition_id == partition_id,
                                                          _MESSAGE.status == status).scalar_subquery()
              for status in PENDING_STATES]
    found = [moment for moment in db.session.execute(select(*firsts)).one() if moment is not None]
    if not found:
        return None
    return max(0.0, round(((now or utcnow()) - min(found)).total_seconds(), 1))


def stuck_count(partition_id: int) -> int:
    """The exact count of stuck messages: O(pending + held), every stuck message being pending or held."""
    stuck = select(func.count()).select_from(_MESSAGE).where(_pending(partition_id), stuck_condition())
    held = select(func.count()).select_from(_MESSAGE).where(_MESSAGE.partition_id == partition_id,
                                                            _MESSAGE.status == HELD)
    return (db.session.scalar(stuck) or 0) + (db.session.scalar(held) or 0)


# --- counts that do not grow with the queue -----------------------------------------------


@dataclass(frozen=True)
class QueueCounts:
    """The pending and stuck counts the window, the banner and the API show."""

    pending: int
    stuck: int
    exact: bool  # counted now; else the last full count, of counted_at
    counted_at: datetime | None = None

    def age_seconds(self, now: datetime | None = None) -> float | None:
        if self.exact or self.counted_at is None:
            return None
        return max(0.0, round(((now or utcnow()) - self.counted_at).total_seconds(), 1))


def exact_count_limit() -> int:
    return int(current_app.config.get("MAILSENDER_EXACT_COUNT_LIMIT", EXACT_COUNT_LIMIT))


def queue_counts(partition_id: int) -> QueueCounts:
    """The counts at a cost that does not grow with the queue: exact up to exact_count_limit()
    pending; above, the last full count, counted again in the background once it is older than
    FIGURES_MAX_AGE_SECONDS. Only a partition never counted in full is counted here and now."""
    limit = exact_count_limit()
    pending = bounded_pending_count(partition_id, limit)
    if pending <= limit:
        return QueueCounts(pending, stuck_count(partition_id), True)
    stored = db.session.scalars(select(QueueFigures).where(QueueFigures.partition_id == partition_id)).first()
    max_age = float(current_app.config.get("MAILSENDER_FIGURES_MAX_AGE_SECONDS", FIGURES_MAX_AGE_SECONDS))
    if stored is None or stored.counted_at is None or utcnow() - stored.counted_at > timedelta(seconds=max_age):
        count_in_background(partition_id)
    if stored is None or stored.counted_at is None:
        return QueueCounts(pending_count(partition_id), stuck_count(partition_id), True)
    return QueueCounts(stored.pending, stored.stuck, False, stored.counted_at)


def refresh_queue_figures(partition_id: int) -> bool:
    """Counts the partition's pending and stuck messages in full and stores them, unless another
    process is counting them: whether it counted. Commits."""
    if not _take_count(partition_id):
        return False
    counted_at = utcnow()
    pending, stuck = pending_count(partition_id), stuck_count(partition_id)
    db.session.execute(update(QueueFigures).where(QueueFigures.partition_id == partition_id).values(
        pending=pending, stuck=stuck, counted_at=counted_at, counting_until=None))
    db.session.commit()
    return True


def _take_count(partition_id: int) -> bool:
    """The right to count, held until COUNT_TIMEOUT_SECONDS from now. Commits."""
    until = db_now(COUNT_TIMEOUT_SECONDS)
    taken = db.session.execute(update(QueueFigures).where(
        QueueFigures.partition_id == partition_id,
        or_(QueueFigures.counting_until.is_(None), QueueFigures.counting_until < db_now()))
        .values(counting_until=until)).rowcount
    if taken:
        db.session.commit()
        return True
    if db.session.scalar(select(QueueFigures.id).where(QueueFigures.partition_id == partition_id)) is not None:
        db.session.rollback()
        return False
    try:  # the partition's first count: the row is the right
        db.session.add(QueueFigures(partition_id=partition_id, pending=0, stuck=0))
        db.session.flush()
        db.session.execute(update(QueueFigures).where(QueueFigures.partition_id == partition_id)
                           .values(counting_until=until))
        db.session.commit()
        return True
    except IntegrityError:  # another process made it first, and counts
        db.session.rollback()
        return False


# The partitions this process is counting now: a request does not start a second count of one.
_counting: set[tuple[int, int]] = set()
_counting_lock = threading.Lock()


def count_in_background(partition_id: int) -> None:
    """refresh_queue_figures on a thread of its own, so that no request waits for a full count.

    Its own thread and session, never the request's: on SQLite a request may hold the write
    lock until it ends, and the count's write waits for it there.
    """
    app = current_app._get_current_object()
    key = (id(app), partition_id)
    with _counting_lock:
        if key in _counting:
            return
        _counting.add(key)

    def count():
        try:
            with app.app_context():
                try:
                    refresh_queue_figures(partition_id)
                finally:
                    db.session.remove()
        except Exception:  # the next request that finds the figures old starts another
            log.exception("counting the queue of partition %s failed", partition_id)
        finally:
            with _counting_lock:
                _counting.discard(key)

    threading.Thread(target=count, name=f"queue-count-{partition_id}", daemon=True).start()


def stuck_messages(partition_id: int, *, limit: int | None = None, after_id: int | None = None,
                   ids: list[int] | None = None, now: datetime | None = None) -> list[StuckMessage]:
    """The partition's stuck messages in queue order (queue time, then id), each with its reason;
    keyset paging after the message `after_id` (its place in that order).

    One ordered, limited selection per stuck state, each a range of ix_outgoing_claim, then the
    first `limit` of their union: in id order, or in one selection over the three states, a page
    read every pending message that is not stuck (a backlog younger than the stuck age) first.
    """
    now = now or utcnow()
    after = None
    if after_id is not None:
        after = db.session.scalar(select(_MESSAGE.queued_at).where(_MESSAGE.partition_id == partition_id,
                                                                  _MESSAGE.id == after_id))
    reason = stuck_reason().label("reason")
    columns = (_MESSAGE.id, _MESSAGE.status, reason, _MESSAGE.queued_at, _MESSAGE.last_error, _MESSAGE.subject,
               _MESSAGE.to_addresses, _MESSAGE.attempt_count, _MESSAGE.stuck_notified_at)
    order = (_MESSAGE.queued_at, _MESSAGE.id)

    def branch(status: str):
        query = select(*columns).where(_MESSAGE.partition_id == partition_id, _MESSAGE.status == status,
                                       stuck_condition())
        if after is not None:
            query = query.where(tuple_(_MESSAGE.queued_at, _MESSAGE.id) > tuple_(after, after_id))
        elif after_id is not None:  # that message is gone: what came after it by id
            query = query.where(_MESSAGE.id > after_id)
        if ids is not None:
            query = query.where(_MESSAGE.id.in_(ids))
        query = query.order_by(*order)
        if limit is not None:
            query = query.limit(limit)
        return query.subquery().select()

    every = union_all(*(branch(status) for status in STUCK_STATES)).subquery()
    query = select(every).order_by(every.c.queued_at, every.c.id)
    if limit is not None:
        query = query.limit(limit)
    return [
        StuckMessage(id=row.id, status=row.status, reason=row.reason, queued_at=_aware(row.queued_at),
                     age_seconds=max(0.0, round((now - _aware(row.queued_at)).total_seconds(), 1)),
                     last_error=row.last_error, subject=row.subject or "", to=list(row.to_addresses or []),
                     attempt_count=row.attempt_count or 0, notified=row.stuck_notified_at is not None)
        for row in db.session.execute(query)
    ]


# The states of a message that has ended without being delivered, which Requeue takes back.
ENDED_STATES = (FAILED, REMOVED)


@dataclass
class EndedMessage:
    """A failed or removed message as the Monitor lists it, for Requeue."""

    id: int
    status: str
    finished_at: datetime | None
    last_error: str | None
    subject: str
    to: list[str]

    @property
    def last_error_text(self) -> str | None:
        return error_in_words(self.last_error)


def ended_messages(partition_id: int, *, limit: int, before_id: int | None = None) -> list[EndedMessage]:
    """The partition's failed and removed messages, newest first (by id), keyset paging before
    the message `before_id`: one range of ix_outgoing_list_status per state, then the first
    `limit` of their union, so that a page never reads the whole history."""
    columns = (_MESSAGE.id, _MESSAGE.status, _MESSAGE.finished_at, _MESSAGE.last_error, _MESSAGE.subject,
               _MESSAGE.to_addresses)

    def branch(status: str):
        query = select(*columns).where(_MESSAGE.partition_id == partition_id, _MESSAGE.status == status)
        if before_id is not None:
            query = query.where(_MESSAGE.id < before_id)
        return query.order_by(_MESSAGE.id.desc()).limit(limit).subquery().select()

    every = union_all(*(branch(status) for status in ENDED_STATES)).subquery()
    rows = db.session.execute(select(every).order_by(every.c.id.desc()).limit(limit))
    return [EndedMessage(id=row.id, status=row.status, finished_at=_aware(row.finished_at) if row.finished_at else None,
                         last_error=row.last_error, subject=row.subject or "", to=list(row.to_addresses or []))
            for row in rows]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def above_threshold(pending: int, threshold: int) -> bool:
    """More messages pending than the monitor's threshold."""
    return pending > threshold


def is_alert(enabled: bool, pending: int, threshold: int, stuck: int) -> bool:
    """The alert: the monitor is on, and pending exceeds the threshold or anything is stuck."""
    return bool(enabled) and (above_threshold(pending, threshold) or stuck > 0)


# The notifications the window and GET /api/v1/monitor show, newest first.
RECENT_NOTIFICATIONS = 5


@dataclass
class ChannelOutcome:
    """What one channel made of a notification: a CHANNEL_STATES name, and why when it failed."""

    status: str
    error: str | None = None
    attempts: int = 0
    code: int | None = None  # the webhook's last HTTP status
    next_attempt_at: datetime | None = None
    done_at: datetime | None = None


@dataclass
class NotificationOutcome:
    """One notification as the window shows it: what it said, and each channel's outcome."""

    id: int
    kind: str
    created_at: datetime
    subject: str
    recipients: list[str]
    email: ChannelOutcome
    webhook: ChannelOutcome


def recent_notifications(partition_id: int, limit: int = RECENT_NOTIFICATIONS) -> list[NotificationOutcome]:
    """The partition's last `limit` notifications, newest first, with each channel's outcome."""
    rows = db.session.scalars(select(Notification).where(Notification.partition_id == partition_id)
                              .order_by(Notification.id.desc()).limit(limit)).all()
    found = []
    for row in rows:
        # The e-mail is written after the webhook's first attempt: neither accepted nor refused yet.
        email_status = CHANNEL_OK if row.ok else (CHANNEL_FAILED if row.error else CHANNEL_PENDING)
        found.append(NotificationOutcome(
            id=row.id, kind=row.kind, created_at=_aware(row.created_at), subject=row.subject or "",
            recipients=list(row.recipients or []),
            email=ChannelOutcome(email_status, row.error if not row.ok else None, 1 if row.ok or row.error else 0),
            webhook=ChannelOutcome(row.webhook_status, row.webhook_error if row.webhook_status != CHANNEL_OK else None,
                                   row.webhook_attempts or 0, row.webhook_code,
                                   _aware(row.webhook_next_at) if row.webhook_status == CHANNEL_PENDING
                                   and row.webhook_next_at else None,
                                   _aware(row.webhook_done_at) if row.webhook_done_at else None)))
    return found


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
    # Whether pending and stuck_count were counted now; else they are a full count this old.
    counts_exact: bool = True
    counts_age_seconds: float | None = None
    counted_at: datetime | None = None
    # The last notifications with each channel's outcome (none for a limit of 0: the banner).
    notifications: list[NotificationOutcome] = field(default_factory=list)
    # One page of the failed and removed messages, newest first (none for a limit of 0), and the
    # id to continue before when there is more.
    ended: list[EndedMessage] = field(default_factory=list)
    ended_next_before: int | None = None
    # The last retention purge: when, and what it removed (retention.py); None before the first.
    last_purge: LastPurge | None = None
    # How long each kind is kept, in days (retention.keeping_days).
    keeping_days: dict = field(default_factory=dict)

    @property
    def above_threshold(self) -> bool:
        return above_threshold(self.pending, self.threshold)


def overview(partition_id: int, *, limit: int, after_id: int | None = None,
             counts: QueueCounts | None = None, ended_limit: int = 0, ended_before: int | None = None) -> Overview:
    """The partition's monitor figures now, with one page of its stuck messages (none for a
    limit of 0) and one of its failed and removed ones (none for an ended_limit of 0); `counts`
    when the caller has them already (queue_counts)."""
    settings = get_settings(partition_id)
    state = monitor_state(partition_id)
    now = utcnow()
    counts = counts or queue_counts(partition_id)
    page = stuck_messages(partition_id, limit=limit + 1, after_id=after_id, now=now) if limit > 0 else []
    more = len(page) > limit
    page = page[:limit]
    ended = ended_messages(partition_id, limit=ended_limit + 1, before_id=ended_before) if ended_limit > 0 else []
    ended_more = len(ended) > ended_limit
    ended = ended[:ended_limit]
    return Overview(
        enabled=settings.monitor_enabled,
        sleep_minutes=settings.monitor_sleep_minutes,
        threshold=settings.monitor_pending_threshold,
        pending=counts.pending,
        oldest_pending_seconds=oldest_pending_seconds(partition_id, now),
        stuck=page,
        stuck_count=counts.stuck,
        next_after=page[-1].id if more and page else None,
        alert_active=is_alert(settings.monitor_enabled, counts.pending, settings.monitor_pending_threshold,
                              counts.stuck),
        notify_error=state.notify_error if state is not None else None,
        last_run_at=state.last_run_at if state is not None else None,
        last_run_node=state.last_run_node if state is not None else None,
        counts_exact=counts.exact,
        counts_age_seconds=counts.age_seconds(now),
        counted_at=counts.counted_at,
        notifications=recent_notifications(partition_id) if limit > 0 else [],
        ended=ended,
        ended_next_before=ended[-1].id if ended_more and ended else None,
        last_purge=last_purge(partition_id) if limit > 0 else None,
        keeping_days=keeping_days(),
    )


def monitor_state(partition_id: int) -> MonitorState | None:
    return db.session.scalars(select(MonitorState).where(MonitorState.partition_id == partition_id)).first()
