"""The Mail Sender settings, status, start and stop over the API; and forgetting a node."""
from flask import jsonify
from flask_login import current_user

from scheduler.smtp_check import run_smtp_test
from scheduler.status import NodeAlive, NodeUnknown, forget_node, sender_status, set_wanted

from ..core.database import db
from ..core.settings.store import get_settings, settings_to_json, update_settings
from ..core.states import WANTED_RUNNING, WANTED_STOPPED
from . import ApiError, bp, json_body, require_admin


@bp.get("/mail-sender/settings")
def get_mail_sender_settings():
    """The Mail Sender settings; secrets only as `*_set` flags."""
    require_admin()
    return jsonify(settings_to_json(get_settings(current_user.partition_id)))


@bp.put("/mail-sender/settings")
def put_mail_sender_settings():
    """Changes the fields the body names; 422 with every bad field, 409 on an old version."""
    require_admin()
    result = update_settings(current_user.partition_id, json_body(), current_user)
    if result.conflict is not None:
        raise ApiError(409, "The settings were saved by someone else since that version; read them again.",
                       result.conflict)
    if result.errors:
        raise ApiError(422, "Some settings are not valid; nothing was saved.", result.errors)
    db.session.commit()
    body = settings_to_json(get_settings(current_user.partition_id))
    body["warnings"] = result.warnings
    return jsonify(body)


@bp.post("/mail-sender/test")
def test_mail_sender_settings():
    """Tries the saved settings, or those in the body instead, stage by stage; sends nothing."""
    require_admin()
    return jsonify(run_smtp_test(current_user, json_body(empty_ok=True)).to_json())


@bp.get("/mail-sender/status")
def get_mail_sender_status():
    """The senders' light, what is wanted, and each live node's senders."""
    require_admin()
    return jsonify(sender_status(current_user.partition_id))


@bp.post("/mail-sender/start")
def start_senders():
    """Asks every node to run the partition's senders; answers the status."""
    return _set_wanted(WANTED_RUNNING)


@bp.post("/mail-sender/stop")
def stop_senders():
    """Asks every node to stop the partition's senders; answers the status."""
    return _set_wanted(WANTED_STOPPED)


def _set_wanted(wanted: str):
    require_admin()
    set_wanted(current_user.partition_id, wanted, current_user)
    db.session.commit()
    return jsonify(sender_status(current_user.partition_id))


@bp.delete("/mail-sender/nodes/<name>")
def forget_mail_sender_node(name):
    """Forgets a node that is not running (dead, or stopped): it is listed no more until it comes
    back; 409 while it holds the lease on its name."""
    require_admin()
    try:
        forget_node(name, current_user, current_user.partition_id)
    except NodeUnknown:
        raise ApiError(404, "No node of that name is listed.") from None
    except NodeAlive:
        raise ApiError(409, "The node is running: only a node that is not running can be forgotten.") from None
    db.session.commit()
    return "", 204
