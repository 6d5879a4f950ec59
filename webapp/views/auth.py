"""Logging in and out, and the home page that sends each role where it works."""
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..authn import BAD_LOGIN
from ..core import audit
from ..core.database import db
from ..core.directory.users import authenticate

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
    error = None
    username = ""
    if request.method == "POST":
        username = request.form.get("username", "")
        user = authenticate(username, request.form.get("password", ""))
        if user is None:
            error = BAD_LOGIN
        else:
            login_user(user)
            audit.record(user, "user.login", partition_id=user.partition_id, target=user)
            db.session.commit()
            return redirect(_safe_next(request.args.get("next")))
    status = 401 if error else 200
    return render_template("auth/login.html", error=error, username=username), status


@bp.post("/logout")
def logout():
    logout_user()
    flash("You are logged out.")
    return redirect(url_for("auth.login"))
