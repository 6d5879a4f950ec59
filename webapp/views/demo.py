"""/demo/captured: the mail that the demo's capture SMTP server received (only under `make run`).

For administrators: the capture holds every partition's mail, whoever it was for.
"""
from flask import Blueprint, current_app, render_template

from ..authn import admin_required
from ..demo import captured_names, read_captured
from ..web import pager

bp = Blueprint("demo", __name__, url_prefix="/demo")


@bp.get("/captured")
@admin_required
def captured():
    folder = current_app.config["DEMO_CAPTURE_DIR"]
    names = captured_names(folder)
    where = pager(len(names))
    shown = (read_captured(folder, name) for name in names[where.offset: where.offset + where.size])
    return render_template("demo/captured.html", mails=[mail for mail in shown if mail], pager=where)

