"""The status lights, read from node leases and sender heartbeats; Start and Stop write the wanted state."""
from datetime import timedelta

import pytest
from sqlalchemy import select

from scheduler.status import HEARTBEAT_STALE_SECONDS, sender_status, set_wanted
from tests.mailsender.conftest import add_node, add_sender
from webapp.core import route_state
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.models import AuditEvent, Partition, SenderInstance
from webapp.core.settings.store import get_settings, update_settings

pytestmark = pytest.mark.databases


def status_of(app, partition_id):
    with app.app_context():
        return sender_status(partition_id)


def test_red_when_no_sender_is_defined(app, seed):
    status = status_of(app, seed["partition_id"])
    assert (status["light"], status["defined"], status["running"], status["nodes"]) == ("red", 0, 0, [])
    assert status["wanted"] == "stopped"


def test_green_when_every_defined_sender_runs(app, seed):
    with app.app_context():
        node = add_node("node-a")
        add_sender(node, seed["partition_id"], 0, running=True)
        add_sender(node, seed["partition_id"], 1, running=True)
        db.session.commit()
    status = status_of(app, seed["partition_id"])
    assert (status["light"], status["defined"], status["running"]) == ("green", 2, 2)
    [listed] = status["nodes"]
    assert (listed["name"], listed["defined"], listed["running"]) == ("node-a", 2, 2)
    assert listed["last_seen"] is not None


def test_yellow_when_some_run(app, seed):
    with app.app_context():
        node_a, node_b = add_node("node-a"), add_node("node-b")
        add_sender(node_a, seed["partition_id"], 0, running=True)
        add_sender(node_b, seed["partition_id"], 0, running=False)
        db.session.commit()
    status = status_of(app, seed["partition_id"])
    assert (status["light"], status["defined"], status["running"]) == ("yellow", 2, 1)
    assert [(n["name"], n["defined"], n["running"]) for n in status["nodes"]] == [("node-a", 1, 1), ("node-b", 1, 0)]


def test_red_when_defined_senders_are_all_stopped(app, seed):
    with app.app_context():
        add_sender(add_node("node-a"), seed["partition_id"], 0, running=False)
        db.session.commit()
    assert status_of(app, seed["partition_id"])["light"] == "red"


def test_a_stale_heartbeat_does_not_count_as_running(app, seed):
    with app.app_context():
        node = add_node("node-a")
        add_sender(node, seed["partition_id"], 0, running=True, heartbeat_ago=HEARTBEAT_STALE_SECONDS + 5)
        add_sender(node, seed["partition_id"], 1, running=True, heartbeat_ago=None)
        db.session.commit()
    status = status_of(app, seed["partition_id"])
    assert (status["light"], status["defined"], status["running"]) == ("red", 2, 0)


def test_senders_of_a_node_whose_lease_ran_out_are_not_defined(app, seed):
    with app.app_context():
        add_sender(add_node("gone", lease_seconds=-1), seed["partition_id"], 0, running=True)
        add_sender(add_node("alive"), seed["partition_id"], 0, running=True)
        db.session.commit()
    status = status_of(app, seed["partition_id"])
    # The dead node is listed, with nothing defined, and keeps the light from green.
    assert (status["light"], status["defined"], status["running"]) == ("yellow", 1, 1)
    assert [(n["name"], n["state"], n["defined"]) for n in status["nodes"]] == [("alive", "running", 1),
                                                                               ("gone", "dead", 0)]


def test_another_partitions_senders_do_not_count(app, seed):
    with app.app_context():
        other = create_partition("Other")
        node = add_node("node-a")
        add_sender(node, seed["partition_id"], 0, running=False)
        add_sender(node, other.id, 0, running=True)
        db.session.commit()
    status = status_of(app, seed["partition_id"])
    assert (status["light"], status["defined"], status["running"]) == ("red", 1, 0)


def test_set_wanted_writes_the_wanted_state_its_time_and_an_audit(app, seed):
    with app.app_context():
        before = db.session.get(Partition, seed["partition_id"]).senders_wanted_at
        assert set_wanted(seed["partition_id"], "running", "tester") is True
        db.session.commit()
        partition = db.session.get(Partition, seed["partition_id"])
        assert partition.senders_wanted == "running" and partition.senders_wanted_at > before
        started_at = partition.senders_wanted_at
        # Start on running senders changes nothing: not the time the nodes read as "wake now".
        assert set_wanted(seed["partition_id"], "running", "tester") is False
        db.session.commit()
        assert db.session.get(Partition, seed["partition_id"]).senders_wanted_at == started_at
        assert set_wanted(seed["partition_id"], "stopped", "tester") is True
        db.session.commit()
        actions = db.session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("senders.%"))
                                     .order_by(AuditEvent.id)).all()
        assert actions == ["senders.start", "senders.stop"]
        with pytest.raises(ValueError):
            set_wanted(seed["partition_id"], "paused", "tester")


def test_the_api_start_and_stop_answer_the_status(app, client, admin_api, seed):
    with app.app_context():
        add_sender(add_node("node-a"), seed["partition_id"], 0, running=True)
        db.session.commit()
    started = client.post("/api/v1/mail-sender/start", headers=admin_api)
    assert started.status_code == 200
    assert (started.json["wanted"], started.json["light"], started.json["defined"]) == ("running", "green", 1)
    assert client.get("/api/v1/mail-sender/status", headers=admin_api).json["wanted"] == "running"
    stopped = client.post("/api/v1/mail-sender/stop", headers=admin_api)
    assert stopped.json["wanted"] == "stopped"
    with app.app_context():
        assert db.session.get(Partition, seed["partition_id"]).senders_wanted == "stopped"


def test_each_nodes_sender_errors_are_shown_with_the_sender(app, seed, admin_client):
    with app.app_context():
        node = add_node("node-a")
        add_sender(node, seed["partition_id"], 0, running=True)
        add_sender(node, seed["partition_id"], 1, running=True)
        sender = db.session.scalars(select(SenderInstance).where(SenderInstance.slot == 1)).one()
        sender.last_error = "no progress for 20 s: waiting on the SMTP server or the database"
        db.session.commit()
    [listed] = status_of(app, seed["partition_id"])["nodes"]
    assert listed["errors"] == ["sender 2: no progress for 20 s: waiting on the SMTP server or the database"]
    section = admin_client.get("/admin/mail-sender/status", headers={"HX-Request": "true"}).text
    assert "sender 2: no progress for 20 s" in section


def _route(app, partition_id, *, paused: bool):
    with app.app_context():
        node = add_node("node-a")
        add_sender(node, partition_id, 0, running=True)
        if paused:
            route_state.pause(partition_id, get_settings(partition_id).version, "535 5.7.8 Authentication failed")
        else:
            route_state.hold(partition_id, utcnow() + timedelta(hours=2), "554 5.2.0 daily sending limit exceeded")
        db.session.commit()


@pytest.mark.parametrize("paused", [True, False], ids=["paused", "held"])
def test_a_paused_or_held_route_turns_green_yellow_and_says_why(app, seed, admin_client, paused):
    _route(app, seed["partition_id"], paused=paused)
    status = status_of(app, seed["partition_id"])
    assert status["light"] == "yellow" and status["delivering"] is False
    assert status["route"]["paused"] is paused
    section = admin_client.get("/admin/mail-sender/status", headers={"HX-Request": "true"}).text
    if paused:
        assert "Paused: the SMTP settings need attention" in section and "535 5.7.8" in section
        assert "Save" in section and 'data-route="paused"' in section
    else:
        assert "Holding: the provider" in section and "daily sending limit" in section and " UTC" in section
        assert status["route"]["until"] and 'data-route="held"' in section


def test_a_save_lifts_a_pause_and_the_light_turns_green(app, seed):
    _route(app, seed["partition_id"], paused=True)
    with app.app_context():
        assert update_settings(seed["partition_id"], {"batch_size": 50}, "test").ok
        db.session.commit()
    status = status_of(app, seed["partition_id"])
    assert status["route"] is None and status["light"] == "green" and status["delivering"] is True
