"""The administrator's window: Status and Parameters, each a section with its own URL."""
from flask import Blueprint, flash, render_template, request
from flask_login import current_user

from scheduler.status import LIGHT_LABELS, sender_status, set_wanted

from .. import settings as mailsender_settings
from ..authn import admin_required
from ..directory import partition_mailboxes
from ..extensions import db
from ..models import WANTED_RUNNING, WANTED_STOPPED

bp = Blueprint("mailsender", __name__, url_prefix="/admin/mail-sender")


def _is_htmx() -> bool:
    return bool(request.headers.get("HX-Request"))


def _status_context() -> dict:
    return {"status": sender_status(current_user.partition_id), "light_labels": LIGHT_LABELS}


def _parameters_context(typed: dict | None = None, result=None) -> dict:
    """What _parameters.html needs: the saved values, or what was typed when a save was refused."""
    saved = mailsender_settings.get_settings(current_user.partition_id)
    values = mailsender_settings.form_values(saved)
    version = saved.version
    if typed is not None:
        values.update({name: typed[name] for name in values if name in typed})
        # A refused form keeps the version it was loaded with, so a conflict stays a conflict.
        version = typed.get("version", version)
        for name in mailsender_settings.SECRET_FIELDS:
            values[name] = ""  # secrets are never sent back to the browser
    return {
        "fields": mailsender_settings.FIELDS,
        "values": values,
        "shown": {f.name: mailsender_settings.show_if_holds(f.show_if, values) for f in mailsender_settings.FIELDS},
        "secrets_set": mailsender_settings.secrets_set(saved),
        "typed_secrets": [name for name in mailsender_settings.SECRET_FIELDS if typed and typed.get(name)],
        "cleared": (typed or {}).get("clear_secrets", []),
        "mailboxes": partition_mailboxes(current_user.partition_id),
        "effective_domains": mailsender_settings.company_domains(saved),
        "ssl_allowed": mailsender_settings.ssl_allowed(),
        "version": version,
        "saved_version": saved.version,
        "result": result,
        "label_of": mailsender_settings.label_of,
    }


def _section(template: str, context: dict, status: int = 200):
    if _is_htmx():
        return render_template(template, **context), status
    page = {**_status_context(), **_parameters_context(), **context}
    return render_template("mailsender/index.html", **page), status


@bp.get("")
@admin_required
def index():
    return render_template("mailsender/index.html", **_status_context(), **_parameters_context())


@bp.get("/status")
@admin_required
def status():
    return _section("mailsender/_status.html", _status_context())


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


@bp.get("/parameters")
@admin_required
def parameters():
    """The Parameters section with the saved values: what Cancel puts back."""
    return _section("mailsender/_parameters.html", _parameters_context())


@bp.post("/parameters")
@admin_required
def save_parameters():
    typed = mailsender_settings.form_fields(request.form)
    result = mailsender_settings.update_settings(current_user.partition_id, typed, current_user)
    if result.conflict is not None:
        return _section("mailsender/_parameters.html", _parameters_context(typed, result), 409)
    if result.errors:
        return _section("mailsender/_parameters.html", _parameters_context(typed, result), 422)
    db.session.commit()
    response = _section("mailsender/_parameters.html", _parameters_context(None, result))
    if "training_enabled" in result.changed and _is_htmx():
        # The training banner lives outside the section: reload the page to show or drop it.
        flash("Settings saved.")
        for warning in result.warnings:
            flash(warning["message"])
        return response[0], response[1], {"HX-Refresh": "true"}
    return response
