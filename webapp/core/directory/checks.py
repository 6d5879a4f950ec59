"""The directory's input checks, and its refusal (DirectoryError).

Every change of the directory validates all of its input before it writes anything, adds an
AuditEvent to the session, and leaves the commit to the caller (a view, an API route or a
command). Input arrives as a dict keyed by the API's field names, from JSON or from a form; the
refusal is a DirectoryError whose `fields` name every bad field at once.
"""
from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .. import audit
from ..addresses import AddressError, check_header_value, parse_addr_spec
from ..database import db
from ..models import Department, Partition
from ..refusal import Refusal
from .lookups import get_in_partition

NAME_MAX = 200
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
# CR, LF and NUL end a header line or a C string; every other control character is refused too.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DirectoryError(Refusal):
    """A request the directory refuses: `fields` maps every bad field to why, so that a form can
    name them all at once; the status is 404, 409 or 422."""


def refuse(problems: dict[str, str]) -> None:
    """Raises one DirectoryError naming every problem, when there is any."""
    if problems:
        if len(problems) == 1:
            message = next(iter(problems.values()))
        else:
            message = "Check these fields: " + ", ".join(problems) + "."
        raise DirectoryError(422, message, problems)


def text_field(data: dict, field: str, problems: dict, *, required: bool, max_length: int,
          what: str) -> str | None:
    """The field's text without surrounding blanks; records a problem and answers None if bad."""
    value = data.get(field)
    if value is None:
        value = ""
    if not isinstance(value, str):
        problems[field] = f"The {what} must be text."
        return None
    if _CONTROL.search(value):
        problems[field] = f"The {what} must not contain line breaks or control characters."
        return None
    value = value.strip()
    if required and not value:
        problems[field] = f"The {what} is required."
        return None
    if len(value) > max_length:
        problems[field] = f"The {what} is longer than {max_length} characters."
        return None
    return value


def check_address(value) -> str:
    """The bare address (`local@domain`, domain in lower case and ASCII), checked for syntax only
    by webapp.core.addresses: no display name, no quoted local part, no literal, never CR, LF or NUL.

    No DNS lookup: the server may be offline. Raises ValueError saying why an address is refused.
    """
    if not isinstance(value, str):
        raise AddressError("The address must be text.")
    check_header_value(value, "The address")
    value = value.strip()
    if not value:
        raise AddressError("The address is required.")
    if any(char.isspace() for char in value) or "<" in value or ">" in value:
        raise AddressError(f"{value!r} is not a bare e-mail address (no name, spaces or <>).")
    return parse_addr_spec(value)


def address_field(data: dict, field: str, problems: dict, *, required: bool) -> str | None:
    value = data.get(field)
    if not required and (value is None or (isinstance(value, str) and not value.strip())):
        return ""
    try:
        return check_address(value)
    except ValueError as error:
        problems[field] = str(error)
        return None


def department_field(partition_id: int, value, field: str, problems: dict) -> Department | None:
    department = get_in_partition(Department, value, partition_id)
    if department is None:
        problems[field] = "No such department."
    return department


def password_field(data: dict, field: str, problems: dict) -> str | None:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        problems[field] = "A password is required."
        return None
    if len(value) < PASSWORD_MIN:
        problems[field] = f"The password must have at least {PASSWORD_MIN} characters."
        return None
    if len(value) > PASSWORD_MAX or "\x00" in value:
        problems[field] = "The password is not acceptable."
        return None
    return value


def flush_unique(field: str, message: str) -> None:
    """Flushes inside a savepoint: a unique constraint lost to a concurrent writer is a 409."""
    try:
        with db.session.begin_nested():
            db.session.flush()
    except IntegrityError:
        raise DirectoryError(409, message, {field: message}) from None


def apply_changes(target, changes: dict, actor, action: str, partition_id: int,
                   unique_field: str, duplicate_message) -> None:
    """Sets the changed attributes, flushes (a lost unique constraint is a 409), and audits each
    change as [before, after]. `duplicate_message(target)` words the 409."""
    before = {key: getattr(target, key) for key in changes}
    for key, value in changes.items():
        setattr(target, key, value)
    flush_unique(unique_field, duplicate_message(target))
    audit.record(actor, action, partition_id=partition_id, target=target,
                 **{key: [before[key], value] for key, value in changes.items()})


def value_taken(column, partition_id: int, value: str, except_id: int | None = None) -> bool:
    """Whether a row of the partition other than `except_id` holds `value` in `column` (a
    mapped attribute, such as Mailbox.address), whatever the case."""
    model = column.class_
    query = select(model.id).where(model.partition_id == partition_id, func.lower(column) == value.lower())
    if except_id is not None:
        query = query.where(model.id != except_id)
    return db.session.scalar(query) is not None


def change_unique(target, field: str, value, problems: dict, changes: dict, *, taken, refusal) -> None:
    """A new value for a field that must be unique: a change, or, when `taken(value)`, the
    problem `refusal(value)`. The same value again is no change."""
    if value and value != getattr(target, field):
        if taken(value):
            problems[field] = refusal(value)
        else:
            changes[field] = value


def lock_partition(partition_id: int) -> None:
    """Serialises the partition's tree moves and administrator changes (a row lock on PostgreSQL;
    SQLite's transactions already hold the one write lock)."""
    db.session.execute(select(Partition.id).where(Partition.id == partition_id).with_for_update())


def refuse_with_status(problems: dict, status: int) -> None:
    field, message = next(iter(problems.items()))
    raise DirectoryError(status, message, {field: message})
