"""Time: now in UTC, the product's minute, and the database's clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import literal_column

from .database import db


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    """A moment as the API and the window state it (ISO 8601 with its offset), or None."""
    return moment.isoformat() if moment else None


def minutes(count: float) -> timedelta:
    """`count` of the product's minutes (MAILSENDER_MINUTE_SECONDS each)."""
    return timedelta(seconds=count * current_app.config["MAILSENDER_MINUTE_SECONDS"])


def days(count: float) -> timedelta:
    """`count` of the product's days: 1440 of its minutes each (real days by default)."""
    return minutes(count * 24 * 60)


def lifetime_end(start: datetime) -> datetime:
    """When a message queued (or requeued) at `start` is no longer retried: its lifetime, counted
    afresh at each, is MAILSENDER_LIFETIME_MINUTES product minutes."""
    return start + minutes(current_app.config["MAILSENDER_LIFETIME_MINUTES"])


# --- the database's clock -----------------------------------------------------------------


def db_now(offset_seconds: float = 0.0, dialect_name: str | None = None):
    """The database's current time plus `offset_seconds`, as an SQL expression (for the app's
    database, or for a `dialect_name` given).

    Leases are timed by the database so that nodes with skewed clocks agree on when one ends.
    On SQLite the text has the same shape SQLAlchemy stores (microseconds), so that text
    comparison orders it correctly against stored timestamps.
    """
    seconds = float(offset_seconds)
    if (dialect_name or db.engine.dialect.name) == "sqlite":
        return literal_column(
            f"(strftime('%Y-%m-%d %H:%M:%f', 'now', '{seconds:+.6f} seconds') || '000')"
        )
    return literal_column(f"(clock_timestamp() + make_interval(secs => {seconds:.6f}))")
