"""Users: who logs in, their role and departments, their password, their sessions."""
from __future__ import annotations

import logging
import re
import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError

from .. import audit, clock
from ..database import db, write_apart
from ..models import Department, Partition, User, UserSession
from ..security import hash_password, token_digest, verify_password
from ..states import ROLE_ADMIN, ROLES
from .checks import (
    DirectoryError,
    address_field,
    change_unique,
    flush_unique,
    lock_partition,
    password_field,
    refuse,
    refuse_with_status,
    text_field,
)
from .lookups import get_in_partition, root_department
from .tokens import revoke_user_tokens

log = logging.getLogger("mailsender.directory")

USERNAME_MAX = 150
_USERNAME = re.compile(r"^[\w.@+-]+$")
# No username holds one (see _USERNAME), and PostgreSQL refuses NUL in a query's text.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _username(data: dict, problems: dict) -> str | None:
    username = text_field(data, "username", problems, required=True, max_length=USERNAME_MAX, what="username")
    if username and not _USERNAME.match(username):
        problems["username"] = "A username may hold letters, digits and . _ - @ + only."
        return None
    return username


def _taken_text(username: str) -> str:
    return f"The username {username!r} is taken."


def _username_taken(username: str, except_id: int | None = None) -> bool:
    # Unique across partitions: a login names a user, not a partition.
    query = select(User.id).where(func.lower(User.username) == username.lower())
    if except_id is not None:
        query = query.where(User.id != except_id)
    return db.session.scalar(query) is not None


def _role(data: dict, problems: dict) -> str | None:
    role = data.get("role")
    if role not in ROLES:
        problems["role"] = f"The role must be one of {', '.join(ROLES)}."
        return None
    return role


def _departments(partition_id: int, data: dict, problems: dict) -> list[Department] | None:
    """The departments named by `department_ids`; none named means the root."""
    values = data.get("department_ids")
    if values in (None, ""):
        values = []
    if not isinstance(values, (list, tuple)):
        problems["department_ids"] = "The departments must be a list of department ids."
        return None
    departments: list[Department] = []
    for value in values:
        department = get_in_partition(Department, value, partition_id)
        if department is None:
            problems["department_ids"] = f"No such department: {value}."
            return None
        if department not in departments:
            departments.append(department)
    return departments or [root_department(partition_id)]


def _disabled(data: dict, problems: dict) -> bool | None:
    value = data.get("disabled", False)
    if not isinstance(value, bool):
        problems["disabled"] = "Disabled must be true or false."
        return None
    return value


def create_user(partition: Partition, username: str, password: str, role: str, *,
                email: str = "", departments: list[Department] | None = None, actor="cli") -> User:
    """A user of the partition, in the root department unless departments are given."""
    problems: dict = {}
    username = _username({"username": username}, problems)
    _role({"role": role}, problems)
    email = address_field({"email": email}, "email", problems, required=False)
    if not password:
        problems["password"] = "A user needs a password."
    for department in departments or []:
        if department.partition_id != partition.id:
            problems["department_ids"] = f"No such department: {department.id}."
    refuse(problems)
    if _username_taken(username):
        raise DirectoryError(409, _taken_text(username), {"username": _taken_text(username)})
    user = User(
        partition_id=partition.id,
        username=username,
        email=email or "",
        role=role,
        password_hash=hash_password(password),
        departments=departments or [root_department(partition.id)],
    )
    db.session.add(user)
    flush_unique("username", _taken_text(username))
    audit.record(actor, "user.create", partition_id=partition.id, target=user, username=username, role=role,
                 department_ids=[d.id for d in user.departments])
    return user


def add_user(partition_id: int, data: dict, *, actor) -> User:
    """A user from the window or the API: {username, password, role, email, department_ids,
    disabled}, every field checked before anything is written."""
    problems: dict = {}
    _username(data, problems)
    _role(data, problems)
    address_field(data, "email", problems, required=False)
    password_field(data, "password", problems)
    departments = _departments(partition_id, data, problems)
    disabled = _disabled(data, problems)
    refuse(problems)
    partition = db.session.get(Partition, partition_id)
    user = create_user(partition, data["username"], data["password"], data["role"],
                       email=data.get("email") or "", departments=departments, actor=actor)
    if disabled:
        user.disabled = True
        audit.record(actor, "user.disable", partition_id=partition_id, target=user, username=user.username)
    return user


def _is_active_admin(user: User) -> bool:
    return user.role == ROLE_ADMIN and not user.disabled


def _other_active_admins(user: User) -> int:
    return db.session.scalar(
        select(func.count(User.id)).where(User.partition_id == user.partition_id, User.id != user.id,
                                          User.role == ROLE_ADMIN, User.disabled.is_(False))
    )


def end_sessions(user: User) -> None:
    """Every session of the user, on every browser, fails its next request: each carries the
    old number."""
    user.session_version = (user.session_version or 1) + 1


# --- one browser's session ----------------------------------------------------------------


def session_idle_limit() -> timedelta:
    return clock.minutes(current_app.config["MAILSENDER_SESSION_IDLE_MINUTES"])


def open_session(user: User) -> str:
    """A new session of the user's: answers the key its cookie is to carry (only the key's digest
    is stored). Deletes every user's sessions that have been idle too long."""
    now = clock.utcnow()
    db.session.execute(delete(UserSession).where(UserSession.last_seen_at <= now - session_idle_limit()))
    key = secrets.token_urlsafe(32)
    db.session.add(UserSession(partition_id=user.partition_id, user_id=user.id, digest=token_digest(key),
                               created_at=now, last_seen_at=now))
    return key


def live_session(user: User, key: str | None) -> UserSession | None:
    """The user's session with this key, unless it has ended (logged out, or idle too long)."""
    if not key:
        return None
    row = db.session.scalars(select(UserSession).where(UserSession.digest == token_digest(key))).first()
    if row is None or row.user_id != user.id or row.last_seen_at <= clock.utcnow() - session_idle_limit():
        return None
    return row


def renew_session(row: UserSession) -> None:
    """Counts a request as the session's activity, and commits. Written at most sixty times per
    idle limit, so that not every request writes; apart from a read that the request began."""
    now = clock.utcnow()
    if now - row.last_seen_at < session_idle_limit() / 60:
        return
    try:
        write_apart(update(UserSession).where(UserSession.id == row.id).values(last_seen_at=now))
    except OperationalError as error:  # the next request renews it; this one is not refused for it
        log.warning("a session's renewal was not written: %s", error)


def close_session(key: str | None) -> None:
    """Ends the session with this key (logging out); the user's other sessions go on."""
    if key:
        db.session.execute(delete(UserSession).where(UserSession.digest == token_digest(key)))


def update_user(user: User, data: dict, *, actor) -> User:
    """Changes the fields present in `data`: username, email, role, department_ids, disabled,
    password (an administrator's reset).

    Disabling and a reset each end the user's sessions and revoke all their tokens at once. The
    last active administrator of a partition can be neither disabled nor demoted.
    """
    problems: dict = {}
    partition_id = user.partition_id
    changes: dict = {}
    if "username" in data:
        username = _username(data, problems)
        change_unique(user, "username", username, problems, changes, refusal=_taken_text,
                       taken=lambda value: _username_taken(value, except_id=user.id))
    if "email" in data:
        email = address_field(data, "email", problems, required=False)
        if email is not None and email != user.email:
            changes["email"] = email
    if "role" in data:
        role = _role(data, problems)
        if role and role != user.role:
            changes["role"] = role
    departments = None
    if "department_ids" in data:
        departments = _departments(partition_id, data, problems)
        if departments is not None and [d.id for d in departments] != [d.id for d in user.departments]:
            changes["department_ids"] = sorted(d.id for d in departments)
        else:
            departments = None
    if "disabled" in data:
        disabled = _disabled(data, problems)
        if disabled is not None and disabled != user.disabled:
            changes["disabled"] = disabled
    password = None
    if "password" in data:
        password = password_field(data, "password", problems)
    if _is_active_admin(user) and (changes.get("role", ROLE_ADMIN) != ROLE_ADMIN or changes.get("disabled")):
        lock_partition(partition_id)
        if _other_active_admins(user) == 0:
            field = "disabled" if changes.get("disabled") else "role"
            verb = "disabled" if field == "disabled" else "demoted"
            problems[field] = (f"{user.username} is the last active administrator of this partition "
                               f"and cannot be {verb}.")
            refuse_with_status(problems, 409)
    refuse(problems)

    before = {key: (sorted(d.id for d in user.departments) if key == "department_ids" else getattr(user, key))
              for key in changes}
    for key, value in changes.items():
        if key == "department_ids":
            user.departments = departments
        else:
            setattr(user, key, value)
    if changes:
        flush_unique("username", _taken_text(user.username))
        audit.record(actor, "user.update", partition_id=partition_id, target=user,
                     **{key: [before[key], value] for key, value in changes.items()})
    if changes.get("disabled"):
        end_sessions(user)
        revoked = revoke_user_tokens(user)
        audit.record(actor, "user.disable", partition_id=partition_id, target=user,
                     username=user.username, tokens_revoked=revoked)
    elif changes.get("disabled") is False:
        audit.record(actor, "user.enable", partition_id=partition_id, target=user, username=user.username)
    if password is not None:
        user.password_hash = hash_password(password)
        end_sessions(user)
        revoked = revoke_user_tokens(user)
        audit.record(actor, "user.password_reset", partition_id=partition_id, target=user,
                     username=user.username, tokens_revoked=revoked)
    return user


def change_own_password(user: User, current_password, new_password) -> None:
    """The user's own password change: the current one is required. Ends the user's other
    sessions (the caller logs the current one in again) and revokes all their API tokens."""
    problems: dict = {}
    if not isinstance(current_password, str) or not current_password:
        problems["current_password"] = "The current password is required."
    elif not verify_password(user.password_hash, current_password):
        problems["current_password"] = "The current password is wrong."
    password_field({"new_password": new_password}, "new_password", problems)
    refuse(problems)
    user.password_hash = hash_password(new_password)
    end_sessions(user)
    revoked = revoke_user_tokens(user)
    audit.record(user, "user.password_change", partition_id=user.partition_id, target=user,
                 tokens_revoked=revoked)


# One hash per argon2 cost, made at the first unknown username: checking an unknown user against
# it costs one verification, as a known user does. A fresh hash each time cost a second argon2
# run, and the time told which usernames exist.
_UNKNOWN_USER_HASHES: dict[tuple[int, int], str] = {}


def _unknown_user_hash() -> str:
    cost = (current_app.config["PASSWORD_TIME_COST"], current_app.config["PASSWORD_MEMORY_KIB"])
    if cost not in _UNKNOWN_USER_HASHES:
        _UNKNOWN_USER_HASHES[cost] = hash_password(secrets.token_hex(16))
    return _UNKNOWN_USER_HASHES[cost]


def user_named(username: str | None) -> User | None:
    """The user of this exact username (blanks around it aside), or None."""
    username = (username or "").strip()
    if not username or CONTROL_CHARACTERS.search(username):
        return None
    return db.session.scalars(select(User).where(User.username == username)).first()


def authenticate(username: str, password: str) -> User | None:
    """The active user with these credentials, else None — the same None, after the same one
    argon2 verification, for every failure."""
    user = user_named(username)
    if not verify_password(user.password_hash if user else _unknown_user_hash(), password or ""):
        return None
    if user.disabled:
        return None
    return user
