"""/demo/captured: the mail that the demo's capture SMTP server received (only under `make run`)."""
import os

from flask import Blueprint, current_app, render_template, request
from flask_login import login_required

bp = Blueprint("demo", __name__, url_prefix="/demo")


def _files() -> list[str]:
    folder = current_app.config["DEMO_CAPTURE_DIR"]
    return sorted((name for name in os.listdir(folder) if name.endswith(".eml")), reverse=True)


@bp.get("/captured")
@login_required
def captured():
    page = max(request.args.get("page", 1, type=int) or 1, 1)
    size = current_app.config["PAGE_SIZE"]
    files = _files()
    shown = files[(page - 1) * size: page * size]
    folder = current_app.config["DEMO_CAPTURE_DIR"]
    mails = []
    for name in shown:
        with open(os.path.join(folder, name), "rb") as handle:
            mails.append({"name": name, "text": handle.read().decode("utf-8", "replace")})
    return render_template("demo/captured.html", mails=mails, page=page,
                           has_next=len(files) > page * size, total=len(files))
