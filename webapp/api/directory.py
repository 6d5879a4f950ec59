"""Departments, mailboxes and users over the API. The rules live in webapp/core/directory."""
from __future__ import annotations

from flask import jsonify, request
from flask_login import current_user
from sqlalchemy import select

from ..authn import keep_own_session
from ..core.clock import iso
from ..core.database import db
from ..core.directory import departments as department_rules
from ..core.directory import mailboxes as mailbox_rules
from ..core.directory import users as user_rules
from ..core.directory.lookups import get_in_partition, user_mailboxes
from ..core.models import Department, Mailbox, User
from . import ApiError, bp, json_body, require_admin
from .paging import page_items, page_select, paged


def _found(model, object_id, what: str):
    row = get_in_partition(model, object_id, current_user.partition_id)
    if row is None:
        raise ApiError(404, f"No such {what}.")
    return row


def department_json(department: Department) -> dict:
    return {"id": department.id, "name": department.name, "parent_id": department.parent_id}


def mailbox_json(mailbox: Mailbox) -> dict:
    return {"id": mailbox.id, "address": mailbox.address, "name": mailbox.name,
            "department_id": mailbox.department_id, "priority": mailbox.priority}


def user_json(user: User) -> dict:
    return {"id": user.id, "username": user.username, "email": user.email, "role": user.role,
            "department_ids": [d.id for d in user.departments], "disabled": user.disabled,
            "created_at": iso(user.created_at)}


# --- departments --------------------------------------------------------------------------


@bp.get("/departments")
def list_departments():
    """The partition's departments, root first (the root is made with the partition, so its id is the lowest)."""
    rows, next_cursor = page_select(
        select(Department).where(Department.partition_id == current_user.partition_id), Department.id)
    return paged(rows, next_cursor, department_json)


@bp.get("/departments/<int:department_id>")
def get_department(department_id):
    """One department."""
    return jsonify(department_json(_found(Department, department_id, "department")))


@bp.post("/departments")
def create_department():
    """Adds a department {name, parent_id (default: the root)}."""
    require_admin()
    data = json_body()
    department = department_rules.create_department(current_user.partition_id, data, actor=current_user)
    db.session.commit()
    return jsonify(department_json(department)), 201


@bp.patch("/departments/<int:department_id>")
def update_department(department_id):
    """Renames and/or moves a department {name, parent_id}; a cycle or a moved root is refused."""
    require_admin()
    department = _found(Department, department_id, "department")
    data = json_body()
    department_rules.update_department(department, data, actor=current_user)
    db.session.commit()
    return jsonify(department_json(department))


@bp.delete("/departments/<int:department_id>")
def delete_department(department_id):
    """Deletes a department nothing uses; 409 naming what uses it otherwise."""
    require_admin()
    department = _found(Department, department_id, "department")
    department_rules.delete_department(department, actor=current_user)
    db.session.commit()
    return "", 204


# --- mailboxes ----------------------------------------------------------------------------


@bp.get("/mailboxes")
def list_mailboxes():
    """Admins: every mailbox of the partition; agents: their mailboxes; ?for=from: the caller's own."""
    wanted = request.args.get("for")
    if wanted not in (None, "", "from"):
        raise ApiError(400, "Unknown ?for= value.", {"for": "must be 'from' or absent"})
    if wanted == "from" or not current_user.is_admin:
        rows, next_cursor = page_items(user_mailboxes(current_user))
    else:
        rows, next_cursor = page_select(
            select(Mailbox).where(Mailbox.partition_id == current_user.partition_id), Mailbox.id)
    return paged(rows, next_cursor, mailbox_json)


@bp.get("/mailboxes/<int:mailbox_id>")
def get_mailbox(mailbox_id):
    """One mailbox (agents: one of theirs)."""
    mailbox = _found(Mailbox, mailbox_id, "mailbox")
    if not current_user.is_admin and mailbox not in user_mailboxes(current_user):
        raise ApiError(404, "No such mailbox.")
    return jsonify(mailbox_json(mailbox))


@bp.post("/mailboxes")
def create_mailbox():
    """Adds a mailbox {address, name, department_id (default: the root), priority (default 5)}."""
    require_admin()
    data = json_body()
    mailbox = mailbox_rules.create_mailbox(current_user.partition_id, data, actor=current_user)
    db.session.commit()
    return jsonify(mailbox_json(mailbox)), 201


@bp.patch("/mailboxes/<int:mailbox_id>")
def update_mailbox(mailbox_id):
    """Changes a mailbox's address, name, department_id or priority."""
    require_admin()
    mailbox = _found(Mailbox, mailbox_id, "mailbox")
    data = json_body()
    mailbox_rules.update_mailbox(mailbox, data, actor=current_user)
    db.session.commit()
    return jsonify(mailbox_json(mailbox))


# --- users --------------------------------------------------------------------------------


@bp.get("/users")
def list_users():
    """The partition's users."""
    require_admin()
    rows, next_cursor = page_select(select(User).where(User.partition_id == current_user.partition_id), User.id)
    return paged(rows, next_cursor, user_json)


@bp.get("/users/<int:user_id>")
def get_user(user_id):
    """One user."""
    require_admin()
    return jsonify(user_json(_found(User, user_id, "user")))


@bp.post("/users")
def create_user():
    """Adds a user {username, password, role, email, department_ids (default: the root), disabled}."""
    require_admin()
    data = json_body()
    user = user_rules.add_user(current_user.partition_id, data, actor=current_user)
    db.session.commit()
    return jsonify(user_json(user)), 201


@bp.patch("/users/<int:user_id>")
def update_user(user_id):
    """Changes a user's username, email, role, department_ids, disabled; `password` resets it."""
    require_admin()
    user = _found(User, user_id, "user")
    data = json_body()
    user_rules.update_user(user, data, actor=current_user)
    db.session.commit()
    keep_own_session(user)
    return jsonify(user_json(user))


@bp.put("/me/password")
def change_my_password():
    """Changes the caller's own password {current_password, new_password}; other sessions end."""
    data = json_body()
    user_rules.change_own_password(current_user, data.get("current_password"), data.get("new_password"))
    db.session.commit()
    keep_own_session(current_user)
    return "", 204
