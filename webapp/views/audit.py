"""/admin/audit: the partition's audit trail, newest first, a page at a time, one action's
events or all. "Older" continues before the page's last event (keyset, as the API pages), and
an action's name filters the list to it; both are GETs of the page, so a view can be bookmarked."""
from __future__ import annotations

from flask import Blueprint, current_app, request
from flask_login import current_user

from ..authn import admin_required
from ..core import audit
from ..web import id_arg, section_or_page

bp = Blueprint("audit", __name__, url_prefix="/admin/audit")

MAX_ACTION_LENGTH = 100


def _events_context() -> dict:
    action = (request.args.get("action") or "").strip()[:MAX_ACTION_LENGTH] or None
    before_id = id_arg("before")
    rows, next_before = audit.list_events(
        current_user.partition_id, limit=current_app.config["PAGE_SIZE"], before_id=before_id, action=action)
    return {"events": rows, "action": action, "before": before_id, "next_before": next_before}


@bp.get("")
@admin_required
def index():
    return section_or_page("audit/_events.html", "audit/index.html", _events_context())
