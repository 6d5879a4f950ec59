"""The administrator's window: Status, Parameters and Test, each a section with its own URL;
and the OAuth2 authorization round trip (Authorize, then the provider's callback).
"""
import hmac
import time
from dataclasses import dataclass

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user
from werkzeug.urls import iri_to_uri

from scheduler import oauth
from scheduler.smtp_check import ENVELOPE_STAGES, STAGE_LABELS, CheckRefused, run_smtp_test
from scheduler.status import LIGHT_LABELS, NodeAlive, NodeUnknown, forget_node, sender_status, set_wanted

from ..authn import admin_required
from ..core.database import db
from ..core.directory.lookups import partition_mailboxes
from ..core.settings.fields import (
    FIELDS,
    MONITOR_FIELDS,
    PARAMETER_FIELDS,
    SECRET_FIELDS,
    form_fields,
    form_values,
    label_of,
    runs_of_groups,
    secrets_set,
    show_if_holds,
)
from ..core.settings.store import company_domains, get_settings, update_settings
from ..core.settings.validate import ssl_allowed
from ..core.states import WANTED_RUNNING, WANTED_STOPPED
from ..web import is_htmx, section_or_page
from .polling import age_step, polled, tag_of

bp = Blueprint("mailsender", __name__, url_prefix="/admin/mail-sender")


def _status_context(node_refusal: str | None = None) -> dict:
    status = sender_status(current_user.partition_id)
    # "Last seen N s ago" changes as precisely as the section shows it, so that a dead node's
    # age moves on the screen while a 204 still answers the polls in between.
    shown = {**status, "nodes": [{**node, "last_seen_seconds_ago": age_step(node["last_seen_seconds_ago"])}
                                 for node in status["nodes"]]}
    return {"status": status, "light_labels": LIGHT_LABELS, "status_tag": tag_of(shown, node_refusal),
            "age_step": age_step, "node_refusal": node_refusal}


@dataclass
class SettingsForm:
    """One settings form as its partial draws it (mailsender/_field.html, _messages.html)."""

    prefix: str  # names its message boxes: "parameters" → #parameters-errors
    fields: tuple
    names: list
    values: dict
    shown: dict
    secrets_set: dict
    cleared: list
    version: object
    saved_version: int
    result: object


def _settings_form(fields: tuple, prefix: str, typed: dict | None = None, result=None) -> SettingsForm:
    """One settings form of the window (Parameters, Monitor settings): the saved values, or what
    was typed into a refused save, with the outcome of the last one."""
    saved = get_settings(current_user.partition_id)
    values = form_values(saved)
    version = saved.version
    if typed is not None:
        values.update({name: typed[name] for name in values if name in typed})
        # A refused form keeps the version it was loaded with, so a conflict stays a conflict.
        version = typed.get("version", version)
        # A secret typed into a refused save goes back to the browser that sent it, so that it
        # need not be typed again; a stored secret is never sent (form_values leaves them blank).
        for name in SECRET_FIELDS:
            values[name] = typed.get(name) or "" if result is not None and not result.saved else ""
    refused = result is not None and not result.saved
    return SettingsForm(
        prefix=prefix, fields=fields, names=[f.name for f in fields], values=values,
        shown={f.name: show_if_holds(f.show_if, values) for f in FIELDS}, secrets_set=secrets_set(saved),
        cleared=(typed or {}).get("clear_secrets", []) if refused else [], version=version,
        saved_version=saved.version, result=result)


def _form_context() -> dict:
    """What every settings form's fields draw on besides their own values."""
    return {
        "mailboxes": partition_mailboxes(current_user.partition_id),
        "effective_domains": company_domains(get_settings(current_user.partition_id)),
        "ssl_allowed": ssl_allowed(),
        "label_of": label_of,
        "provider_endpoints": oauth.PROVIDER_ENDPOINTS,
    }


def _parameters_context(typed: dict | None = None, result=None) -> dict:
    """What _parameters.html needs: the saved values, or what was typed when a save was refused."""
    form = _settings_form(PARAMETER_FIELDS, "parameters", typed, result)
    saved = get_settings(current_user.partition_id)
    return {
        "parameters_form": form,
        "groups": runs_of_groups(PARAMETER_FIELDS),
        "result": result,
        **_form_context(),
        "authorization_shown": show_if_holds(AUTHORIZATION_SHOW_IF, form.values),
        "authorized_by": saved.oauth2_authorized_by,
        "authorized_at": saved.oauth2_authorized_at,
        "authorization_saved": bool(saved.oauth2_refresh_token_enc),
        **_test_context(),
    }


def _monitor_settings_context(typed: dict | None = None, result=None) -> dict:
    """What _monitor_settings.html needs: the Monitor's fields, saved or as typed into a refused save."""
    return {"monitor_settings_form": _settings_form(MONITOR_FIELDS, "monitor-settings", typed, result),
            **_form_context()}


AUTHORIZATION_SHOW_IF = "oauth2_enabled&oauth2_grant=authorization_code"
# The pending authorization in the session: its state, PKCE verifier, partition and start.
PENDING_AUTHORIZATION = "oauth2_pending_authorization"
AUTHORIZATION_MAX_AGE_SECONDS = 15 * 60


def _test_context(test_result=None, test_refusal=None) -> dict:
    return {"test_result": test_result, "test_refusal": test_refusal, "stage_labels": STAGE_LABELS,
            "envelope_stages": ENVELOPE_STAGES, "label_of": label_of,
            "command_timeout": f"{float(current_app.config['MAILSENDER_SMTP_COMMAND_TIMEOUT']):g}"}


def _page_context() -> dict:
    return {**_status_context(), **_parameters_context(), **_monitor_settings_context()}


def _section(template: str, context: dict, status: int = 200):
    return section_or_page(template, "mailsender/index.html", context, status,
                           page_context=_page_context)


@bp.get("")
@admin_required
def index():
    return render_template("mailsender/index.html", **_page_context())


@bp.get("/status")
@admin_required
def status():
    context = _status_context()
    return polled(context["status_tag"], lambda: _section("mailsender/_status.html", context))


@bp.post("/start")
@admin_required
def start():
    return _set_wanted(WANTED_RUNNING)


@bp.post("/stop")
@admin_required
def stop():
    return _set_wanted(WANTED_STOPPED)


def _set_wanted(wanted: str):
    set_wanted(current_user.partition_id, wanted, current_user)
    db.session.commit()
    return _section("mailsender/_status.html", _status_context())


@bp.post("/nodes/<name>/forget")
@admin_required
def forget(name: str):
    """Forget node: a dead or stopped node is no longer listed, until it comes back."""
    try:
        forget_node(name, current_user, current_user.partition_id)
    except NodeUnknown:
        return _section("mailsender/_status.html", _status_context("No node of that name is listed."), 404)
    except NodeAlive:
        return _section("mailsender/_status.html",
                        _status_context(f"Node {name} is running: only a node that is not running can be forgotten."),
                        409)
    db.session.commit()
    return _section("mailsender/_status.html", _status_context())


@bp.get("/parameters")
@admin_required
def parameters():
    """The Parameters section with the saved values: what Cancel puts back."""
    return _section("mailsender/_parameters.html", _parameters_context())


@bp.post("/parameters")
@admin_required
def save_parameters():
    typed = form_fields(request.form)
    result = update_settings(current_user.partition_id, typed, current_user)
    if result.conflict is not None:
        return _section("mailsender/_parameters.html", _parameters_context(typed, result), 409)
    if result.errors:
        return _section("mailsender/_parameters.html", _parameters_context(typed, result), 422)
    db.session.commit()
    response = _section("mailsender/_parameters.html", _parameters_context(None, result))
    if "training_enabled" in result.changed and is_htmx():
        # The training banner lives outside the section: reload the page to show or drop it
        # (parameters.js then shows the top of the page, where the banner and these notes are).
        flash(f"Settings saved (version {get_settings(current_user.partition_id).version}).")
        for warning in result.warnings:
            if warning["field"] != "training_enabled":  # the banner says it
                flash(warning["message"])
        return response[0], response[1], {"HX-Refresh": "true"}
    return response


@bp.get("/monitor-settings")
@admin_required
def monitor_settings():
    """The Monitor settings with the saved values: what their Cancel puts back."""
    return _section("mailsender/_monitor_settings.html", _monitor_settings_context())


@bp.post("/monitor-settings")
@admin_required
def save_monitor_settings():
    """Saves the Monitor's fields alone, by the rules every save of the settings follows."""
    typed = form_fields(request.form, MONITOR_FIELDS)
    result = update_settings(current_user.partition_id, typed, current_user)
    if not result.ok:
        return _section("mailsender/_monitor_settings.html", _monitor_settings_context(typed, result),
                        409 if result.conflict is not None else 422)
    db.session.commit()
    return _section("mailsender/_monitor_settings.html", _monitor_settings_context(None, result))


@bp.get("/test")
@admin_required
def test_section():
    """The Test section before any run."""
    return _section("mailsender/_test.html", _test_context())


@bp.post("/test")
@admin_required
def test_parameters():
    """Tests the values in the form, saved or not; shows every stage."""
    typed = form_fields(request.form)
    try:
        result = run_smtp_test(current_user, typed)
    except CheckRefused as refused:
        response = _section("mailsender/_test.html", _test_context(test_refusal=refused), refused.status)
        headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else {}
        return response[0], response[1], headers
    return _section("mailsender/_test.html", _test_context(test_result=result))


def _callback_url() -> str:
    return url_for("mailsender.oauth2_callback", _external=True)


@bp.post("/oauth2/authorize")
@admin_required
def oauth2_authorize():
    """Save and authorize: saves the form through the same rules as Save and, once it is saved,
    sends the administrator to the provider's Authorization URL (saved settings, PKCE).

    A refused save answers the Parameters section with its messages and the typed values; a
    saved form that cannot be authorized says why next to the button. A post without the
    form's fields authorizes the saved settings as they are.
    """
    result = None
    if any(f.name in request.form for f in FIELDS):
        typed = form_fields(request.form)
        result = update_settings(current_user.partition_id, typed, current_user)
        if not result.ok:
            status = 409 if result.conflict is not None else 422
            why = "Not saved, so not authorized: see the list of what to correct, then press Save and authorize again."
            return _section("mailsender/_parameters.html",
                            {**_parameters_context(typed, result), "authorization_error": why}, status)
        db.session.commit()
    saved = get_settings(current_user.partition_id)
    try:
        if not (saved.oauth2_enabled and saved.oauth2_grant == oauth.AUTHORIZATION_CODE):
            raise oauth.OAuthTokenUnavailable("the saved settings do not use Use OAuth2 SMTP with the "
                                              "authorization code grant")
        pending = oauth.authorization_request(oauth.OAuthConfig.from_settings(saved), _callback_url())
    except oauth.OAuthTokenUnavailable as error:
        why = f"Cannot authorize: {error}."
        if not is_htmx():
            flash(why)
            return redirect(url_for("mailsender.index", _anchor="field-oauth2_authorization"))
        return _section("mailsender/_parameters.html",
                        {**_parameters_context(None, result), "authorization_error": why}, 409)
    session[PENDING_AUTHORIZATION] = {"state": pending.state, "code_verifier": pending.code_verifier,
                                      "partition_id": current_user.partition_id, "started": time.time()}
    if is_htmx():
        # A header is Latin-1: a URL with other characters goes percent-encoded, as redirect() does it.
        return "", 200, {"HX-Redirect": iri_to_uri(pending.url)}
    return redirect(pending.url)


@bp.get("/oauth2/callback")
@admin_required
def oauth2_callback():
    """The provider sends the administrator back here: check `state`, trade the code, store the token.

    Whatever happens, the administrator comes back to the window, where a note says what was
    stored or why nothing was, so that Save and authorize can be pressed again from there.
    """
    pending = session.pop(PENDING_AUTHORIZATION, None)
    state = request.args.get("state", "")
    if (not pending or not state or not hmac.compare_digest(str(pending.get("state", "")).encode(), state.encode())
            or pending.get("partition_id") != current_user.partition_id
            or time.time() - float(pending.get("started", 0)) > AUTHORIZATION_MAX_AGE_SECONDS):
        return _back_to_window("This authorization answer does not match an authorization started here "
                               "(state differs or expired); nothing was stored. Press Save and authorize again.")
    if request.args.get("error"):
        # The provider's words, cut short: the note travels in the session cookie, which has a size limit.
        why = (request.args.get("error_description") or "")[:300]
        return _back_to_window(f"The provider refused the authorization: {request.args['error'][:100]}"
                               f"{': ' + why if why else ''}. Nothing was stored.")
    code = request.args.get("code", "")
    if not code:
        return _back_to_window("The provider sent no authorization code; nothing was stored.")
    try:
        oauth.complete_authorization(current_user.partition_id, code, _callback_url(), pending["code_verifier"],
                                     current_user)
    except oauth.OAuthTokenUnavailable as error:
        return _back_to_window(f"The authorization could not be completed: {error}. Nothing was stored.")
    db.session.commit()
    return _back_to_window(f"OAuth2 authorized by {current_user.username}: the refresh token is stored encrypted.")


def _back_to_window(note: str):
    flash(note)
    return redirect(url_for("mailsender.index"))
