"""The monitor, and the administrator's message actions over the API: requeue, remove, and for a
held message send again and mark as sent."""
from __future__ import annotations

from flask import jsonify
from flask_login import current_user

from scheduler import message_actions
from scheduler.monitor import definitions as monitor

from ..core.clock import iso
from ..core.outbox import message_fields
from . import bp, require_admin
from .paging import paging_args


def _stuck_json(message: monitor.StuckMessage) -> dict:
    return {
        "id": message.id,
        "status": message.status,
        "reason": message.reason,
        "reason_text": message.reason_text,
        "age_seconds": message.age_seconds,
        "last_error": message.last_error,
        "attempt_count": message.attempt_count,
        "notified": message.notified,
    }


def _channel_json(outcome: monitor.ChannelOutcome) -> dict:
    return {"status": outcome.status, "error": outcome.error, "attempts": outcome.attempts, "code": outcome.code,
            "next_attempt_at": iso(outcome.next_attempt_at), "done_at": iso(outcome.done_at)}


def _notification_json(sent: monitor.NotificationOutcome) -> dict:
    return {"id": sent.id, "kind": sent.kind, "created_at": iso(sent.created_at), "subject": sent.subject,
            "recipients": sent.recipients, "email": _channel_json(sent.email), "webhook": _channel_json(sent.webhook)}


@bp.get("/monitor")
def get_monitor():
    """The pending count and the stuck messages (?limit= and ?cursor= page the stuck list)."""
    require_admin()
    limit, cursor = paging_args()
    seen = monitor.overview(current_user.partition_id, limit=limit, after_id=cursor)
    return jsonify({
        "pending": seen.pending,
        "oldest_pending_seconds": seen.oldest_pending_seconds,
        "threshold": seen.threshold,
        "alert_active": seen.alert_active,
        "stuck": [_stuck_json(m) for m in seen.stuck],
        "stuck_count": seen.stuck_count,
        "next": str(seen.next_after) if seen.next_after is not None else None,
        "enabled": seen.enabled,
        "sleep_minutes": seen.sleep_minutes,
        "notify_error": seen.notify_error,
        "last_run_at": iso(seen.last_run_at),
        "last_run_node": seen.last_run_node,
        # Above MAILSENDER_EXACT_COUNT_LIMIT pending, pending and stuck_count are the last full
        # count, made at pending_counted_at.
        "pending_exact": seen.counts_exact,
        "pending_counted_at": iso(seen.counted_at),
        # The last notifications, newest first, with what each channel made of them.
        "notifications": [_notification_json(n) for n in seen.notifications],
        # The last retention purge: when it ended, on which node, and the rows it removed of each
        # kind (messages with their attempts and recipients, audit events, notifications); null
        # before the first.
        "last_purge": _purge_json(seen.last_purge),
    })


def _purge_json(purge) -> dict | None:
    if purge is None:
        return None
    return {"at": iso(purge.at), "node": purge.node, "removed": purge.counts, "slices": purge.slices}


def _act(action, message_id):
    require_admin()
    return jsonify(message_fields(action(current_user, current_user.partition_id, message_id), current_user))


@bp.post("/messages/<int:message_id>/requeue")
def requeue_message(message_id):
    """Puts a failed, deferred, removed or training message back in the queue; 409 otherwise."""
    return _act(message_actions.requeue, message_id)


@bp.post("/messages/<int:message_id>/remove")
def remove_message(message_id):
    """Marks a message removed (kept); 409 for a sent one or one being sent under a live lease."""
    return _act(message_actions.remove, message_id)


@bp.post("/messages/<int:message_id>/send-again")
def send_again_message(message_id):
    """Sends a held message once more, with the same Message-ID, to its unclear recipients; 409 otherwise."""
    return _act(message_actions.send_again, message_id)


@bp.post("/messages/<int:message_id>/mark-sent")
def mark_sent_message(message_id):
    """Settles a held message as sent, its unclear recipients accepted; 409 otherwise."""
    return _act(message_actions.mark_sent, message_id)
