"""GET /api/v1/monitor and POST /api/v1/messages/{id}/requeue and /remove."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import AGENT_PASSWORD, api_token
from tests.monitor.conftest import ago, audit_actions, later, queued
from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.models import MonitorState
from webapp.core.states import DEFERRED, FAILED, QUEUED, REMOVED, SENDING, SENT

pytestmark = pytest.mark.databases



def test_the_monitor_answers_pending_threshold_alert_and_stuck(app, client, seed, admin_api):
    pid = seed["partition_id"]
    queued(app, pid, 2)
    [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(60), queued_at=ago(30),
                     last_error="451 4.3.0 Try later")
    queued(app, pid, 1, status=SENT)
    body = client.get("/api/v1/monitor", headers=admin_api).json
    assert {"pending", "oldest_pending_seconds", "threshold", "alert_active", "stuck"} <= set(body)
    assert (body["pending"], body["threshold"], body["alert_active"]) == (3, 1000, True)
    assert 29 <= body["oldest_pending_seconds"] <= 60
    [entry] = body["stuck"]
    assert {"id", "status", "reason", "age_seconds", "last_error"} <= set(entry)
    assert (entry["id"], entry["status"], entry["reason"], entry["last_error"]) == (
        stuck, DEFERRED, "repeated_failures", "451 4.3.0 Try later")
    assert 29 <= entry["age_seconds"] <= 60


def test_the_monitor_with_nothing_pending(client, seed, admin_api):
    body = client.get("/api/v1/monitor", headers=admin_api).json
    assert (body["pending"], body["oldest_pending_seconds"], body["alert_active"], body["stuck"]) == (0, None, False, [])


def test_the_stuck_list_pages(app, client, seed, admin_api):
    ids = queued(app, seed["partition_id"], 3, status=SENDING, claim_owner="gone/1/0", lease_until=ago(5))
    first = client.get("/api/v1/monitor?limit=2", headers=admin_api).json
    assert [m["id"] for m in first["stuck"]] == ids[:2] and first["stuck_count"] == 3
    rest = client.get(f"/api/v1/monitor?limit=2&cursor={first['next']}", headers=admin_api).json
    assert [m["id"] for m in rest["stuck"]] == ids[2:] and rest["next"] is None
    assert client.get("/api/v1/monitor?limit=x", headers=admin_api).status_code == 400


def test_the_notify_error_is_part_of_the_answer(app, client, seed, admin_api):
    with app.app_context():
        row = db.session.scalars(select(MonitorState).where(MonitorState.partition_id == seed["partition_id"])).one()
        row.notify_error = "connect: Connection refused"
        db.session.commit()
    assert client.get("/api/v1/monitor", headers=admin_api).json["notify_error"] == "connect: Connection refused"


def test_remove_and_requeue_answer_the_message(app, client, seed, admin_api):
    [message_id] = queued(app, seed["partition_id"], 1, status=FAILED)
    removed = client.post(f"/api/v1/messages/{message_id}/remove", headers=admin_api)
    assert removed.status_code == 200 and (removed.json["id"], removed.json["status"]) == (message_id, REMOVED)
    requeued = client.post(f"/api/v1/messages/{message_id}/requeue", headers=admin_api)
    assert requeued.status_code == 200 and requeued.json["status"] == QUEUED
    assert requeued.json == client.get(f"/api/v1/messages/{message_id}", headers=admin_api).json
    assert audit_actions(app, message_id) == ["message.remove", "message.requeue"]


@pytest.mark.parametrize("action, status", [("remove", SENT), ("requeue", QUEUED), ("requeue", SENT)])
def test_a_state_that_forbids_the_action_answers_409(app, client, seed, admin_api, action, status):
    [message_id] = queued(app, seed["partition_id"], 1, status=status)
    response = client.post(f"/api/v1/messages/{message_id}/{action}", headers=admin_api)
    assert response.status_code == 409 and response.json["error"]
    assert audit_actions(app, message_id) == [f"message.{action}.refused"]


def test_a_live_claim_cannot_be_removed(app, client, seed, admin_api):
    [message_id] = queued(app, seed["partition_id"], 1, status=SENDING, claim_owner="n/1/0", lease_until=later(120))
    assert client.post(f"/api/v1/messages/{message_id}/remove", headers=admin_api).status_code == 409


@pytest.mark.parametrize("action", ["remove", "requeue"])
def test_another_partitions_or_no_such_message_is_404(app, client, seed, admin_api, action):
    with app.app_context():
        other = create_partition("Other").id
        db.session.commit()
    [foreign] = queued(app, other, 1, status=FAILED)
    for message_id in (foreign, 999999, "x"):
        response = client.post(f"/api/v1/messages/{message_id}/{action}", headers=admin_api)
        assert response.status_code == 404, message_id
    assert audit_actions(app, foreign) == []


def test_agents_get_403(app, client, seed):
    agent = api_token(client, "agent", AGENT_PASSWORD)
    [message_id] = queued(app, seed["partition_id"], 1, status=FAILED)
    assert client.get("/api/v1/monitor", headers=agent).status_code == 403
    for action in ("remove", "requeue"):
        assert client.post(f"/api/v1/messages/{message_id}/{action}", headers=agent).status_code == 403
    assert audit_actions(app, message_id) == []


def test_a_cookie_session_needs_the_csrf_token(app, admin_client, seed):
    [message_id] = queued(app, seed["partition_id"], 1, status=FAILED)
    assert admin_client.post(f"/api/v1/messages/{message_id}/remove").status_code == 400
    assert admin_client.get("/api/v1/monitor").status_code == 200
