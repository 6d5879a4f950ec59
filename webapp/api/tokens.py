"""API tokens over the API: a token for a username and password (throttled like the login
form), the caller's tokens, revoking one."""
from flask import jsonify, request
from flask_login import current_user
from sqlalchemy import select

from ..authn import BAD_LOGIN
from ..core.clock import iso
from ..core.database import db
from ..core.directory import tokens as token_rules
from ..core.directory.login_throttle import authenticate_throttled
from ..core.directory.lookups import get_in_partition
from ..core.models import ApiToken, User
from . import ApiError, bp, json_body
from .paging import page_select, paged


@bp.post("/tokens")
def create_token():
    data = json_body()
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "username and password are required.",
                       {k: "required" for k in ("username", "password") if not isinstance(data.get(k), str)})
    user = authenticate_throttled(username, password, request.remote_addr)
    if user is None:
        db.session.commit()  # the failure, which counts towards the throttle
        raise ApiError(401, BAD_LOGIN)
    token = token_rules.issue_token(user)
    db.session.commit()
    # The token is in this answer alone: no cache may keep a copy.
    return jsonify(token=token), 201, {"Cache-Control": "no-store"}


@bp.get("/me")
def me():
    return jsonify(
        username=current_user.username,
        role=current_user.role,
        partition=current_user.partition.name,
        departments=[{"id": d.id, "name": d.name} for d in current_user.departments],
    )


@bp.get("/tokens")
def list_tokens():
    """The caller's own tokens: prefix and creation time only (admins: ?user_id= for another's)."""
    user_id = current_user.id
    if current_user.is_admin and request.args.get("user_id"):
        target = get_in_partition(User, request.args["user_id"], current_user.partition_id)
        if target is None:
            raise ApiError(404, "No such user.")
        user_id = target.id
    rows, next_cursor = page_select(
        select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None)), ApiToken.id)
    return paged(rows, next_cursor, _token_json)


@bp.delete("/tokens/<int:token_id>")
def revoke_token(token_id):
    """Revokes one of the caller's tokens; administrators may revoke anyone's in their partition."""
    row = get_in_partition(ApiToken, token_id, current_user.partition_id)
    if row is None or (row.user_id != current_user.id and not current_user.is_admin):
        raise ApiError(404, "No such token.")
    token_rules.revoke_token(row, actor=current_user)
    db.session.commit()
    return "", 204


def _token_json(row: ApiToken) -> dict:
    return {"id": row.id, "prefix": row.prefix, "created_at": iso(row.created_at)}
