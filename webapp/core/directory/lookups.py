"""Finding directory rows: by id within a partition, the root, a user's mailboxes, the tree."""
from __future__ import annotations

import re

from sqlalchemy import select

from ..database import db
from ..models import INTEGER_MAX, Department, Mailbox, Partition, User, user_department

# Digits only, of ASCII: str.isdigit() also takes "²", which int() refuses.
_ID = re.compile(r"[0-9]{1,18}")


def get_in_partition(model, object_id, partition_id: int):
    """The row with this id in this partition, or None: another partition's ids do not exist."""
    object_id = parse_id(object_id)
    if object_id is None:
        return None
    obj = db.session.get(model, object_id)
    if obj is None or obj.partition_id != partition_id:
        return None
    return obj


def root_department(partition_id: int) -> Department:
    return db.session.scalars(
        select(Department).where(Department.partition_id == partition_id, Department.parent_id.is_(None))
    ).one()


def user_mailboxes(user: User) -> list[Mailbox]:
    """The mailboxes whose department is one of the user's departments.

    No inheritance up or down the tree, and no exception for administrators: this is every
    user's From choice list.
    """
    return list(
        db.session.scalars(
            select(Mailbox)
            .join(user_department, user_department.c.department_id == Mailbox.department_id)
            .where(user_department.c.user_id == user.id, Mailbox.partition_id == user.partition_id)
            .order_by(Mailbox.address)
        )
    )


def mailboxes_seen_by(user: User):
    """The select of the ids of the mailboxes whose mail `user` may see and answer: every mailbox
    of the partition for an administrator, else those of the user's departments. Incoming mail,
    its cases and its answers are a department's own (DESIGN.md, "A user's mailboxes")."""
    query = select(Mailbox.id).where(Mailbox.partition_id == user.partition_id)
    if user.is_admin:
        return query
    return query.join(user_department, user_department.c.department_id == Mailbox.department_id) \
        .where(user_department.c.user_id == user.id)


def sees_mailbox(user: User, mailbox: Mailbox) -> bool:
    """Whether `user` may see and answer the mail of `mailbox` (mailboxes_seen_by)."""
    if mailbox.partition_id != user.partition_id:
        return False
    return user.is_admin or mailbox.department_id in {department.id for department in user.departments}


def partition_mailboxes(partition_id: int) -> list[Mailbox]:
    """Every mailbox of the partition: for mailbox management and the system default only."""
    return list(
        db.session.scalars(
            select(Mailbox).where(Mailbox.partition_id == partition_id).order_by(Mailbox.address)
        )
    )


def find_partition(name: str) -> Partition | None:
    return db.session.scalars(select(Partition).where(Partition.name == name)).first()


def department_tree(partition_id: int) -> list[tuple[Department, int]]:
    """Every department of the partition with its depth, root first, then each subtree in turn.

    Siblings come in name order, so a department is always listed after its parent.
    """
    departments = list(db.session.scalars(
        select(Department).where(Department.partition_id == partition_id).order_by(Department.name)
    ))
    children: dict[int | None, list[Department]] = {}
    for department in departments:
        children.setdefault(department.parent_id, []).append(department)
    ordered: list[tuple[Department, int]] = []
    stack = [(root, 0) for root in reversed(children.get(None, []))]
    while stack:
        department, depth = stack.pop()
        ordered.append((department, depth))
        stack.extend((child, depth + 1) for child in reversed(children.get(department.id, [])))
    return ordered


def parse_id(value) -> int | None:
    """An id as a form, JSON or a URL carries it: a whole number from 1 to INTEGER_MAX, or its
    digits (blanks around them aside). None for anything else, which finds no row: beyond the
    column's range PostgreSQL would refuse the query itself."""
    if isinstance(value, str) and _ID.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= INTEGER_MAX else None
