"""The JSON API under /api/v1. Bearer calls need no CSRF token; cookie-session calls do."""
from __future__ import annotations

from flask import Blueprint, g, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError

from ..authn import LOGIN_NEEDED
from ..core.refusal import Refusal
from ..errors import json_error
from ..extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")

# Calls that need no login.
PUBLIC_ENDPOINTS = {"api.create_token", "api.openapi"}


class ApiError(Refusal):
    """A request the API itself refuses (its body, its paging, the caller's rights). Like every
    Refusal, answered as {"error": message, "fields": {...}} with its status (webapp/errors.py)."""


@bp.before_request
def _guard():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not current_user.is_authenticated:
        return json_error(401, LOGIN_NEEDED)
    if not g.get("authenticated_by_token") and request.method not in ("GET", "HEAD", "OPTIONS"):
        try:
            csrf.protect()
        except CSRFError:
            return json_error(400, "A cookie-session call needs a CSRF token (X-CSRFToken).")
    return None


def json_body() -> dict:
    """The request's JSON object, or a 400 naming what is wrong with it."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return data


def require_admin() -> None:
    if not current_user.is_admin:
        raise ApiError(403, "Administrators only.")


from . import directory, mailsender, messages, monitor, openapi, tokens  # noqa: E402,F401  (routes register on bp)
