"""/preferences: a user's From preferences, among their own mailboxes only, with the rules in
effect and why a choice is not offered. Saving goes through from_rules, as the API does.
"""
from __future__ import annotations

from flask import Blueprint, render_template, request
from flask_login import current_user, login_required

from ..core.database import db
from ..core.from_rules import FromRuleError, rules_in_effect, save_preferences
from ..core.settings.store import get_settings
from ..web import section_or_page

bp = Blueprint("preferences", __name__, url_prefix="/preferences")

LABELS = {"reply_from_mailbox_id": "From for replies", "origination_from_mailbox_id": "From for new messages"}


def _context(*, values=None, errors=None, saved=False) -> dict:
    rules = rules_in_effect(current_user, get_settings(current_user.partition_id))
    if values is None:
        values = {name: getattr(current_user, name) for name in LABELS}
    return {"rules": rules, "values": values, "errors": errors or {}, "saved": saved, "labels": LABELS}


def _render(context: dict, status: int = 200):
    return section_or_page("preferences/_form.html", "preferences/index.html", context, status)


@bp.get("")
@login_required
def index():
    return render_template("preferences/index.html", **_context())


@bp.post("")
@login_required
def save():
    # Only the selects the page offered are in the form; a missing one is left as it is.
    changes = {name: request.form[name] or None for name in LABELS if name in request.form}
    try:
        save_preferences(current_user, get_settings(current_user.partition_id), changes, current_user)
    except FromRuleError as refusal:
        db.session.rollback()
        return _render(_context(values=changes, errors=refusal.fields), refusal.status)
    db.session.commit()
    return _render(_context(saved=True))
