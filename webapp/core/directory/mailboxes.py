"""Mailboxes: address, display name, department and priority."""
from __future__ import annotations

import re

from .. import audit
from ..addresses import AddressError, check_header_value
from ..database import db
from ..models import DEFAULT_PRIORITY, Mailbox
from .checks import (
    NAME_MAX,
    address_field,
    apply_changes,
    change_unique,
    department_field,
    flush_unique,
    refuse,
    text_field,
    value_taken,
)
from .lookups import root_department

PRIORITY_MIN, PRIORITY_MAX = 0, 1000


def _exists(address: str) -> str:
    return f"A mailbox with the address {address} exists already."


def _address_taken(partition_id: int, address: str, except_id: int | None = None) -> bool:
    return value_taken(Mailbox.address, partition_id, address, except_id)


def _display_name(data: dict, problems: dict) -> str | None:
    # The display name goes into From headers: refused also where an encoded word hides a line break.
    name = text_field(data, "name", problems, required=False, max_length=NAME_MAX, what="display name")
    if name:
        try:
            check_header_value(name, "The display name")
        except AddressError as error:
            problems["name"] = str(error)
            return None
    return name


def _priority(data: dict, problems: dict) -> int | None:
    value = data.get("priority")
    if isinstance(value, str) and value.strip() == "":
        value = DEFAULT_PRIORITY
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        problems["priority"] = "The priority must be a whole number."
        return None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        problems["priority"] = f"The priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}."
        return None
    return value


def create_mailbox(partition_id: int, data: dict, *, actor) -> Mailbox:
    """A mailbox: address (unique in the partition), display name, department (root by
    default), priority (lower first, 5 by default)."""
    problems: dict = {}
    address = address_field(data, "address", problems, required=True)
    name = _display_name(data, problems)
    if data.get("department_id") in (None, ""):
        department = root_department(partition_id)
    else:
        department = department_field(partition_id, data["department_id"], "department_id", problems)
    priority = DEFAULT_PRIORITY if data.get("priority") is None else _priority(data, problems)
    if address and _address_taken(partition_id, address):
        problems["address"] = _exists(address)
    refuse(problems)
    mailbox = Mailbox(partition_id=partition_id, address=address, name=name,
                      department_id=department.id, priority=priority)
    db.session.add(mailbox)
    flush_unique("address", _exists(address))
    audit.record(actor, "mailbox.create", partition_id=partition_id, target=mailbox, address=address,
                 name=name, department_id=department.id, priority=priority)
    return mailbox


def update_mailbox(mailbox: Mailbox, data: dict, *, actor) -> Mailbox:
    """Changes the fields present in `data`. A new department changes at once who may send
    from the mailbox."""
    problems: dict = {}
    partition_id = mailbox.partition_id
    changes: dict = {}
    if "address" in data:
        address = address_field(data, "address", problems, required=True)
        change_unique(mailbox, "address", address, problems, changes, refusal=_exists,
                       taken=lambda value: _address_taken(partition_id, value, except_id=mailbox.id))
    if "name" in data:
        name = _display_name(data, problems)
        if name is not None and name != mailbox.name:
            changes["name"] = name
    if "department_id" in data:
        if data["department_id"] in (None, ""):
            department = root_department(partition_id)
        else:
            department = department_field(partition_id, data["department_id"], "department_id", problems)
        if department is not None and department.id != mailbox.department_id:
            changes["department_id"] = department.id
    if "priority" in data:
        priority = _priority(data, problems)
        if priority is not None and priority != mailbox.priority:
            changes["priority"] = priority
    refuse(problems)
    if not changes:
        return mailbox
    apply_changes(mailbox, changes, actor, "mailbox.update", partition_id, "address",
                   lambda m: _exists(m.address))
    db.session.expire(mailbox, ["department"])
    return mailbox
