"""/compose: the Outgoing Message window. It parses the form and calls outbox.submit_message,
the same function as POST /api/v1/messages.
"""
from __future__ import annotations

import base64

from flask import Blueprint, render_template, request
from flask_login import current_user, login_required

from ..core import outbox
from ..core.addresses import DEFAULT_CONTENT_TYPE
from ..core.from_rules import ORIGINATION_LIKE, rules_in_effect
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
TEXT_FIELDS = ("kind", "incoming_id", "from_mailbox_id", "to", "cc", "bcc", "subject", "body_text", "body_html")


def _values_from(source) -> dict:
    values = {name: source.get(name, "") for name in TEXT_FIELDS}
    if values["kind"] not in MESSAGE_KINDS:
        values["kind"] = ORIGINATION if not values["incoming_id"] else REPLY
    values["keep_case_ownership"] = source.get("keep_case_ownership") in ("on", "true", "1")
    return values


def _context(values: dict, *, errors=None, error=None, queued=None) -> dict:
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
            from_default = "none: choose a mailbox"
    else:
        from_allowed, from_default = False, "the original sender"
    return {
        "values": values,
        "errors": errors or {},
        "error": error,
        "queued": queued,
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
    data["attachments"] = _uploaded_attachments()
    try:
        submitted = outbox.submit_message(current_user, data)
    except Refusal as refusal:  # a MessageError, or the From rules' FromRuleError
        return _render(_context(values, errors=refusal.fields, error=refusal.message), refusal.status)
    fresh = _values_from({"kind": values["kind"]})
    return _render(_context(fresh, queued=submitted.message))
