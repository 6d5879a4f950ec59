"""Login throttling: after MAILSENDER_LOGIN_FAILURE_LIMIT failed logins within
MAILSENDER_LOGIN_WINDOW_MINUTES, for one username or from one client address, further attempts
are refused with a 429 until the window has slid past enough of them.

Failures are rows in the database (LoginFailure), so that every node counts the same ones. An
attempt refused here checks no password and is not counted: the window always ends, and the
right password then works again. There is no lockout beyond it.
"""
from __future__ import annotations

import math
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, func, select

from .. import audit, clock
from ..database import db
from ..models import LoginFailure, User
from ..refusal import Refusal
from .users import CONTROL_CHARACTERS, USERNAME_MAX, authenticate, user_named

ADDRESS_MAX = 100


class LoginThrottled(Refusal):
    """Too many failed logins for the username or from the address; `retry_after` in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(429, f"Too many failed logins. Try again in {retry_after} seconds.",
                         retry_after=retry_after)


def failure_limit() -> int:
    return int(current_app.config["MAILSENDER_LOGIN_FAILURE_LIMIT"])


def window() -> timedelta:
    return clock.minutes(current_app.config["MAILSENDER_LOGIN_WINDOW_MINUTES"])


def _username_key(username: str) -> str:
    # Folded, so that "Admin" and "admin" count against one username; control characters (NUL,
    # which PostgreSQL refuses in text) stand as "?": no real username holds one.
    return CONTROL_CHARACTERS.sub("?", (username or "").strip().lower())[:USERNAME_MAX]


def authenticate_throttled(username: str, password: str, address: str) -> User | None:
    """users.authenticate, counted: the user with these credentials, or None after recording the
    failure. Refuses with LoginThrottled, before any password is checked, while the username or
    the address has failure_limit() failures within the window. The caller commits."""
    username_key, address = _username_key(username), (address or "")[:ADDRESS_MAX]
    wait = seconds_until_allowed(username_key, address)
    if wait:
        raise LoginThrottled(wait)
    user = authenticate(username, password)
    if user is None:
        _record_failure(username, username_key, address)
    return user


def seconds_until_allowed(username_key: str, address: str) -> int:
    """0 when a login may be tried now; else the whole seconds until it may."""
    now = clock.utcnow()
    allowed_at = max((moment for moment in (_allowed_at(LoginFailure.username, username_key, now),
                                             _allowed_at(LoginFailure.address, address, now))
                      if moment is not None), default=None)
    if allowed_at is None:
        return 0
    return max(1, math.ceil((allowed_at - now).total_seconds()))


def _allowed_at(column, key: str, now):
    """When the failures counted against `key` fall below the limit, if they are at it now."""
    # The limit-th newest failure in the window: once it leaves, fewer than the limit remain.
    oldest_that_counts = db.session.scalar(
        select(LoginFailure.at).where(column == key, LoginFailure.at > now - window())
        .order_by(LoginFailure.at.desc()).offset(failure_limit() - 1).limit(1))
    return oldest_that_counts + window() if oldest_that_counts is not None else None


def _failures_in_window(column, key: str, now) -> int:
    return db.session.scalar(select(func.count(LoginFailure.id))
                             .where(column == key, LoginFailure.at > now - window()))


def _record_failure(username: str, username_key: str, address: str) -> None:
    now = clock.utcnow()
    # Rows that have left the window count for nothing any more.
    db.session.execute(delete(LoginFailure).where(LoginFailure.at <= now - window()))
    db.session.add(LoginFailure(username=username_key, address=address, at=now))
    db.session.flush()
    # Recorded once, by the failure that reaches the limit: the attempts refused after it are not.
    reached = [name for name, column, key in (("username", LoginFailure.username, username_key),
                                              ("address", LoginFailure.address, address))
               if _failures_in_window(column, key, now) == failure_limit()]
    if reached:
        user = user_named(username)
        audit.record(None, "user.login_throttled", partition_id=user.partition_id if user else None, target=user,
                     username=username_key, address=address, reached=reached)
