"""/admin/directory: departments (a tree), mailboxes and users, each an htmx section.

Every section route answers its whole partial, so the page and a refreshed section are the
same markup. A refused form comes back in its section with a message box naming each bad
field by its label, and with what was typed.
"""
from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask_login import current_user
from sqlalchemy import func, select

from ..authn import admin_required, keep_own_session
from ..core.database import db
from ..core.directory import departments as department_rules
from ..core.directory import mailboxes as mailbox_rules
from ..core.directory import users as user_rules
from ..core.directory.checks import DirectoryError
from ..core.directory.lookups import department_tree, get_in_partition
from ..core.models import Department, Mailbox, User
from ..core.states import ROLES
from ..web import paged_rows, pager

bp = Blueprint("directory", __name__, url_prefix="/admin/directory")

DEPARTMENT_LABELS = {"name": "Name", "parent_id": "Parent"}
MAILBOX_LABELS = {"address": "Address", "name": "Display name", "department_id": "Department",
                  "priority": "Priority"}
USER_LABELS = {"username": "Username", "email": "Email", "role": "Role", "department_ids": "Departments",
               "disabled": "Disabled", "password": "Password"}
# Sections that show department names listen for this event and refresh themselves.
DEPARTMENTS_CHANGED = "departments-changed"


@bp.get("")
@admin_required
def index():
    return render_template(
        "directory/index.html",
        departments=_departments_context(),
        mailboxes=_mailboxes_context(),
        users=_users_context(),
    )


# --- rendering a section ------------------------------------------------------------------


def _section(template: str, context: dict, status: int = 200, changed: bool = False):
    response = current_app.make_response((render_template(template, **context), status))
    if changed:
        response.headers["HX-Trigger"] = DEPARTMENTS_CHANGED
    return response


def _refusal(error: DirectoryError) -> dict:
    """Drops whatever the refused change touched, and says why it was refused."""
    db.session.rollback()
    return {"errors": error.fields, "error": None if error.fields else error.message}


def _department_options(tree: list[tuple[Department, int]] | None = None) -> list[tuple[Department, str]]:
    """Every department with its path from the root ("Acme / Sales / North"), in tree order."""
    path: list[str] = []
    options = []
    for department, depth in tree or department_tree(current_user.partition_id):
        path[depth:] = [department.name]
        options.append((department, " / ".join(path)))
    return options


# --- departments --------------------------------------------------------------------------


def _departments_context(page: int | None = None, **extra) -> dict:
    tree = department_tree(current_user.partition_id)
    where = pager(len(tree), page)
    context = {
        "rows": tree[where.offset: where.offset + where.size],
        "tree": _department_options(tree),
        "pager": where,
        "labels": DEPARTMENT_LABELS,
        "edit_id": None,
        "form": {},
        "errors": {},
        "error": None,
        "notice": None,
    }
    context.update(extra)
    if context["edit_id"] is not None:
        context["excluded_ids"] = _subtree_ids(tree, context["edit_id"])
    else:
        context["excluded_ids"] = set()
    return context


def _subtree_ids(tree: list[tuple[Department, int]], department_id: int) -> set[int]:
    """The department and everything under it: never a parent it may move to."""
    ids: set[int] = set()
    depth_of_top = None
    for department, depth in tree:
        if depth_of_top is not None and depth <= depth_of_top:
            break
        if department.id == department_id:
            depth_of_top = depth
        if depth_of_top is not None:
            ids.add(department.id)
    return ids


def _render_departments(status: int = 200, changed: bool = False, **extra):
    return _section("directory/_departments.html", {"departments": _departments_context(**extra)},
                    status, changed)


@bp.get("/departments")
@admin_required
def departments():
    edit_id = request.args.get("edit")
    if edit_id is not None:
        department = get_in_partition(Department, edit_id, current_user.partition_id)
        if department is None:
            return _render_departments(404, error="No such department.")
        return _render_departments(edit_id=department.id,
                                   form={"name": department.name, "parent_id": str(department.parent_id or "")})
    return _render_departments()


@bp.post("/departments")
@admin_required
def create_department():
    data = {"name": request.form.get("name", ""), "parent_id": request.form.get("parent_id", "")}
    try:
        department = department_rules.create_department(current_user.partition_id, data, actor=current_user)
    except DirectoryError as error:
        return _render_departments(error.status, form=data, **_refusal(error))
    db.session.commit()
    return _render_departments(changed=True, notice=f"Department {department.name} added.")


@bp.post("/departments/<int:department_id>")
@admin_required
def update_department(department_id):
    department = get_in_partition(Department, department_id, current_user.partition_id)
    if department is None:
        return _render_departments(404, error="No such department.")
    data = {"name": request.form.get("name", "")}
    if not department.is_root:
        data["parent_id"] = request.form.get("parent_id", "")
    try:
        department_rules.update_department(department, data, actor=current_user)
    except DirectoryError as error:
        return _render_departments(error.status, edit_id=department.id, form=data, **_refusal(error))
    db.session.commit()
    return _render_departments(changed=True, notice=f"Department {department.name} saved.")


@bp.post("/departments/<int:department_id>/delete")
@admin_required
def delete_department(department_id):
    department = get_in_partition(Department, department_id, current_user.partition_id)
    if department is None:
        return _render_departments(404, error="No such department.")
    name = department.name
    try:
        department_rules.delete_department(department, actor=current_user)
    except DirectoryError as error:
        return _render_departments(error.status, **_refusal(error))
    db.session.commit()
    return _render_departments(changed=True, notice=f"Department {name} deleted.")


# --- mailboxes ----------------------------------------------------------------------------


def _mailboxes_context(page: int | None = None, **extra) -> dict:
    scope = Mailbox.partition_id == current_user.partition_id
    rows, where = paged_rows(select(Mailbox).where(scope).order_by(Mailbox.address, Mailbox.id),
                             select(func.count(Mailbox.id)).where(scope), page)
    context = {"rows": rows, "pager": where, "tree": _department_options(), "labels": MAILBOX_LABELS,
               "edit_id": None, "form": {}, "errors": {}, "error": None, "notice": None}
    context.update(extra)
    return context


def _render_mailboxes(status: int = 200, **extra):
    return _section("directory/_mailboxes.html", {"mailboxes": _mailboxes_context(**extra)}, status)


def _mailbox_form() -> dict:
    return {key: request.form.get(key, "") for key in ("address", "name", "department_id", "priority")}


@bp.get("/mailboxes")
@admin_required
def mailboxes():
    edit_id = request.args.get("edit")
    if edit_id is not None:
        mailbox = get_in_partition(Mailbox, edit_id, current_user.partition_id)
        if mailbox is None:
            return _render_mailboxes(404, error="No such mailbox.")
        return _render_mailboxes(edit_id=mailbox.id, form={
            "address": mailbox.address, "name": mailbox.name,
            "department_id": str(mailbox.department_id), "priority": str(mailbox.priority)})
    return _render_mailboxes()


@bp.post("/mailboxes")
@admin_required
def create_mailbox():
    data = _mailbox_form()
    try:
        mailbox = mailbox_rules.create_mailbox(current_user.partition_id, data, actor=current_user)
    except DirectoryError as error:
        return _render_mailboxes(error.status, form=data, **_refusal(error))
    db.session.commit()
    return _render_mailboxes(notice=f"Mailbox {mailbox.address} added.")


@bp.post("/mailboxes/<int:mailbox_id>")
@admin_required
def update_mailbox(mailbox_id):
    mailbox = get_in_partition(Mailbox, mailbox_id, current_user.partition_id)
    if mailbox is None:
        return _render_mailboxes(404, error="No such mailbox.")
    data = _mailbox_form()
    try:
        mailbox_rules.update_mailbox(mailbox, data, actor=current_user)
    except DirectoryError as error:
        return _render_mailboxes(error.status, edit_id=mailbox.id, form=data, **_refusal(error))
    db.session.commit()
    return _render_mailboxes(notice=f"Mailbox {mailbox.address} saved.")


# --- users --------------------------------------------------------------------------------


def _users_context(page: int | None = None, **extra) -> dict:
    scope = User.partition_id == current_user.partition_id
    rows, where = paged_rows(select(User).where(scope).order_by(User.username, User.id),
                             select(func.count(User.id)).where(scope), page)
    context = {"rows": rows, "pager": where, "tree": _department_options(), "labels": USER_LABELS,
               "roles": ROLES, "edit_id": None, "form": {}, "errors": {}, "error": None, "notice": None}
    context.update(extra)
    return context


def _render_users(status: int = 200, **extra):
    return _section("directory/_users.html", {"users": _users_context(**extra)}, status)


def _user_form() -> dict:
    """The form as the directory's input: the checkbox's absence means false, and a blank
    password (editing) keeps the current one."""
    data = {key: request.form.get(key, "") for key in ("username", "email", "role")}
    data["department_ids"] = request.form.getlist("department_ids")
    data["disabled"] = request.form.get("disabled") == "1"
    if request.form.get("password"):
        data["password"] = request.form["password"]
    return data


def _typed(data: dict) -> dict:
    # What the form shows again: never a password.
    return {key: value for key, value in data.items() if key != "password"}


@bp.get("/users")
@admin_required
def users():
    edit_id = request.args.get("edit")
    if edit_id is not None:
        user = get_in_partition(User, edit_id, current_user.partition_id)
        if user is None:
            return _render_users(404, error="No such user.")
        return _render_users(edit_id=user.id, form={
            "username": user.username, "email": user.email, "role": user.role,
            "department_ids": [str(d.id) for d in user.departments], "disabled": user.disabled})
    return _render_users()


@bp.post("/users")
@admin_required
def create_user():
    data = _user_form()
    data.setdefault("password", "")
    try:
        user = user_rules.add_user(current_user.partition_id, data, actor=current_user)
    except DirectoryError as error:
        return _render_users(error.status, form=_typed(data), **_refusal(error))
    db.session.commit()
    return _render_users(notice=f"User {user.username} added.")


@bp.post("/users/<int:user_id>")
@admin_required
def update_user(user_id):
    user = get_in_partition(User, user_id, current_user.partition_id)
    if user is None:
        return _render_users(404, error="No such user.")
    data = _user_form()
    try:
        user_rules.update_user(user, data, actor=current_user)
    except DirectoryError as error:
        return _render_users(error.status, edit_id=user.id, form=_typed(data), **_refusal(error))
    db.session.commit()
    keep_own_session(user)  # a reset of one's own password must not end this session
    notice = f"User {user.username} saved." + (" Their password was reset, and their API tokens revoked." if "password" in data else "")
    return _render_users(notice=notice)
