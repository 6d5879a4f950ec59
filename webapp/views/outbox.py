"""/outbox: the user's own messages (an administrator's: the whole partition's), newest first,
with every delivery attempt and the raw copy once sent. The list polls while a shown message
is pending, and stops once none is. The state filter is a GET of the page itself, pushed into
the address bar, so a filtered view can be bookmarked and reloaded. In training mode the list
says whom each message withheld, and what became of the log Bcc copy.
"""
from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request
from flask_login import current_user, login_required

from ..core import outbox
from ..core.settings.store import get_settings
from ..core.states import SHOWN_STATES
from ..web import id_arg
from .polling import polled, tag_of

bp = Blueprint("outbox", __name__, url_prefix="/outbox")

POLL_SECONDS = 3


def _list_context() -> dict:
    status = request.args.get("status") or None
    if status not in SHOWN_STATES:
        status = None
    before_id = id_arg("before")
    rows, next_before = outbox.list_messages(
        current_user, status=status, limit=current_app.config["PAGE_SIZE"], before_id=before_id)
    settings = get_settings(current_user.partition_id)
    # While training mode is on, the list says what it withholds, the log Bcc copy included.
    training_note = {"log_withheld": outbox.log_copy_withheld_in_training(settings)} \
        if settings.training_enabled else None
    return {
        # A shown message changes its state, attempts, error or end as it moves (polling.py).
        "list_tag": tag_of(status, before_id, next_before, training_note, [
            (row.id, row.shown_status, row.attempt_count, row.finished_at, row.last_error, row.training)
            for row in rows]),
        "training_note": training_note,
        "rows": rows,
        "seen": {row.id: outbox.Seen(row, current_user) for row in rows},
        "status": status,
        "before": before_id,
        "next_before": next_before,
        "states": SHOWN_STATES,
        "polling": any(outbox.is_pending(row) for row in rows),
        "poll_seconds": POLL_SECONDS,
    }


@bp.get("")
@login_required
def index():
    return render_template("outbox/index.html", **_list_context())


@bp.get("/list")
@login_required
def list_section():
    context = _list_context()
    return polled(context["list_tag"], lambda: render_template("outbox/_list.html", **context))


@bp.get("/<int:message_id>/raw")
@login_required
def raw_copy(message_id: int):
    message = outbox.get_visible_message(current_user, message_id)
    if message is None or message.raw_copy is None:
        abort(404)
    return current_app.response_class(message.raw_copy, mimetype="text/plain")
