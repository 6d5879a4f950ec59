"""/compose: the Outgoing Message window. It parses the form and calls outbox.submit_message,
the same function as POST /api/v1/messages. A message just sent shows Undo while no sender may
claim it yet (the undo hold, or before its send time): outbox.cancel_message, as POST
/api/v1/messages/{id}/cancel.

The answer lands where the agent looks: the message just queued, the error box and the
empty-message question take the focus (htmx focuses [autofocus] in what it swaps in), each field
shows its own error, and a form that the From rules leave without any From says so at once.
A message with neither subject nor text is queued only after "Send anyway" (outbox.looks_empty);
the API takes it as it is.
"""
from __future__ import annotations

import base64
import math

from flask import Blueprint, abort, render_template, request
from flask_login import current_user, login_required

from ..core import outbox, send_later
from ..core.addresses import DEFAULT_CONTENT_TYPE
from ..core.from_rules import ORIGINATION_LIKE, FromRuleError, decide_from, rules_in_effect
from ..core.refusal import Refusal
from ..core.settings.store import get_settings
from ..core.states import COLLABORATE, FORWARD, MESSAGE_KINDS, ORIGINATION, REDIRECT, REPLY
from ..web import section_or_page

bp = Blueprint("compose", __name__, url_prefix="/compose")

KIND_LABELS = {
    REPLY: "Reply to an incoming message",
    ORIGINATION: "New message (origination)",
    FORWARD: "Forward / Track (the original attached)",
    COLLABORATE: "Collaborate",
    REDIRECT: "Redirect (resend as received)",
}
TEXT_FIELDS = ("kind", "incoming_id", "from_mailbox_id", "to", "cc", "bcc", "subject", "body_text", "body_html",
               "send_at")
# The longest the Undo line waits before it asks the server again whether the message may still
# be cancelled: a message scheduled days ahead is not polled every second.
UNDO_REFRESH_MAX_SECONDS = 60


def _values_from(source) -> dict:
    values = {name: source.get(name, "") for name in TEXT_FIELDS}
    if values["kind"] not in MESSAGE_KINDS:
        values["kind"] = ORIGINATION if not values["incoming_id"] else REPLY
    values["keep_case_ownership"] = source.get("keep_case_ownership") in ("on", "true", "1")
    return values


def _send_at(value: str) -> str:
    """The form's send time (a datetime-local field, labelled UTC) as ISO 8601 with its offset."""
    value = (value or "").strip()
    if value and "T" in value and not any(mark in value[10:] for mark in ("+", "-", "Z", "z")):
        return value + "+00:00"
    return value


def _sent_context(message, notice: str | None = None, *, take_focus: bool = False) -> dict:
    """The line about a message just sent: Undo while it may be cancelled, and when to look again.
    `take_focus`: the answer to Send or Undo, which the user waits for, takes the focus and so
    comes into view; the line's own refreshes leave the focus where it is."""
    left = send_later.seconds_left(message)
    return {
        "sent": message,
        "cancellable": left > 0,
        # A second past the end, so that the next look finds the hold over.
        "refresh_seconds": min(math.ceil(left) + 1, UNDO_REFRESH_MAX_SECONDS) if left > 0 else None,
        "notice": notice,
        "take_focus": take_focus,
    }


def _no_from(kind: str, rules, settings) -> str | None:
    """Why no message of `kind` can go out at all: the From rules give none, and the form offers
    no mailbox to choose. Said before anything is typed, with who can put it right."""
    if kind not in ORIGINATION_LIKE or (rules.origination_change_allowed and rules.mailboxes):
        return None
    try:
        decide_from(current_user, kind, settings)
    except FromRuleError:
        why = ("you may choose one of your mailboxes, but none of your departments has one"
               if rules.origination_change_allowed else "changing the From of new messages is not allowed")
        return (f"New messages, forwards and collaborations cannot be sent now: there is no default From "
                f"address for them, and {why}. An administrator can set one in the Mail Sender "
                f"parameters, under Default From address (the system default for new messages).")
    return None


def _context(values: dict, *, errors=None, error=None, queued=None, confirm_empty=False) -> dict:
    settings = get_settings(current_user.partition_id)
    rules = rules_in_effect(current_user, settings)
    kind = values["kind"]
    if kind == REPLY:
        from_allowed = rules.reply_change_allowed
        from_default = "the mailbox the customer wrote to" + (
            f" (your preference: {rules.reply_preference.address})" if rules.reply_preference_applies else "")
    elif kind in ORIGINATION_LIKE:
        from_allowed = rules.origination_change_allowed
        if rules.origination_preference_applies:
            from_default = f"your preference, {rules.origination_preference.address}"
        elif rules.system_origination_mailbox:
            from_default = f"the system default, {rules.system_origination_mailbox.address}"
        else:
            from_default = "none: choose a mailbox" if rules.origination_change_allowed else "none is set"
    else:
        from_allowed, from_default = False, "the original sender"
    return {
        "values": values,
        "errors": errors or {},
        "error": error,
        # The box lists each field with its reason: a sentence that only sums them up is not repeated.
        "error_sentence": None if not error or (errors and error in (outbox.not_queued(errors), *errors.values()))
        else error,
        "queued": queued,
        **(_sent_context(queued, take_focus=True) if queued is not None else {}),
        "no_from": _no_from(kind, rules, settings),
        "confirm_empty": confirm_empty,
        "labels": outbox.FIELD_LABELS,
        "kind_labels": KIND_LABELS,
        "needs_incoming": kind != ORIGINATION,
        "is_redirect": kind == REDIRECT,
        "incoming_choices": outbox.recent_incoming(current_user) if kind != ORIGINATION else [],
        "from_allowed": from_allowed,
        "from_default": from_default,
        "mailboxes": rules.mailboxes,
    }


def _render(context: dict, status: int = 200):
    return section_or_page("compose/_form.html", "compose/index.html", context, status)


@bp.get("")
@login_required
def index():
    values = _values_from({"kind": request.args.get("kind", ""), "incoming_id": request.args.get("incoming", "")})
    return render_template("compose/index.html", **_context(values))


@bp.post("/form")
@login_required
def refresh():
    """The form again for another kind, with what was typed kept."""
    return _render(_context(_values_from(request.form)))


def _uploaded_attachments() -> list[dict]:
    attachments = []
    for upload in request.files.getlist("attachments"):
        if not upload or not upload.filename:
            continue
        attachments.append({
            "filename": upload.filename,
            "content_type": upload.mimetype or DEFAULT_CONTENT_TYPE,
            "content_base64": base64.b64encode(upload.read()).decode("ascii"),
        })
    return attachments


@bp.post("")
@login_required
def send():
    values = _values_from(request.form)
    data = {name: values[name] for name in TEXT_FIELDS}
    data["keep_case_ownership"] = values["keep_case_ownership"]
    data["send_at"] = _send_at(values["send_at"])
    data["attachments"] = _uploaded_attachments()
    if outbox.looks_empty(data) and request.form.get("send_empty") != "yes":
        return _render(_context(values, confirm_empty=True))
    try:
        submitted = outbox.submit_message(current_user, data)
    except Refusal as refusal:  # a MessageError, or the From rules' FromRuleError
        return _render(_context(values, errors=refusal.fields, error=refusal.message), refusal.status)
    fresh = _values_from({"kind": values["kind"]})
    return _render(_context(fresh, queued=submitted.message))


def _sent_section(context: dict, status: int = 200):
    return section_or_page("compose/_sent.html", "compose/sent.html", context, status)


@bp.get("/sent/<int:message_id>")
@login_required
def sent(message_id: int):
    """The line about a message just sent, as it stands now."""
    message = outbox.get_visible_message(current_user, message_id)
    if message is None:
        abort(404)
    return _sent_section(_sent_context(message))


@bp.post("/sent/<int:message_id>/cancel")
@login_required
def undo(message_id: int):
    """Undo: cancels the message while no sender may claim it; else says why not (409)."""
    try:
        message = outbox.cancel_message(current_user, message_id)
    except Refusal as refusal:  # send_later.CancelRefused
        if refusal.status == 404:
            abort(404)
        message = outbox.get_visible_message(current_user, message_id)
        return _sent_section(_sent_context(message, refusal.message, take_focus=True), refusal.status)
    return _sent_section(_sent_context(message, take_focus=True))
