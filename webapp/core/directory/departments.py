"""Partitions and their department trees."""
from __future__ import annotations

from sqlalchemy import select

from .. import audit
from ..database import db
from ..models import Department, Mailbox, MailSenderSettings, MonitorState, Partition, User, user_department
from .checks import (
    NAME_MAX,
    DirectoryError,
    apply_changes,
    change_unique,
    department_field,
    flush_unique,
    lock_partition,
    refuse,
    text_field,
    value_taken,
)
from .lookups import find_partition, root_department

# --- partitions ---------------------------------------------------------------------------


def create_partition(name: str, actor="cli") -> Partition:
    """A partition with its root department, its default settings and its monitor state."""
    problems: dict = {}
    name = text_field({"name": name}, "name", problems, required=True, max_length=100, what="partition name")
    refuse(problems)
    if find_partition(name) is not None:
        exists = f"A partition named {name!r} exists already."
        raise DirectoryError(409, exists, {"name": exists})
    partition = Partition(name=name)
    db.session.add(partition)
    db.session.flush()
    db.session.add(Department(partition_id=partition.id, name=name, parent_id=None))
    db.session.add(MailSenderSettings(partition_id=partition.id))
    db.session.add(MonitorState(partition_id=partition.id))
    audit.record(actor, "partition.create", partition_id=partition.id, target=partition, name=name)
    return partition


# --- departments --------------------------------------------------------------------------


def _exists(name: str) -> str:
    return f"A department named {name!r} exists already."


def _department_name_taken(partition_id: int, name: str, except_id: int | None = None) -> bool:
    return value_taken(Department.name, partition_id, name, except_id)


def _ancestor_ids(department: Department) -> set[int]:
    """The ids on the way from the department up to the root, its own included."""
    seen: set[int] = set()
    current: Department | None = department
    while current is not None and current.id not in seen:
        seen.add(current.id)
        current = db.session.get(Department, current.parent_id) if current.parent_id else None
    return seen


def create_department(partition_id: int, data: dict, *, actor) -> Department:
    """A department under `parent_id` (the root when none is given)."""
    problems: dict = {}
    name = text_field(data, "name", problems, required=True, max_length=NAME_MAX, what="name")
    if data.get("parent_id") in (None, ""):
        parent = root_department(partition_id)
    else:
        parent = department_field(partition_id, data["parent_id"], "parent_id", problems)
    if name and _department_name_taken(partition_id, name):
        problems["name"] = _exists(name)
    refuse(problems)
    department = Department(partition_id=partition_id, name=name, parent_id=parent.id)
    db.session.add(department)
    flush_unique("name", _exists(name))
    audit.record(actor, "department.create", partition_id=partition_id, target=department,
                 name=name, parent_id=parent.id)
    return department


def update_department(department: Department, data: dict, *, actor) -> Department:
    """Renames and/or moves the department (the keys present in `data` change).

    A move never makes a cycle: the new parent may not be the department or one of its
    descendants. The root stays the root.
    """
    problems: dict = {}
    partition_id = department.partition_id
    changes: dict = {}
    if "name" in data:
        name = text_field(data, "name", problems, required=True, max_length=NAME_MAX, what="name")
        change_unique(department, "name", name, problems, changes, refusal=_exists,
                       taken=lambda value: _department_name_taken(partition_id, value, except_id=department.id))
    if "parent_id" in data:
        wanted = data["parent_id"]
        if department.is_root:
            if wanted not in (None, ""):
                problems["parent_id"] = "The root department cannot be moved."
        elif wanted in (None, ""):
            problems["parent_id"] = "Only the root has no parent: choose a parent."
        else:
            lock_partition(partition_id)
            parent = department_field(partition_id, wanted, "parent_id", problems)
            if parent is not None and parent.id != department.parent_id:
                if department.id in _ancestor_ids(parent):
                    problems["parent_id"] = (
                        f"{parent.name!r} is {department.name!r} itself or lies under it: "
                        "the move would make a cycle.")
                else:
                    changes["parent_id"] = parent.id
    refuse(problems)
    if not changes:
        return department
    apply_changes(department, changes, actor, "department.update", partition_id, "name",
                   lambda d: _exists(d.name))
    return department


def department_users(department: Department) -> dict[str, list[str]]:
    """What uses the department: its mailboxes, users and child departments, by name."""
    return {
        "mailboxes": list(db.session.scalars(
            select(Mailbox.address).where(Mailbox.department_id == department.id).order_by(Mailbox.address))),
        "users": list(db.session.scalars(
            select(User.username).join(user_department, user_department.c.user_id == User.id)
            .where(user_department.c.department_id == department.id).order_by(User.username))),
        "child departments": list(db.session.scalars(
            select(Department.name).where(Department.parent_id == department.id).order_by(Department.name))),
    }


_SINGULAR = {"mailboxes": "mailbox", "users": "user", "child departments": "child department"}


def _name_some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def delete_department(department: Department, *, actor) -> None:
    """Deletes a department that nothing uses; otherwise a 409 that says what uses it."""
    if department.is_root:
        raise DirectoryError(409, "The root department cannot be deleted.")
    lock_partition(department.partition_id)
    in_use = {kind: names for kind, names in department_users(department).items() if names}
    if in_use:
        reasons = "; ".join(f"{len(names)} {kind if len(names) > 1 else _SINGULAR[kind]} ({_name_some(names)})"
                            for kind, names in in_use.items())
        raise DirectoryError(409, f"The department {department.name!r} is in use by {reasons}.")
    audit.record(actor, "department.delete", partition_id=department.partition_id, target=department,
                 name=department.name)
    db.session.delete(department)
    db.session.flush()
