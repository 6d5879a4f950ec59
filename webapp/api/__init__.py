"""The JSON API under /api/v1. Bearer calls need no CSRF token; cookie-session calls do."""
from __future__ import annotations

from flask import Blueprint, current_app, g, request
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


@bp.after_request
def _conditional(response):
    # A client that polls (a dashboard, another system) sends back the ETag it has; an unchanged
    # answer then travels as a bodiless 304. The tag is the body's own hash, so it changes exactly
    # when the answer does, on whichever node answers.
    if request.method in ("GET", "HEAD") and response.status_code == 200 and response.is_json \
            and not response.direct_passthrough:
        response.add_etag()
        response = response.make_conditional(request)
    return response


def json_body(empty_ok: bool = False) -> dict:
    """The request's JSON object, or a 400 saying what is wrong with it. The app's JSON provider
    (web.RequestJSON) refuses bodies too deep, with broken Unicode or with non-finite numbers."""
    raw = request.get_data(cache=True)
    if empty_ok and not raw.strip():
        return {}
    try:
        data = current_app.json.loads(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        field = getattr(error, "field", None)
        raise ApiError(400, f"The body is not JSON the API takes: {error}.",
                       {field: str(error)} if field else None) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return data


def require_admin() -> None:
    if not current_user.is_admin:
        raise ApiError(403, "Administrators only.")


from . import audit, directory, mailsender, messages, monitor, openapi, tokens  # noqa: E402,F401  (routes register on bp)
