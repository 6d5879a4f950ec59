"""/api/v1/openapi.json: the API's paths and methods, read from the routes themselves.

The URL map gives the paths, methods and path parameters, so a new route appears by itself;
what it cannot tell (query parameters, the body, the answers) comes from the endpoint's entry
in OPERATIONS. tests/web/test_openapi.py fails for a route without an entry, and for an entry
without a route.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from flask import current_app, jsonify

from scheduler.monitor.retention import KINDS as PURGE_KINDS
from scheduler.status import NODE_DEAD, NODE_RUNNING, NODE_STOPPED, STARTING, STOPPING

from ..core.compose import MSG_ID_MAX_LENGTH, REFERENCES_MAX
from ..core.directory.checks import NAME_MAX, PASSWORD_MAX, PASSWORD_MIN
from ..core.directory.mailboxes import PRIORITY_MAX, PRIORITY_MIN
from ..core.directory.users import USERNAME_MAX
from ..core.models import INTEGER_MAX
from ..core.settings.fields import (
    BOOL,
    CHARSET,
    CHOICE,
    DOMAINS,
    FIELDS,
    INT,
    MAILBOX,
    MIME_CHARSETS,
    READ_ONLY_FIELDS,
    SECRET_FIELDS,
    SECRET_KINDS,
    Field,
)
from ..core.states import (
    ANSWER_CLASSES,
    CHANNEL_STATES,
    MESSAGE_KINDS,
    MESSAGE_STATES,
    ROLES,
    SHOWN_STATES,
    WANTED_RUNNING,
    WANTED_STOPPED,
)
from . import PUBLIC_ENDPOINTS, bp
from .paging import MAX_LIMIT

# <name>, <int:name>, <string(length=2):name>: the converter and the argument's name.
_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")

ID = {"type": "integer", "minimum": 1, "maximum": INTEGER_MAX}
NULLABLE_ID = {"type": ["integer", "null"], "minimum": 1, "maximum": INTEGER_MAX}
TEXT = {"type": "string"}
NULLABLE_TEXT = {"type": ["string", "null"]}
MOMENT = {"type": ["string", "null"], "format": "date-time"}
FLAG = {"type": "boolean"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required=(), *, closed: bool = False, **more) -> dict:
    """An object schema. `closed`: the endpoint refuses fields it does not know (422); else it
    ignores them, and answers may gain fields (API.md: extend, never rename or drop)."""
    schema = {"type": "object", "properties": properties, **more}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _page(item: str) -> dict:
    cursor = {"type": ["string", "null"], "description": "The cursor of the next page; null on the last."}
    return _object({"items": {"type": "array", "items": _ref(item)}, "next": cursor}, ("items", "next"))


@dataclass(frozen=True)
class Operation:
    """What the URL map does not say of an endpoint."""

    answer: dict | None  # the success body's schema; None: no body (204)
    status: int = 200
    # What it may answer besides success; 401 (secured calls), 400 and 413 (calls that may carry
    # a body or a CSRF token), 400 (calls with query parameters) and 404 (calls with an id in the
    # path) are added by themselves.
    refusals: tuple[int, ...] = ()
    body: dict | None = None
    body_required: bool = True
    query: tuple[dict, ...] = ()
    headers: tuple[dict, ...] = ()


# --- parameters ---------------------------------------------------------------------------

# Every query parameter takes an empty value as none at all.
LIMIT = {"name": "limit", "in": "query", "required": False, "allowEmptyValue": True,
         "description": "Items a page (the instance's PAGE_SIZE by default).",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}
CURSOR = {"name": "cursor", "in": "query", "required": False, "allowEmptyValue": True,
          "description": "The `next` of the page before.", "schema": {"type": "string"}}
PAGING = (LIMIT, CURSOR)
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "The same key again answers the first result and records nothing new.",
                   "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]+$"}}

# A call that takes no fields: a body sent is ignored, so the request body is optional and open.
NO_FIELDS = {"description": "No fields: a body sent, of whatever kind, is ignored."}


# --- schemas ------------------------------------------------------------------------------


def _setting_schema(f: Field) -> dict:
    """A parameter as GET answers it."""
    if f.kind == BOOL:
        schema = dict(FLAG)
    elif f.kind == INT:
        schema = {"type": ["integer", "null"] if f.nullable else "integer"}
        schema.update({key: value for key, value in (("minimum", f.minimum), ("maximum", f.maximum))
                       if value is not None})
        schema.setdefault("maximum", INTEGER_MAX)
    elif f.kind == DOMAINS:
        schema = {"type": ["array", "null"], "items": TEXT}
    elif f.kind == MAILBOX:
        schema = dict(NULLABLE_ID)
    elif f.kind == CHOICE:
        schema = {"type": "string", "enum": ["", *(value for value, _ in f.choices)]}
    elif f.kind == CHARSET:
        schema = {"type": "string", "enum": list(MIME_CHARSETS)}
    else:
        schema = {"type": "string", "maxLength": f.max_length}
    return {**schema, "description": f"{f.label}: {f.help}"}


# Settings that the rules between fields require whatever the toggles (validate._check_rules).
_NEVER_BLANK = ("smtp_host",)


def _setting_change(f: Field) -> dict:
    """A parameter as PUT takes it: a text's null is blank, the domains may come as one text
    separated by commas (and numbers as their digits, which the document leaves unsaid)."""
    if f.kind in SECRET_KINDS:
        return {"type": ["string", "null"], "maxLength": f.max_length,
                "description": f"{f.label} (write-only): blank keeps the stored one."}
    schema = _setting_schema(f)
    if f.name in _NEVER_BLANK:
        schema.update(minLength=1, pattern=r"\S")
    elif schema.get("type") == "string" and f.kind != CHARSET:
        schema["type"] = ["string", "null"]
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    elif f.kind == DOMAINS:
        schema["type"] = ["array", "string", "null"]
    return schema


def _settings_schemas() -> tuple[dict, dict]:
    """The settings as GET answers them, and as PUT (and the Test) takes them."""
    shown = {f.name: _setting_schema(f) for f in FIELDS if f.kind not in SECRET_KINDS}
    flags = {f"{name}_set": FLAG for name in SECRET_FIELDS}
    answer = _object({"version": {"type": "integer"}, **shown, **flags,
                      "company_domains_effective": {"type": "array", "items": TEXT},
                      "ssl_allowed": FLAG, "updated_at": MOMENT, "updated_by": NULLABLE_TEXT},
                     ("version", *shown, *flags))
    writable = {f.name: _setting_change(f) for f in FIELDS}
    ignored = {name: {"description": "Read-only: ignored."} for name in READ_ONLY_FIELDS if name != "version"}
    change = {
        "version": {"type": ["integer", "null"], "description": "The version read; another one answers 409."},
        **writable,
        "clear_secrets": {"type": ["array", "null"], "items": {"type": "string", "enum": list(SECRET_FIELDS)},
                          "description": "Secrets to clear (an empty string alone keeps them)."},
        **ignored,
    }
    # Unknown names are refused with 422; the `*_set` flags of a GET's answer are ignored.
    return answer, _object(change, closed=True, patternProperties={"_set$": {"description": "Read-only: ignored."}})


def schemas() -> dict:
    """components.schemas: the error shape and every answer's."""
    config = current_app.config
    settings, change = _settings_schemas()
    step = _object({"stage": TEXT, "ok": FLAG, "code": {"type": ["integer", "null"]}, "message": NULLABLE_TEXT,
                    "skipped": {"type": "boolean", "description": "A stage the settings leave out (no TLS, no AUTH)."}},
                   ("stage", "ok", "code", "message"))
    # What one channel (the e-mail, the webhook) made of a notification.
    channel = _object({"status": {"enum": list(CHANNEL_STATES)}, "error": NULLABLE_TEXT,
                       "attempts": {"type": "integer", "minimum": 0}, "code": {"type": ["integer", "null"]},
                       "next_attempt_at": MOMENT, "done_at": MOMENT}, ("status", "error", "attempts"))
    attempt_recipient = _object({"address": NULLABLE_TEXT, "code": {"type": ["integer", "null"]},
                                 "text": NULLABLE_TEXT, "status": NULLABLE_TEXT}, ("address", "code", "text"))
    milliseconds = {"type": "number", "minimum": 0}
    attempt = _object({
        "at": MOMENT, "node": NULLABLE_TEXT, "outcome": NULLABLE_TEXT, "code": {"type": ["integer", "null"]},
        "detail": NULLABLE_TEXT,
        "route": {"type": "string", "description": "The SMTP route it went by; \"\": the Mail Sender's own settings."},
        "class": {"enum": [*ANSWER_CLASSES, None], "description": "The class of the answer that decided it."},
        "class_label": {**NULLABLE_TEXT, "description": "The class as the window names it."},
        "queue_id": {**NULLABLE_TEXT, "description": "The server's id for the message it accepted."},
        "timings": {"type": ["object", "null"], "description": "Milliseconds each stage took; connect only for "
                    "the transaction that opened the session.",
                    "properties": {"connect": milliseconds, "commands": milliseconds, "end": milliseconds}},
        "lease_owner": {**NULLABLE_TEXT, "description": "The claim's holder (node/lease/partition/slot); "
                        "administrators only, null for agents."},
        "recipients": {"type": "array", "items": attempt_recipient},
    }, ("at", "node", "recipients"))
    return {
        "Error": _object({"error": TEXT,
                          "fields": {"type": "object", "additionalProperties": TEXT,
                                     "description": "Every bad input by its API name, with why."}},
                         ("error",)),
        "Token": _object({"id": ID, "prefix": TEXT, "created_at": MOMENT}, ("id", "prefix", "created_at")),
        "NewToken": _object({"token": TEXT}, ("token",)),
        "Me": _object({"username": TEXT, "role": {"enum": list(ROLES)}, "partition": TEXT,
                       "departments": {"type": "array", "items": _object({"id": ID, "name": TEXT}, ("id", "name"))}},
                      ("username", "role", "partition", "departments")),
        "Department": _object({"id": ID, "name": TEXT, "parent_id": NULLABLE_ID}, ("id", "name", "parent_id")),
        "Mailbox": _object({"id": ID, "address": TEXT, "name": TEXT, "department_id": ID,
                            "priority": {"type": "integer"}},
                           ("id", "address", "name", "department_id", "priority")),
        "User": _object({"id": ID, "username": TEXT, "email": TEXT, "role": {"enum": list(ROLES)},
                         "department_ids": {"type": "array", "items": ID}, "disabled": FLAG, "created_at": MOMENT},
                        ("id", "username", "email", "role", "department_ids", "disabled")),
        "Preferences": _object({
            "reply_from_mailbox_id": NULLABLE_ID, "origination_from_mailbox_id": NULLABLE_ID,
            "allow_change_reply_from": FLAG, "allow_change_origination_from": FLAG,
            "reply_from_preference_applies": FLAG, "origination_from_preference_applies": FLAG,
            "system_origination_from_mailbox_id": NULLABLE_ID,
            "mailboxes": {"type": "array", "items": _object({"id": ID, "address": TEXT, "name": TEXT},
                                                            ("id", "address", "name"))},
            "rules": {"type": "array", "items": TEXT},
        }, ("reply_from_mailbox_id", "origination_from_mailbox_id")),
        "Settings": settings,
        "SettingsChange": change,
        "SavedSettings": {"allOf": [_ref("Settings"), _object({"warnings": {"type": "array", "items": _object(
            {"field": TEXT, "message": TEXT}, ("field", "message"))}}, ("warnings",))]},
        "TestResult": _object({"ok": FLAG, "stage": NULLABLE_TEXT, "code": {"type": ["integer", "null"]},
                               "message": NULLABLE_TEXT, "steps": {"type": "array", "items": step},
                               "warnings": {"type": "array", "items": TEXT},
                               "summary": {"type": "string", "description": "In words: what was tried, or why it "
                                                                            "failed; `message` keeps the raw text."}},
                              ("ok", "stage", "code", "message", "steps")),
        "Status": _object({
            "light": {"enum": ["green", "yellow", "red"]}, "wanted": {"enum": [WANTED_RUNNING, WANTED_STOPPED]},
            "change": {"enum": [STARTING, STOPPING, None],
                       "description": "Between a Start or Stop and the heartbeats that agree with it."},
            "defined": {"type": "integer"}, "running": {"type": "integer"},
            "nodes": {"type": "array", "items": _object(
                {"name": TEXT, "state": {"enum": [NODE_RUNNING, NODE_DEAD, NODE_STOPPED]},
                 "defined": {"type": "integer"}, "running": {"type": "integer"},
                 "started_at": {**MOMENT, "description": "When the node (this life of it) took its name."},
                 "version": {**NULLABLE_TEXT, "description": "The product version the node runs."},
                 "last_seen": MOMENT, "stopped_at": MOMENT},
                ("name", "state", "defined", "running", "last_seen"))},
        }, ("light", "wanted", "defined", "running", "nodes")),
        "Monitor": _object({
            "pending": {"type": "integer"}, "oldest_pending_seconds": {"type": ["number", "null"]},
            "threshold": {"type": "integer"}, "alert_active": FLAG,
            "stuck": {"type": "array", "items": _object(
                {"id": ID, "status": {"enum": list(MESSAGE_STATES)}, "reason": TEXT, "age_seconds": {"type": "number"},
                 "last_error": NULLABLE_TEXT}, ("id", "status", "reason", "age_seconds", "last_error"))},
            "next": {"type": ["string", "null"]},
            "pending_exact": FLAG, "pending_counted_at": MOMENT,
            "notifications": {"type": "array", "description": "The last notifications, newest first.",
                              "items": _object({
                                  "id": ID, "kind": TEXT, "created_at": MOMENT, "subject": TEXT,
                                  "recipients": {"type": "array", "items": TEXT},
                                  "email": channel, "webhook": channel,
                              }, ("id", "kind", "created_at", "subject", "email", "webhook"))},
            "last_purge": {"type": ["object", "null"],
                           "description": "The last retention purge; null before the first.",
                           "properties": {
                               "at": MOMENT, "node": NULLABLE_TEXT, "slices": {"type": "integer"},
                               "removed": _object({kind: {"type": "integer"} for kind in PURGE_KINDS},
                                                  PURGE_KINDS)},
                           "required": ["at", "node", "removed", "slices"]},
        }, ("pending", "oldest_pending_seconds", "threshold", "alert_active", "stuck")),
        "Incoming": _object({"id": ID, "case_id": ID, "tracking_id": TEXT, "mailbox_id": ID, "from": TEXT,
                             "subject": TEXT, "message_id": TEXT, "in_reply_to": TEXT,
                             "references": {"type": "array", "items": TEXT}, "answered": FLAG},
                            ("id", "case_id", "tracking_id")),
        "Message": _object({
            "id": ID, "status": {"enum": list(SHOWN_STATES)}, "kind": {"enum": list(MESSAGE_KINDS)},
            "from": TEXT, "from_mailbox_id": NULLABLE_ID, "envelope_from": TEXT,
            "to": {"type": "array", "items": TEXT}, "cc": {"type": "array", "items": TEXT},
            "bcc": {"type": "array", "items": TEXT}, "subject": TEXT, "message_id": TEXT,
            "tracking_id": NULLABLE_TEXT, "case_id": NULLABLE_ID, "incoming_id": NULLABLE_ID,
            "keep_case_ownership": FLAG, "training": FLAG, "queued_at": MOMENT, "finished_at": MOMENT,
            "send_at": {**MOMENT, "description": "The time its author asked it to go out at; null: at once."},
            "cancel_until": {**MOMENT, "description": "Until when POST .../cancel may cancel it; null: no longer."},
            "last_error": {**NULLABLE_TEXT, "description": "Why it failed, was deferred or was cancelled."},
            "recipients": {"type": "array", "items": _object(
                {"address": TEXT, "role": TEXT, "status": TEXT, "code": {"type": ["integer", "null"]},
                 "text": NULLABLE_TEXT}, ("address", "role", "status"))},
            "attempts": {"type": "array", "items": attempt},
        }, ("id", "status", "kind", "from", "envelope_from", "to", "subject", "message_id", "tracking_id",
            "training", "attempts")),
        "IncomingRequest": _incoming_request(),
        "MessageRequest": _message_request(config),
        "OpenAPI": _object({"openapi": TEXT, "info": {"type": "object"}, "paths": {"type": "object"}},
                           ("openapi", "info", "paths")),
    }


def _incoming_request() -> dict:
    raw = {"type": "string", "minLength": 1, "contentEncoding": "base64"}
    msg_id = {"type": ["string", "null"], "maxLength": MSG_ID_MAX_LENGTH,
              "description": "One Message-ID, <id@domain>."}
    return _object({
        "mailbox_id": ID,
        "from": TEXT, "subject": NULLABLE_TEXT, "body_text": NULLABLE_TEXT, "body_html": NULLABLE_TEXT,
        "message_id": {**msg_id, "description": "One Message-ID, <id@domain>; none: one of ours is made."},
        "in_reply_to": msg_id,
        "references": {"type": ["array", "string", "null"], "items": {"type": "string", "maxLength": MSG_ID_MAX_LENGTH},
                       "maxItems": REFERENCES_MAX,
                       "description": "Message-IDs: a list, or one text separated by spaces."},
        "raw": {"type": ["string", "null"], "contentEncoding": "base64",
                "description": "The whole RFC 5322 message as received, base64; instead of the other fields."},
    }, ("mailbox_id",), anyOf=[_object({"from": TEXT}, ("from",)), _object({"raw": raw}, ("raw",))])


def _message_request(config) -> dict:
    addresses = {"type": ["array", "string", "null"], "items": TEXT,
                 "description": "Addresses: a list, or one text separated by commas."}
    attachment = _object({"filename": TEXT, "content_type": TEXT,
                          "content_base64": {"type": "string", "contentEncoding": "base64"}},
                         ("filename", "content_base64"))
    return _object({
        "kind": {"enum": list(MESSAGE_KINDS)}, "incoming_id": NULLABLE_ID, "from_mailbox_id": NULLABLE_ID,
        "to": addresses, "cc": addresses, "bcc": addresses,
        "subject": {"type": ["string", "null"], "maxLength": config["MAILSENDER_MAX_SUBJECT_LENGTH"]},
        "body_text": NULLABLE_TEXT, "body_html": NULLABLE_TEXT,
        "attachments": {"type": ["array", "null"], "items": attachment},
        "keep_case_ownership": {"type": ["boolean", "null"]},
        "send_at": {"type": ["string", "null"], "format": "date-time",
                    "description": "Send later: ISO 8601 with its offset, at most 30 days ahead; null: at once "
                                   "(after the undo hold)."},
    }, ("kind",))


# --- bodies -------------------------------------------------------------------------------

# A text that must not be blank: the rules strip it first.
_NAME = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": r"\S"}
_DEPARTMENT = {"name": _NAME, "parent_id": {**NULLABLE_ID, "description": "null: the root."}}
_MAILBOX = {"address": {"type": "string", "minLength": 1, "maxLength": 320, "pattern": r"\S"},
            "name": {"type": ["string", "null"], "maxLength": NAME_MAX},
            "department_id": {**NULLABLE_ID, "description": "null: the root."}}
_PRIORITY = {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX}
_PASSWORD = {"type": "string", "minLength": PASSWORD_MIN, "maxLength": PASSWORD_MAX}
_USER = {"username": {"type": "string", "maxLength": USERNAME_MAX, "pattern": r"^[\w.@+-]+$"},
         "password": _PASSWORD, "role": {"enum": list(ROLES)}, "email": NULLABLE_TEXT,
         "department_ids": {"type": ["array", "null"], "items": ID, "description": "none: the root."},
         "disabled": FLAG}
_PREFERENCES = {"reply_from_mailbox_id": NULLABLE_ID, "origination_from_mailbox_id": NULLABLE_ID}

OPERATIONS: dict[str, Operation] = {
    "api.openapi": Operation(_ref("OpenAPI")),
    "api.create_token": Operation(_ref("NewToken"), 201, (401, 429),
                                  _object({"username": TEXT, "password": TEXT}, ("username", "password"))),
    "api.me": Operation(_ref("Me")),
    "api.list_tokens": Operation(_page("Token"), refusals=(404,), query=(
        {"name": "user_id", "in": "query", "required": False, "allowEmptyValue": True, "schema": ID,
         "description": "Administrators: another user's tokens."}, *PAGING)),
    "api.revoke_token": Operation(None, 204),
    "api.change_my_password": Operation(None, 204, (422,), _object({"current_password": TEXT,
                                                                    "new_password": _PASSWORD},
                                                                   ("current_password", "new_password"))),
    "api.list_departments": Operation(_page("Department"), query=PAGING),
    "api.get_department": Operation(_ref("Department")),
    "api.create_department": Operation(_ref("Department"), 201, (403, 409, 422), _object(_DEPARTMENT, ("name",))),
    "api.update_department": Operation(_ref("Department"), 200, (403, 409, 422), _object(_DEPARTMENT)),
    "api.delete_department": Operation(None, 204, (403, 409)),
    "api.list_mailboxes": Operation(_page("Mailbox"), query=(
        {"name": "for", "in": "query", "required": False, "allowEmptyValue": True, "schema": {"enum": ["from"]},
         "description": "`from`: the caller's own mailboxes, administrators' too."}, *PAGING)),
    "api.get_mailbox": Operation(_ref("Mailbox")),
    # A new mailbox's priority may be null (the default, 5); a change names one.
    "api.create_mailbox": Operation(_ref("Mailbox"), 201, (403, 409, 422), _object(
        {**_MAILBOX, "priority": {**_PRIORITY, "type": ["integer", "null"]}}, ("address",))),
    "api.update_mailbox": Operation(_ref("Mailbox"), 200, (403, 409, 422),
                                    _object({**_MAILBOX, "priority": _PRIORITY})),
    "api.list_users": Operation(_page("User"), refusals=(403,), query=PAGING),
    "api.get_user": Operation(_ref("User"), refusals=(403,)),
    "api.create_user": Operation(_ref("User"), 201, (403, 409, 422),
                                 _object(_USER, ("username", "password", "role"))),
    "api.update_user": Operation(_ref("User"), 200, (403, 409, 422), _object(_USER)),
    "api.get_preferences": Operation(_ref("Preferences")),
    "api.put_preferences": Operation(_ref("Preferences"), 200, (403, 422), _object(_PREFERENCES)),
    "api.get_mail_sender_settings": Operation(_ref("Settings"), refusals=(403,)),
    "api.put_mail_sender_settings": Operation(_ref("SavedSettings"), 200, (403, 409, 422), _ref("SettingsChange")),
    "api.test_mail_sender_settings": Operation(_ref("TestResult"), 200, (403, 422, 429), _ref("SettingsChange"),
                                               body_required=False),
    "api.get_mail_sender_status": Operation(_ref("Status"), refusals=(403,)),
    "api.start_senders": Operation(_ref("Status"), 200, (403,), NO_FIELDS, body_required=False),
    "api.stop_senders": Operation(_ref("Status"), 200, (403,), NO_FIELDS, body_required=False),
    "api.forget_mail_sender_node": Operation(None, 204, (403, 409)),
    "api.get_monitor": Operation(_ref("Monitor"), refusals=(403,), query=PAGING),
    "api.record_incoming": Operation(_ref("Incoming"), 201, (403, 422), _ref("IncomingRequest"),
                                     headers=(IDEMPOTENCY_KEY,)),
    "api.submit_message": Operation(_ref("Message"), 201, (403, 409, 422), _ref("MessageRequest"),
                                    headers=(IDEMPOTENCY_KEY,)),
    "api.list_messages": Operation(_page("Message"), refusals=(422,), query=(
        {"name": "status", "in": "query", "required": False, "allowEmptyValue": True,
         "schema": {"enum": list(SHOWN_STATES)}}, *PAGING)),
    "api.get_message": Operation(_ref("Message")),
    "api.cancel_message": Operation(_ref("Message"), 200, (409,), NO_FIELDS, body_required=False),
    "api.requeue_message": Operation(_ref("Message"), 200, (403, 409), NO_FIELDS, body_required=False),
    "api.remove_message": Operation(_ref("Message"), 200, (403, 409), NO_FIELDS, body_required=False),
    "api.send_again_message": Operation(_ref("Message"), 200, (403, 409), NO_FIELDS, body_required=False),
    "api.mark_sent_message": Operation(_ref("Message"), 200, (403, 409), NO_FIELDS, body_required=False),
}

REASONS = {
    200: "OK", 201: "Created", 204: "Done; no body",
    400: "Bad request: the body is no JSON object the API takes, a parameter is malformed, or a cookie "
         "session sent no CSRF token",
    401: "No valid token or session (or, for a token, a wrong username or password)",
    403: "Not allowed for this user (administrators only, or not among the user's)",
    404: "No such object in the caller's partition",
    409: "In conflict with the current state (in use, taken, an old version)",
    413: "The body is too large",
    422: "Some fields are not valid; `fields` names each",
    429: "Too many requests; Retry-After says when to try again",
}


def _parameters(rule) -> list[dict]:
    found = []
    for converter, name in _PARAM.findall(rule.rule):
        schema = dict(ID) if converter == "int" else {"type": "string"}
        found.append({"name": name, "in": "path", "required": True, "schema": schema})
    return found


def _responses(operation: Operation, *, secured: bool, may_carry_body: bool, has_path_id: bool) -> dict:
    answer: dict = {"description": REASONS[operation.status]}
    if operation.answer is not None:
        answer["content"] = {"application/json": {"schema": operation.answer}}
    refusals = set(operation.refusals)
    if secured:
        refusals.add(401)
    if may_carry_body:
        refusals |= {400, 413}
    if operation.query:
        refusals.add(400)
    if has_path_id:
        refusals.add(404)
    responses = {str(operation.status): answer}
    for status in sorted(refusals):
        refusal = {"description": REASONS[status],
                   "content": {"application/json": {"schema": _ref("Error")}}}
        if status == 429:
            refusal["headers"] = {"Retry-After": {"required": True, "description": "Seconds to wait.",
                                                  "schema": {"type": "integer", "minimum": 0}}}
        responses[str(status)] = refusal
    return responses


def _operation(rule, method: str, view) -> dict:
    endpoint = rule.endpoint
    summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else endpoint
    documented = {
        "operationId": endpoint.removeprefix("api."),
        "summary": summary,
        "tags": [view.__module__.rpartition(".")[2]],
        "security": [] if endpoint in PUBLIC_ENDPOINTS else [{"bearer": []}],
    }
    operation = OPERATIONS.get(endpoint)
    if operation is None:  # tests/web/test_openapi.py names it; the document still lists the route
        documented["responses"] = {"default": {"description": "JSON; errors as {error, fields}"}}
        return documented
    parameters = [*_parameters(rule), *operation.query, *operation.headers]
    if parameters:
        documented["parameters"] = parameters
    if method in ("POST", "PUT", "PATCH"):
        documented["requestBody"] = {"required": operation.body_required,
                                     "content": {"application/json": {"schema": operation.body or NO_FIELDS}}}
    documented["responses"] = _responses(operation, secured=endpoint not in PUBLIC_ENDPOINTS,
                                         may_carry_body=method != "GET", has_path_id=bool(rule.arguments))
    return documented


def document() -> dict:
    """The OpenAPI 3.1 document of every route under /api/v1, as the running app has them."""
    paths: dict = {}
    for rule in current_app.url_map.iter_rules():
        if not rule.rule.startswith(bp.url_prefix + "/"):
            continue
        path = _PARAM.sub(r"{\2}", rule.rule[len(bp.url_prefix):])
        view = current_app.view_functions[rule.endpoint]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, method, view)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Mail Sender API", "version": "1"},
        "servers": [{"url": bp.url_prefix}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": schemas()},
        "paths": paths,
    }


@bp.get("/openapi.json")
def openapi():
    """This document."""
    return jsonify(document())
