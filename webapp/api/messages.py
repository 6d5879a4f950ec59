"""Incoming messages, outgoing messages and preferences over the API."""
from __future__ import annotations

from flask import jsonify, request
from flask_login import current_user
from sqlalchemy.orm import selectinload

from ..core import outbox
from ..core.database import db
from ..core.from_rules import rules_in_effect, save_preferences
from ..core.models import OutgoingMessage
from ..core.settings.store import get_settings
from . import ApiError, bp, json_body, require_admin
from .paging import page_select, paged


@bp.post("/incoming")
def record_incoming():
    """Records a customer's message as the mail receiver got it (fields, or the raw message)."""
    require_admin()
    recorded = outbox.record_incoming(current_user, json_body(),
                                        idempotency_key=request.headers.get("Idempotency-Key"))
    return jsonify(outbox.incoming_fields(recorded.incoming)), 201


@bp.post("/messages")
def submit_message():
    """Queues a reply, origination, forward, collaboration or redirect."""
    submitted = outbox.submit_message(current_user, json_body(),
                                        idempotency_key=request.headers.get("Idempotency-Key"))
    return jsonify(outbox.message_fields(submitted.message, current_user)), 201


@bp.get("/messages/<int:message_id>")
def get_message(message_id):
    """One outgoing message with its recipients and attempts (agents: their own)."""
    message = outbox.get_visible_message(current_user, message_id)
    if message is None:
        raise ApiError(404, "No such message.")
    return jsonify(outbox.message_fields(message, current_user))


@bp.post("/messages/<int:message_id>/cancel")
def cancel_message(message_id):
    """Cancels a message whose time has not come (the undo hold, or before its send_at)."""
    return jsonify(outbox.message_fields(outbox.cancel_message(current_user, message_id), current_user))


@bp.get("/messages")
def list_messages():
    """The outgoing messages the caller may see, in id order (?status=: those in one state)."""
    query = outbox.visible_messages(current_user, request.args.get("status") or None)
    # Each message shows its recipients and attempts: two queries a page, not two a message.
    query = query.options(selectinload(OutgoingMessage.recipients), selectinload(OutgoingMessage.attempts))
    rows, next_cursor = page_select(query, OutgoingMessage.id)
    return paged(rows, next_cursor, lambda message: outbox.message_fields(message, current_user))


def _preferences_json(user) -> dict:
    rules = rules_in_effect(user, get_settings(user.partition_id))
    return {
        "reply_from_mailbox_id": user.reply_from_mailbox_id,
        "origination_from_mailbox_id": user.origination_from_mailbox_id,
        "allow_change_reply_from": rules.reply_change_allowed,
        "allow_change_origination_from": rules.origination_change_allowed,
        "reply_from_preference_applies": rules.reply_preference_applies,
        "origination_from_preference_applies": rules.origination_preference_applies,
        "system_origination_from_mailbox_id": (rules.system_origination_mailbox.id
                                               if rules.system_origination_mailbox else None),
        "mailboxes": [{"id": m.id, "address": m.address, "name": m.name} for m in rules.mailboxes],
        "rules": rules.notes,
    }


@bp.get("/me/preferences")
def get_preferences():
    """The caller's From preferences, and what the rules let them choose."""
    return jsonify(_preferences_json(current_user))


@bp.put("/me/preferences")
def put_preferences():
    """Changes the From preferences the body names; 403 for a mailbox not the caller's, or a change not allowed."""
    data = json_body()
    changes = {name: data[name] for name in ("reply_from_mailbox_id", "origination_from_mailbox_id")
               if name in data}
    save_preferences(current_user, get_settings(current_user.partition_id), changes, current_user)
    db.session.commit()
    return jsonify(_preferences_json(current_user))
