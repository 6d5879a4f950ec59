"""/account: every user's own password and API tokens."""
from flask import Blueprint, render_template, request
from flask_login import current_user, login_required
from sqlalchemy import func, select

from ..authn import keep_own_session
from ..core.database import db
from ..core.directory import tokens as token_rules
from ..core.directory import users as user_rules
from ..core.directory.checks import DirectoryError
from ..core.directory.lookups import get_in_partition
from ..core.models import ApiToken
from ..web import paged_rows

bp = Blueprint("account", __name__, url_prefix="/account")

PASSWORD_LABELS = {"current_password": "Current password", "new_password": "New password"}


@bp.get("")
@login_required
def index():
    return render_template("account/index.html", password=_password_context(), tokens=_tokens_context())


def _password_context(**extra) -> dict:
    context = {"labels": PASSWORD_LABELS, "errors": {}, "error": None, "notice": None}
    context.update(extra)
    return context


def _tokens_context(**extra) -> dict:
    scope = (ApiToken.user_id == current_user.id, ApiToken.revoked_at.is_(None))
    rows, where = paged_rows(select(ApiToken).where(*scope).order_by(ApiToken.id),
                             select(func.count(ApiToken.id)).where(*scope))
    context = {"rows": rows, "pager": where,
               "new_token": None, "error": None, "notice": None}
    context.update(extra)
    return context


@bp.post("/password")
@login_required
def change_password():
    try:
        user_rules.change_own_password(current_user, request.form.get("current_password", ""),
                                      request.form.get("new_password", ""))
    except DirectoryError as error:
        db.session.rollback()
        return render_template("account/_password.html", password=_password_context(
            errors=error.fields, error=None if error.fields else error.message)), error.status
    db.session.commit()
    keep_own_session(current_user._get_current_object())  # the other sessions end; this one goes on
    return render_template("account/_password.html", password=_password_context(
        notice="Your password is changed. Your other sessions have ended and your API tokens are revoked."))


@bp.get("/tokens")
@login_required
def tokens():
    return render_template("account/_tokens.html", tokens=_tokens_context())


@bp.post("/tokens")
@login_required
def create_token():
    token = token_rules.issue_token(current_user)
    db.session.commit()
    # The token is in this answer alone: no cache may keep a copy.
    return (render_template("account/_tokens.html", tokens=_tokens_context(new_token=token)), 200,
            {"Cache-Control": "no-store"})


@bp.post("/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id):
    row = get_in_partition(ApiToken, token_id, current_user.partition_id)
    if row is None or row.user_id != current_user.id:
        return render_template("account/_tokens.html", tokens=_tokens_context(error="No such token.")), 404
    token_rules.revoke_token(row, actor=current_user)
    db.session.commit()
    return render_template("account/_tokens.html", tokens=_tokens_context(notice=f"Token {row.prefix}… revoked."))
