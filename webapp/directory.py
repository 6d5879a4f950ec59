"""Partitions, departments, mailboxes and users: the rules that every area relies on.

Every change here validates all of its input before it writes anything, adds an AuditEvent
to the session, and leaves the commit to the caller (a view, an API route or a command).
Input arrives as a dict keyed by the API's field names, from JSON or from a form; the refusal
is a DirectoryError whose `fields` name every bad field at once.
"""
from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from . import audit
from .addresses import AddressError, check_header_value, parse_addr_spec
from .extensions import db
from .models import (
    ROLE_ADMIN,
    ROLES,
    ApiToken,
    Department,
    Mailbox,
    MailSenderSettings,
    MonitorState,
    Partition,
    User,
    user_department,
    utcnow,
)
from .security import hash_password, verify_password

NAME_MAX = 200
USERNAME_MAX = 150
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
PRIORITY_MIN, PRIORITY_MAX = 0, 1000
DEFAULT_PRIORITY = 5
_USERNAME = re.compile(r"^[\w.@+-]+$")
# CR, LF and NUL end a header line or a C string; every other control character is refused too.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DirectoryError(ValueError):
    """A request the directory refuses.

    `field` names the input at fault when there is one; `fields` maps every bad field to why
    (so a form can name them all at once); `status` is the HTTP answer (404, 409, 422).
    """

    def __init__(self, message: str, field: str | None = None, status: int = 422,
                 fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = dict(fields or ({field: message} if field else {}))
        self.field = field or next(iter(self.fields), None)
        self.status = status


def _refuse(problems: dict[str, str]) -> None:
    """Raises one DirectoryError naming every problem, when there is any."""
    if problems:
        if len(problems) == 1:
            message = next(iter(problems.values()))
        else:
            message = "Check these fields: " + ", ".join(problems) + "."
        raise DirectoryError(message, status=422, fields=problems)


# --- lookups ------------------------------------------------------------------------------


def get_in_partition(model, object_id, partition_id: int):
    """The row with this id in this partition, or None: another partition's ids do not exist."""
    object_id = _as_id(object_id)
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


def user_tokens(user: User) -> list[ApiToken]:
    """The user's tokens that still work, oldest first."""
    return list(db.session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).order_by(ApiToken.id)
    ))


# --- checking input -----------------------------------------------------------------------


def _as_id(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _text(data: dict, field: str, problems: dict, *, required: bool, max_length: int,
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
    by webapp.addresses: no display name, no quoted local part, no literal, never CR, LF or NUL.

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


def _address(data: dict, field: str, problems: dict, *, required: bool) -> str | None:
    value = data.get(field)
    if not required and (value is None or (isinstance(value, str) and not value.strip())):
        return ""
    try:
        return check_address(value)
    except ValueError as error:
        problems[field] = str(error)
        return None


def _department_ref(partition_id: int, value, field: str, problems: dict) -> Department | None:
    department = get_in_partition(Department, value, partition_id)
    if department is None:
        problems[field] = "No such department."
    return department


def _new_password(data: dict, field: str, problems: dict) -> str | None:
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


def _flush_unique(field: str, message: str) -> None:
    """Flushes inside a savepoint: a unique constraint lost to a concurrent writer is a 409."""
    try:
        with db.session.begin_nested():
            db.session.flush()
    except IntegrityError:
        raise DirectoryError(message, field, 409) from None


def _apply_changes(target, changes: dict, actor, action: str, partition_id: int,
                   unique_field: str, duplicate_message) -> None:
    """Sets the changed attributes, flushes (a lost unique constraint is a 409), and audits each
    change as [before, after]. `duplicate_message(target)` words the 409."""
    before = {key: getattr(target, key) for key in changes}
    for key, value in changes.items():
        setattr(target, key, value)
    _flush_unique(unique_field, duplicate_message(target))
    audit.record(actor, action, partition_id=partition_id, target=target,
                 **{key: [before[key], value] for key, value in changes.items()})


def _lock_partition(partition_id: int) -> None:
    """Serialises the partition's tree moves and administrator changes (a row lock on PostgreSQL;
    SQLite's transactions already hold the one write lock)."""
    db.session.execute(select(Partition.id).where(Partition.id == partition_id).with_for_update())


# --- partitions ---------------------------------------------------------------------------


def create_partition(name: str, actor="cli") -> Partition:
    """A partition with its root department, its default settings and its monitor state."""
    problems: dict = {}
    name = _text({"name": name}, "name", problems, required=True, max_length=100, what="partition name")
    _refuse(problems)
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


# --- departments --------------------------------------------------------------------------


def _department_name_taken(partition_id: int, name: str, except_id: int | None = None) -> bool:
    query = select(Department.id).where(Department.partition_id == partition_id,
                                        func.lower(Department.name) == name.lower())
    if except_id is not None:
        query = query.where(Department.id != except_id)
    return db.session.scalar(query) is not None


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
    name = _text(data, "name", problems, required=True, max_length=NAME_MAX, what="name")
    if data.get("parent_id") in (None, ""):
        parent = root_department(partition_id)
    else:
        parent = _department_ref(partition_id, data["parent_id"], "parent_id", problems)
    if name and _department_name_taken(partition_id, name):
        problems["name"] = f"A department named {name!r} exists already."
    _refuse(problems)
    department = Department(partition_id=partition_id, name=name, parent_id=parent.id)
    db.session.add(department)
    _flush_unique("name", f"A department named {name!r} exists already.")
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
        name = _text(data, "name", problems, required=True, max_length=NAME_MAX, what="name")
        if name and name != department.name:
            if _department_name_taken(partition_id, name, except_id=department.id):
                problems["name"] = f"A department named {name!r} exists already."
            else:
                changes["name"] = name
    if "parent_id" in data:
        wanted = data["parent_id"]
        if department.is_root:
            if wanted not in (None, ""):
                problems["parent_id"] = "The root department cannot be moved."
        elif wanted in (None, ""):
            problems["parent_id"] = "Only the root has no parent: choose a parent."
        else:
            _lock_partition(partition_id)
            parent = _department_ref(partition_id, wanted, "parent_id", problems)
            if parent is not None and parent.id != department.parent_id:
                if department.id in _ancestor_ids(parent):
                    problems["parent_id"] = (
                        f"{parent.name!r} is {department.name!r} itself or lies under it: "
                        "the move would make a cycle.")
                else:
                    changes["parent_id"] = parent.id
    _refuse(problems)
    if not changes:
        return department
    _apply_changes(department, changes, actor, "department.update", partition_id, "name",
                   lambda d: f"A department named {d.name!r} exists already.")
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
        raise DirectoryError("The root department cannot be deleted.", status=409)
    _lock_partition(department.partition_id)
    in_use = {kind: names for kind, names in department_users(department).items() if names}
    if in_use:
        reasons = "; ".join(f"{len(names)} {kind if len(names) > 1 else _SINGULAR[kind]} ({_name_some(names)})"
                            for kind, names in in_use.items())
        raise DirectoryError(f"The department {department.name!r} is in use by {reasons}.", status=409)
    audit.record(actor, "department.delete", partition_id=department.partition_id, target=department,
                 name=department.name)
    db.session.delete(department)
    db.session.flush()


# --- mailboxes ----------------------------------------------------------------------------


def _address_taken(partition_id: int, address: str, except_id: int | None = None) -> bool:
    query = select(Mailbox.id).where(Mailbox.partition_id == partition_id,
                                     func.lower(Mailbox.address) == address.lower())
    if except_id is not None:
        query = query.where(Mailbox.id != except_id)
    return db.session.scalar(query) is not None


def _display_name(data: dict, problems: dict) -> str | None:
    # The display name goes into From headers: refused also where an encoded word hides a line break.
    name = _text(data, "name", problems, required=False, max_length=NAME_MAX, what="display name")
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
    address = _address(data, "address", problems, required=True)
    name = _display_name(data, problems)
    if data.get("department_id") in (None, ""):
        department = root_department(partition_id)
    else:
        department = _department_ref(partition_id, data["department_id"], "department_id", problems)
    priority = DEFAULT_PRIORITY if data.get("priority") is None else _priority(data, problems)
    if address and _address_taken(partition_id, address):
        problems["address"] = f"A mailbox with the address {address} exists already."
    _refuse(problems)
    mailbox = Mailbox(partition_id=partition_id, address=address, name=name,
                      department_id=department.id, priority=priority)
    db.session.add(mailbox)
    _flush_unique("address", f"A mailbox with the address {address} exists already.")
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
        address = _address(data, "address", problems, required=True)
        if address and address != mailbox.address:
            if _address_taken(partition_id, address, except_id=mailbox.id):
                problems["address"] = f"A mailbox with the address {address} exists already."
            else:
                changes["address"] = address
    if "name" in data:
        name = _display_name(data, problems)
        if name is not None and name != mailbox.name:
            changes["name"] = name
    if "department_id" in data:
        if data["department_id"] in (None, ""):
            department = root_department(partition_id)
        else:
            department = _department_ref(partition_id, data["department_id"], "department_id", problems)
        if department is not None and department.id != mailbox.department_id:
            changes["department_id"] = department.id
    if "priority" in data:
        priority = _priority(data, problems)
        if priority is not None and priority != mailbox.priority:
            changes["priority"] = priority
    _refuse(problems)
    if not changes:
        return mailbox
    _apply_changes(mailbox, changes, actor, "mailbox.update", partition_id, "address",
                   lambda m: f"A mailbox with the address {m.address} exists already.")
    db.session.expire(mailbox, ["department"])
    return mailbox


# --- users --------------------------------------------------------------------------------


def _username(data: dict, problems: dict) -> str | None:
    username = _text(data, "username", problems, required=True, max_length=USERNAME_MAX, what="username")
    if username and not _USERNAME.match(username):
        problems["username"] = "A username may hold letters, digits and . _ - @ + only."
        return None
    return username


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
    email = _address({"email": email}, "email", problems, required=False)
    if not password:
        problems["password"] = "A user needs a password."
    for department in departments or []:
        if department.partition_id != partition.id:
            problems["department_ids"] = f"No such department: {department.id}."
    _refuse(problems)
    if _username_taken(username):
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
    _flush_unique("username", f"The username {username!r} is taken.")
    audit.record(actor, "user.create", partition_id=partition.id, target=user, username=username, role=role,
                 department_ids=[d.id for d in user.departments])
    return user


def add_user(partition_id: int, data: dict, *, actor) -> User:
    """A user from the window or the API: {username, password, role, email, department_ids,
    disabled}, every field checked before anything is written."""
    problems: dict = {}
    _username(data, problems)
    _role(data, problems)
    _address(data, "email", problems, required=False)
    _new_password(data, "password", problems)
    departments = _departments(partition_id, data, problems)
    disabled = _disabled(data, problems)
    _refuse(problems)
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


def revoke_user_tokens(user: User) -> int:
    """Revokes every token of the user at once; answers how many were live."""
    now = utcnow()
    tokens = user_tokens(user)
    for token in tokens:
        token.revoked_at = now
    return len(tokens)


def end_sessions(user: User) -> None:
    """Every session that carries the old number fails its next request."""
    user.session_version = (user.session_version or 1) + 1


def update_user(user: User, data: dict, *, actor) -> User:
    """Changes the fields present in `data`: username, email, role, department_ids, disabled,
    password (an administrator's reset).

    Disabling ends the user's sessions and revokes all their tokens at once; a reset ends their
    sessions. The last active administrator of a partition can be neither disabled nor demoted.
    """
    problems: dict = {}
    partition_id = user.partition_id
    changes: dict = {}
    if "username" in data:
        username = _username(data, problems)
        if username and username != user.username:
            if _username_taken(username, except_id=user.id):
                problems["username"] = f"The username {username!r} is taken."
            else:
                changes["username"] = username
    if "email" in data:
        email = _address(data, "email", problems, required=False)
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
        password = _new_password(data, "password", problems)
    if _is_active_admin(user) and (changes.get("role", ROLE_ADMIN) != ROLE_ADMIN or changes.get("disabled")):
        _lock_partition(partition_id)
        if _other_active_admins(user) == 0:
            field = "disabled" if changes.get("disabled") else "role"
            verb = "disabled" if field == "disabled" else "demoted"
            problems[field] = (f"{user.username} is the last active administrator of this partition "
                               f"and cannot be {verb}.")
            _refuse_with_status(problems, 409)
    _refuse(problems)

    before = {key: (sorted(d.id for d in user.departments) if key == "department_ids" else getattr(user, key))
              for key in changes}
    for key, value in changes.items():
        if key == "department_ids":
            user.departments = departments
        else:
            setattr(user, key, value)
    if changes:
        _flush_unique("username", f"The username {user.username!r} is taken.")
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
        audit.record(actor, "user.password_reset", partition_id=partition_id, target=user,
                     username=user.username)
    return user


def _refuse_with_status(problems: dict, status: int) -> None:
    field, message = next(iter(problems.items()))
    raise DirectoryError(message, field, status, fields={field: message})


def change_own_password(user: User, current_password, new_password) -> None:
    """The user's own password change: the current one is required. Ends the user's other
    sessions (the caller logs the current one in again)."""
    problems: dict = {}
    if not isinstance(current_password, str) or not current_password:
        problems["current_password"] = "The current password is required."
    elif not verify_password(user.password_hash, current_password):
        problems["current_password"] = "The current password is wrong."
    _new_password({"new_password": new_password}, "new_password", problems)
    _refuse(problems)
    user.password_hash = hash_password(new_password)
    end_sessions(user)
    audit.record(user, "user.password_change", partition_id=user.partition_id, target=user)


def revoke_token(token: ApiToken, *, actor) -> None:
    """Revokes one token (once; revoking it again changes nothing)."""
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(actor, "token.revoke", partition_id=token.partition_id, target=token,
                     prefix=token.prefix, owner=token.user.username)
