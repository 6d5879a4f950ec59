"""Logging in and out, the home page that sends each role where it works, and the site's icon.

A login is a page of its own, or a form in place in the notice area at the top of a page whose
session ended, so that what the page holds survives (see authn._unauthorized).
"""
from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..authn import BAD_LOGIN, SESSION_ENDED, log_in, log_out
from ..core import audit
from ..core.database import db
from ..core.directory.login_throttle import LoginThrottled, authenticate_throttled
from ..site_paths import local_path
from ..web import is_htmx

bp = Blueprint("auth", __name__)


@bp.get("/")
@login_required
def home():
    if current_user.is_admin:
        return redirect(url_for("mailsender.index"))
    return redirect(url_for("compose.index"))


@bp.get("/favicon.ico")
def favicon():
    return current_app.send_static_file("favicon.ico")


@bp.route("/login", methods=["GET", "POST"])
def login():
    in_place = is_htmx()
    template = "auth/_login_form.html" if in_place else "auth/login.html"
    # In place, the notice above the form has already said that the session ended.
    context = {"in_place": in_place, "notice": SESSION_ENDED if request.args.get("ended") and not in_place else None}
    if request.method == "GET":
        return render_template(template, error=None, username="", **context)
    username = request.form.get("username", "")
    try:
        user = authenticate_throttled(username, request.form.get("password", ""), request.remote_addr)
    except LoginThrottled as refusal:
        page = render_template(template, error=refusal.message, username=username, **context)
        return page, refusal.status, {"Retry-After": str(refusal.retry_after)}
    if user is None:
        db.session.commit()  # the failure, which counts towards the throttle
        return render_template(template, error=BAD_LOGIN, username=username, **context), 401
    log_in(user)
    audit.record(user, "user.login", partition_id=user.partition_id, target=user)
    db.session.commit()
    if in_place:
        return render_template("auth/_logged_in_again.html", user=user)
    return redirect(local_path(request.args.get("next")) or url_for("auth.home"))


@bp.post("/logout")
def logout():
    log_out()
    db.session.commit()
    flash("You are logged out.")
    return redirect(url_for("auth.login"))
