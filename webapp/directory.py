"""Partitions, departments, mailboxes and users: the rules that every area relies on."""
from __future__ import annotations

from sqlalchemy import select

from . import audit
from .extensions import db
from .models import (
    ROLES,
    Department,
    Mailbox,
    MailSenderSettings,
    MonitorState,
    Partition,
    User,
    user_department,
)
from .security import hash_password


class DirectoryError(ValueError):
    """A request the directory refuses; `field` names the input at fault, when there is one."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status


def get_in_partition(model, object_id, partition_id: int):
    """The row with this id in this partition, or None: another partition's ids do not exist."""
    try:
        object_id = int(object_id)
    except (TypeError, ValueError):
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


def partition_mailboxes(partition_id: int) -> list[Mailbox]:
    """Every mailbox of the partition: for mailbox management and the system default only."""
    return list(
        db.session.scalars(
            select(Mailbox).where(Mailbox.partition_id == partition_id).order_by(Mailbox.address)
        )
    )


def find_partition(name: str) -> Partition | None:
    return db.session.scalars(select(Partition).where(Partition.name == name)).first()


def create_partition(name: str, actor="cli") -> Partition:
    """A partition with its root department, its default settings and its monitor state."""
    name = (name or "").strip()
    if not name:
        raise DirectoryError("A partition needs a name.", "name")
    if find_partition(name) is not None:
        raise DirectoryError(f"A partition named {name!r} exists already.", "name", 409)
    partition = Partition(name=name)
    db.session.add(partition)
    db.session.flush()
    db.session.add(Department(partition_id=partition.id, name=name, parent_id=None))
    db.session.add(MailSenderSettings(partition_id=partition.id))
    db.session.add(MonitorState(partition_id=partition.id))
    audit.record(actor, "partition.create", partition_id=partition.id, target=partition, name=name)
    return partition


def create_user(partition: Partition, username: str, password: str, role: str, *,
                email: str = "", departments: list[Department] | None = None, actor="cli") -> User:
    """A user of the partition, in the root department unless departments are given."""
    username = (username or "").strip()
    if not username:
        raise DirectoryError("A user needs a username.", "username")
    if role not in ROLES:
        raise DirectoryError(f"The role must be one of {', '.join(ROLES)}.", "role")
    if not password:
        raise DirectoryError("A user needs a password.", "password")
    if db.session.scalars(select(User).where(User.username == username)).first() is not None:
        raise DirectoryError(f"The username {username!r} is taken.", "username", 409)
    user = User(
        partition_id=partition.id,
        username=username,
        email=email or "",
        role=role,
        password_hash=hash_password(password),
        departments=departments or [root_department(partition.id)],
    )
    db.session.add(user)
    db.session.flush()
    audit.record(actor, "user.create", partition_id=partition.id, target=user, username=username, role=role)
    return user
