"""/demo/captured: the mail that the demo's capture SMTP server received (only under `make run`)."""
import os

from flask import Blueprint, current_app, render_template
from flask_login import login_required

from ..web import pager

bp = Blueprint("demo", __name__, url_prefix="/demo")


def _files() -> list[str]:
    folder = current_app.config["DEMO_CAPTURE_DIR"]
    return sorted((name for name in os.listdir(folder) if name.endswith(".eml")), reverse=True)


@bp.get("/captured")
@login_required
def captured():
    files = _files()
    where = pager(len(files))
    shown = files[where.offset: where.offset + where.size]
    folder = current_app.config["DEMO_CAPTURE_DIR"]
    mails = []
    for name in shown:
        with open(os.path.join(folder, name), "rb") as handle:
            mails.append({"name": name, "text": handle.read().decode("utf-8", "replace")})
    return render_template("demo/captured.html", mails=mails, pager=where)
