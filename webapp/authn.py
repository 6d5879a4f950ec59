"""Who is asking: sessions, bearer tokens and roles, enforced on the server."""
from __future__ import annotations

from functools import wraps

from flask import abort, g, make_response, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user

from .core.database import db
from .core.directory import users as user_rules
from .core.directory.tokens import user_for_token
from .core.models import User
from .errors import json_error
from .extensions import login_manager
from .site_paths import local_path
from .web import is_htmx, wants_json

BAD_LOGIN = "Wrong username or password."
LOGIN_NEEDED = "Authentication required."
SESSION_ENDED = "Your session ended; log in again."
# The cookie session's field with the key of its UserSession row.
SESSION_KEY = "session_key"


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


@login_manager.user_loader
def _load_user(session_id: str) -> User | None:
    # A request that names a bearer token is judged by the token alone, cookie or not.
    if bearer_token() is not None:
        return None
    # Sessions carry "id:session_version"; a bumped version or a disabled user ends them all.
    user_id, _, version = session_id.partition(":")
    try:
        user = db.session.get(User, int(user_id))
    except ValueError:
        return None
    if user is None or user.disabled or str(user.session_version) != version:
        return None
    # This browser's own session, which logging out or idleness ends.
    row = user_rules.live_session(user, session.get(SESSION_KEY))
    if row is None:
        return None
    # Committed at once: the loader runs at a request's first look at current_user, before its
    # view has changed anything (login_required and the API's guard look first).
    user_rules.renew_session(row)
    return user


@login_manager.request_loader
def _load_user_from_request(_request) -> User | None:
    token = bearer_token()
    if token is None:
        return None
    user = user_for_token(token)
    if user is not None:
        g.authenticated_by_token = True
    return user


@login_manager.unauthorized_handler
def _unauthorized():
    if wants_json():
        return json_error(401, LOGIN_NEEDED)
    # This browser had a session that is no longer live (idle too long, or ended elsewhere).
    ended = SESSION_KEY in session
    if is_htmx():
        # A section's request: the form that made it stays on the page as typed. The notice area
        # at the top of the page says why and offers a login in place, after which the same
        # Save (or Send, or Start) can be pressed again.
        back = local_path(request.headers.get("HX-Current-URL"))
        response = make_response(render_template("auth/_session_ended.html", next=back, notice=SESSION_ENDED), 401)
        response.headers["HX-Retarget"] = "#session-notice"
        response.headers["HX-Reswap"] = "innerHTML"
        return response
    back = request.full_path.rstrip("?") if request.method == "GET" else local_path(request.referrer)
    return redirect(url_for("auth.login", next=back, ended=1 if ended else None))


def log_in(user: User) -> None:
    """Starts a session of the user's in this browser, in place of one it had. The caller commits."""
    user_rules.close_session(session.get(SESSION_KEY))
    login_user(user)
    session[SESSION_KEY] = user_rules.open_session(user)


def log_out() -> None:
    """Ends this browser's session, server-side too: a copy of its cookie opens nothing after.
    The user's sessions elsewhere go on. The caller commits."""
    user_rules.close_session(session.pop(SESSION_KEY, None))
    logout_user()


def keep_own_session(user: User) -> None:
    """After a change that ends the user's sessions (a password changed or reset), logs the
    cookie session that made it in again, when that is the user's own: the others stay ended."""
    if user.id == current_user.id and not user.disabled and not g.get("authenticated_by_token"):
        login_user(user)


def admin_required(view):
    """A view for administrators only: anonymous users go to log in, agents get 403."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        if not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)

    return wrapped
