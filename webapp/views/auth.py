"""Logging in and out, and the home page that sends each role where it works."""
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..authn import BAD_LOGIN, log_in, log_out
from ..core import audit
from ..core.database import db
from ..core.directory.login_throttle import LoginThrottled, authenticate_throttled

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    # Only a path on this site: an absolute URL here would be an open redirect.
    if target and not urlsplit(target).netloc and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("auth.home")


@bp.get("/")
@login_required
def home():
    if current_user.is_admin:
        return redirect(url_for("mailsender.index"))
    return redirect(url_for("compose.index"))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("auth/login.html", error=None, username="")
    username = request.form.get("username", "")
    try:
        user = authenticate_throttled(username, request.form.get("password", ""), request.remote_addr)
    except LoginThrottled as refusal:
        page = render_template("auth/login.html", error=refusal.message, username=username)
        return page, refusal.status, {"Retry-After": str(refusal.retry_after)}
    if user is None:
        db.session.commit()  # the failure, which counts towards the throttle
        return render_template("auth/login.html", error=BAD_LOGIN, username=username), 401
    log_in(user)
    audit.record(user, "user.login", partition_id=user.partition_id, target=user)
    db.session.commit()
    return redirect(_safe_next(request.args.get("next")))


@bp.post("/logout")
def logout():
    log_out()
    db.session.commit()
    flash("You are logged out.")
    return redirect(url_for("auth.login"))
