"""An SMTP route's state beyond its settings: paused for a configuration fault, held for a quota.

A configuration fault (a refused login, an untrusted certificate, a refused EHLO name) would
fail every message alike, so the engine pauses the route instead: nothing of it is claimed,
nothing is failed, and the administrators are told once. The pause holds for the settings it
happened under: a Save (a new settings version) lifts it, and so does a Test of the saved
settings that passes. A provider's quota holds the route until the quota resets.

The route is "" (the partition's own SMTP settings) until routes per mailbox exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from . import audit
from .clock import iso, utcnow
from .database import db
from .models import RouteState

DEFAULT_ROUTE = ""


@dataclass(frozen=True)
class RouteStop:
    """Why a route sends nothing now: paused (until a Save or Test) or held (until `until`)."""

    paused: bool
    reason: str
    since: datetime | None
    until: datetime | None = None

    def to_json(self) -> dict:
        return {"paused": self.paused, "reason": self.reason, "since": iso(self.since), "until": iso(self.until)}

    @property
    def words(self) -> str:
        if self.paused:
            return f"Paused: {self.reason}. Fix the settings and Save, or Test them, to resume."
        return f"Holding until {self.until:%Y-%m-%d %H:%M} UTC: {self.reason}. Sending resumes then by itself."


def _row(partition_id: int, route: str = DEFAULT_ROUTE) -> RouteState | None:
    return db.session.scalar(select(RouteState).where(RouteState.partition_id == partition_id,
                                                      RouteState.route == route))


def route_stop(partition_id: int, settings_version: int, now: datetime | None = None,
               route: str = DEFAULT_ROUTE) -> RouteStop | None:
    """Why the route may not send now, or None. A pause recorded under another settings version
    than the current one is over: the settings were saved since."""
    row = _row(partition_id, route)
    if row is None:
        return None
    if row.paused_at is not None and row.paused_version == settings_version:
        return RouteStop(True, row.paused_reason or "a configuration fault", row.paused_at)
    now = now or utcnow()
    if row.held_until is not None and row.held_until > now:
        return RouteStop(False, row.held_reason or "the provider's quota is used up", None, row.held_until)
    return None


def _ensure(partition_id: int, route: str) -> RouteState:
    row = _row(partition_id, route)
    if row is None:
        row = RouteState(partition_id=partition_id, route=route)
        db.session.add(row)
    return row


def pause(partition_id: int, settings_version: int, reason: str, route: str = DEFAULT_ROUTE) -> bool:
    """Pauses the route for the settings of `settings_version`; True when it was not paused yet
    (a new pause, which the monitor announces). The caller commits."""
    row = _ensure(partition_id, route)
    if row.paused_at is not None and row.paused_version == settings_version:
        return False
    row.paused_at, row.paused_reason, row.paused_version = utcnow(), reason, settings_version
    row.pause_notified_at = None
    audit.record("engine", "route.pause", partition_id=partition_id, target=row, route=route, reason=reason,
                 settings_version=settings_version)
    return True


def hold(partition_id: int, until: datetime, reason: str, route: str = DEFAULT_ROUTE) -> None:
    """Holds the route until `until` (a provider's quota). The caller commits."""
    row = _ensure(partition_id, route)
    if row.held_until is not None and row.held_until >= until:
        return
    row.held_until, row.held_reason = until, reason
    audit.record("engine", "route.hold", partition_id=partition_id, target=row, route=route, reason=reason,
                 until=iso(until))


def lift_pause(partition_id: int, actor, why: str, route: str = DEFAULT_ROUTE) -> bool:
    """Lifts a pause (a Test that passed); True when there was one. The caller commits."""
    row = _row(partition_id, route)
    if row is None or row.paused_at is None:
        return False
    audit.record(actor, "route.resume", partition_id=partition_id, target=row, route=route, why=why,
                 reason=row.paused_reason)
    row.paused_at = row.paused_reason = row.paused_version = row.pause_notified_at = None
    return True


def unannounced_pause(partition_id: int, settings_version: int, route: str = DEFAULT_ROUTE) -> RouteState | None:
    """The route's current pause if the administrators were not told of it yet."""
    row = _row(partition_id, route)
    if row is not None and row.paused_at is not None and row.paused_version == settings_version \
            and row.pause_notified_at is None:
        return row
    return None
