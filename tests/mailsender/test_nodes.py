"""Nodes as the Status lists them: a node that died stays listed (and the light yellow) until an
administrator forgets it or it comes back; a clean shutdown is listed as stopped for an hour of
product time, and is no failure. Start and Stop say "Starting…" / "Stopping…" until the
heartbeats agree."""
from datetime import timedelta

import pytest
from sqlalchemy import select

from scheduler.node import Node as EngineNode
from scheduler.status import HEARTBEAT_STALE_SECONDS, STOPPED_LISTED_MINUTES, forget_node, sender_status, set_wanted
from tests.mailsender.conftest import add_node, add_sender
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import AuditEvent, Node, SenderInstance

pytestmark = pytest.mark.databases

# Past the hour a stopped node is listed for (a product minute is 0.2 s in the tests).
AFTER_THE_HOUR = STOPPED_LISTED_MINUTES * 0.2 + 5


def dead(name: str, ago: float = 30) -> int:
    """A node last seen `ago` seconds ago, whose lease ran out without a clean shutdown: killed, or cut off."""
    return add_node(name, lease_seconds=20 - ago, last_seen_ago=ago)


def stopped(name: str, ago: float = 1) -> int:
    node_id = add_node(name, lease_seconds=-ago, last_seen_ago=ago)
    node = db.session.get(Node, node_id)
    node.lease_owner, node.stopped_at = None, utcnow() - timedelta(seconds=ago)
    return node_id


def with_a_running_node(partition_id: int) -> None:
    add_sender(add_node("alive"), partition_id, 0, running=True)


def test_a_dead_node_stays_listed_and_the_light_yellow_long_after(app, seed):
    pid = seed["partition_id"]
    with app.app_context():
        with_a_running_node(pid)
        add_sender(dead("killed", ago=2 * 3600), pid, 0, running=True, heartbeat_ago=2 * 3600)
        db.session.commit()
        status = sender_status(pid)
    assert status["light"] == "yellow" and status["light_label"] == "A node stopped without shutting down"
    killed = next(node for node in status["nodes"] if node["name"] == "killed")
    assert (killed["state"], killed["defined"], killed["running"]) == ("dead", 0, 0)
    assert killed["last_seen"] is not None and killed["stopped_at"] is None


def test_a_clean_shutdown_is_listed_as_stopped_for_an_hour_and_is_no_failure(app, seed):
    pid = seed["partition_id"]
    with app.app_context():
        with_a_running_node(pid)
        stopped("polite")
        stopped("long-ago", ago=AFTER_THE_HOUR)
        db.session.commit()
        status = sender_status(pid)
    assert status["light"] == "green"
    polite = next(node for node in status["nodes"] if node["name"] == "polite")
    assert polite["state"] == "stopped" and polite["stopped_at"] is not None
    assert "long-ago" not in [node["name"] for node in status["nodes"]]


def test_forget_node_stops_listing_a_dead_node_and_the_light_turns_green_again(app, seed):
    pid = seed["partition_id"]
    with app.app_context():
        with_a_running_node(pid)
        dead("killed")
        db.session.commit()
        forget_node("killed", "tester", pid)
        db.session.commit()
        status = sender_status(pid)
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "node.forget")).one()
    assert status["light"] == "green" and [node["name"] for node in status["nodes"]] == ["alive"]
    assert (event.actor, event.details["name"]) == ("tester", "killed")


def test_forgetting_a_node_is_the_partitions_own_and_another_still_sees_it_dead(app, seed):
    from webapp.core.directory.departments import create_partition

    pid = seed["partition_id"]
    with app.app_context():
        other = create_partition("Globex").id
        dead("killed")
        db.session.commit()
        forget_node("killed", "tester", pid)
        db.session.commit()
        assert sender_status(pid)["nodes"] == []
        [seen] = sender_status(other)["nodes"]
        assert (seen["name"], seen["state"]) == ("killed", "dead")
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "node.forget")).one()
        assert event.partition_id == pid
        forget_node("killed", "tester", other)  # forgotten there too, once its administrator says so
        db.session.commit()
        assert sender_status(other)["nodes"] == []


def test_a_forgotten_node_that_comes_back_is_listed_again(app, seed):
    pid = seed["partition_id"]
    with app.app_context():
        dead("test-node")  # the name of this app's node
        db.session.commit()
        forget_node("test-node", "tester", pid)
        db.session.commit()
        assert sender_status(pid)["nodes"] == []
    engine = EngineNode(app)
    engine.start()
    try:
        with app.app_context():
            deadline = utcnow() + timedelta(seconds=30)
            while utcnow() < deadline and not sender_status(pid)["nodes"]:
                db.session.rollback()
            [listed] = sender_status(pid)["nodes"]
    finally:
        engine.stop(timeout=10)
    assert (listed["name"], listed["state"]) == ("test-node", "running")


def test_a_node_that_stops_is_written_as_stopped_not_dead(app, seed):
    engine = EngineNode(app)
    engine.start()
    with app.app_context():
        deadline = utcnow() + timedelta(seconds=30)
        while utcnow() < deadline and not sender_status(seed["partition_id"])["nodes"]:
            db.session.rollback()
    engine.stop(timeout=10)
    with app.app_context():
        [listed] = sender_status(seed["partition_id"])["nodes"]
    assert listed["state"] == "stopped" and listed["stopped_at"] is not None


def test_the_api_forgets_a_node_that_is_not_running_and_refuses_a_running_one(app, client, admin_api, agent_api,
                                                                               seed):
    with app.app_context():
        with_a_running_node(seed["partition_id"])
        dead("killed")
        db.session.commit()
    assert client.delete("/api/v1/mail-sender/nodes/killed", headers=agent_api).status_code == 403
    running = client.delete("/api/v1/mail-sender/nodes/alive", headers=admin_api)
    assert running.status_code == 409 and running.json["error"]
    assert client.delete("/api/v1/mail-sender/nodes/killed", headers=admin_api).status_code == 204
    again = client.delete("/api/v1/mail-sender/nodes/killed", headers=admin_api)
    assert again.status_code == 404 and again.json["error"]
    assert client.delete("/api/v1/mail-sender/nodes/never-was", headers=admin_api).status_code == 404
    names = [node["name"] for node in client.get("/api/v1/mail-sender/status", headers=admin_api).json["nodes"]]
    assert names == ["alive"]


def test_start_says_starting_until_the_heartbeats_agree(app, seed):
    pid = seed["partition_id"]
    with app.app_context():
        add_sender(add_node("alive"), pid, 0, running=False)
        db.session.commit()
        assert sender_status(pid)["change"] is None
        set_wanted(pid, "running", "tester")
        db.session.commit()
        starting = sender_status(pid)
        # Heartbeats that never agree: after a stale heartbeat's time the light alone tells.
        given_up = sender_status(pid, utcnow() + timedelta(seconds=HEARTBEAT_STALE_SECONDS + 1))
        db.session.scalars(select(SenderInstance)).one().running = True
        db.session.commit()
        agreed = sender_status(pid)
        set_wanted(pid, "stopped", "tester")
        db.session.commit()
        stopping = sender_status(pid)
    assert (starting["change"], starting["change_label"], starting["light"]) == ("starting", "Starting…", "red")
    assert given_up["change"] is None
    assert agreed["change"] is None and agreed["light"] == "green"
    assert (stopping["change"], stopping["change_label"]) == ("stopping", "Stopping…")
