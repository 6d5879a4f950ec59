"""The partition's audit trail, newest first: who did what, and when."""
from __future__ import annotations

from flask import jsonify, request
from flask_login import current_user

from ..core import audit
from ..core.clock import iso
from ..core.models import AuditEvent
from . import ApiError, bp, require_admin
from .paging import paging_args

# An action's name is short (AuditEvent.action); a longer one is no action there is.
MAX_ACTION_LENGTH = 100


def audit_event_json(event: AuditEvent) -> dict:
    return {
        "id": event.id,
        "at": iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "target_type": event.target_type or None,
        "target_id": event.target_id,
        "details": event.details or {},
    }


@bp.get("/audit")
def list_audit_events():
    """?action= keeps one action's events; ?limit= and ?cursor= page them, newest first."""
    require_admin()
    limit, cursor = paging_args()
    action = request.args.get("action") or None
    if action is not None and len(action) > MAX_ACTION_LENGTH:
        raise ApiError(400, "Bad filter.", {"action": f"is at most {MAX_ACTION_LENGTH} characters"})
    rows, before = audit.list_events(current_user.partition_id, limit=limit, before_id=cursor, action=action)
    return jsonify(items=[audit_event_json(row) for row in rows], next=str(before) if before is not None else None)
