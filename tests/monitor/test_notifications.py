"""One monitor round at a time (run_round): who is told, what they get, and what a failure shows."""
from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from scheduler.monitor import rounds
from tests.monitor.conftest import notifications, queued, state
from tests.scheduler.conftest import configure
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.directory.users import create_user
from webapp.core.models import Partition
from webapp.core.states import DEFERRED

pytestmark = pytest.mark.databases


def one_round(app, partition_id):
    with app.app_context():
        return rounds.run_round(partition_id, "test-node", force=True)


def banner(client) -> str:
    response = client.get("/admin/mail-sender/monitor/banner", headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.text


def test_every_active_administrator_with_an_address_is_told_and_nobody_else(app, seed, smtp_server):
    pid = seed["partition_id"]
    with app.app_context():
        partition = db.session.get(Partition, pid)
        create_user(partition, "boss", "boss-pass-1", "admin", email="boss@acme.test")
        gone = create_user(partition, "gone", "gone-pass-1", "admin", email="gone@acme.test")
        gone.disabled = True
        create_user(partition, "silent", "silent-pass-1", "admin", email="")
        db.session.commit()
    configure(app, pid, smtp_server, monitor_pending_threshold=0)
    queued(app, pid, 1)
    report = one_round(app, pid)
    assert [n.kind for n in report.notifications] == ["threshold"]
    [arrived] = smtp_server.wait_for(1)
    assert sorted(arrived.rcpt_tos) == ["admin@acme.test", "boss@acme.test"]  # not the agent, not the disabled
    mail = message_from_bytes(arrived.data, policy=default_policy)
    assert mail["Auto-Submitted"] == "auto-generated" and mail["Message-ID"]
    [recorded] = notifications(app)
    assert recorded.ok and recorded.error is None and sorted(recorded.recipients) == sorted(arrived.rcpt_tos)


def test_a_round_with_nothing_to_report_sends_nothing_and_clears_the_alert(app, seed, smtp_server):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server)
    queued(app, pid, 2)
    report = one_round(app, pid)
    assert (report.pending, report.stuck, report.alert_active, report.notifications) == (2, 0, False, [])
    assert smtp_server.messages == [] and not state(app, pid).alert_active


def test_a_notification_that_cannot_be_sent_shows_in_the_banner_and_is_tried_again(app, seed, admin_client):
    pid = seed["partition_id"]
    port = SmtpServer.free_port()  # nobody listens there yet
    with app.app_context():
        configure(app, pid, smtp_port=port, smtp_host="127.0.0.1")
    [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3)
    report = one_round(app, pid)
    [failed] = report.notifications
    assert not failed.ok and failed.error
    assert state(app, pid).notify_error == failed.error
    shown = banner(admin_client)
    assert 'id="monitor-notify-error"' in shown and "could not notify" in shown

    with SmtpServer(port=port) as server:
        one_round(app, pid)
        [arrived] = server.wait_for(1)
    assert f"#{stuck} ".encode() in arrived.data  # the message was not lost to the failure
    assert state(app, pid).notify_error is None
    assert 'id="monitor-notify-error"' not in banner(admin_client)
    assert [n.ok for n in notifications(app)] == [False, True]


def test_no_administrator_address_is_a_failure_the_banner_names(app, seed, smtp_server, admin_client):
    pid = seed["partition_id"]
    with app.app_context():
        from webapp.core.models import User

        db.session.get(User, seed["admin_id"]).email = ""
        db.session.commit()
    configure(app, pid, smtp_server, monitor_pending_threshold=0)
    queued(app, pid, 1)
    one_round(app, pid)
    assert smtp_server.messages == []
    assert "no active administrator" in state(app, pid).notify_error
    assert "no active administrator" in banner(admin_client)


def test_a_round_is_taken_by_one_node_only_until_the_sleep_has_passed(app, seed, smtp_server):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_sleep_minutes=1440, monitor_pending_threshold=0)
    queued(app, pid, 1)
    with app.app_context():
        assert rounds.run_round(pid, "alpha") is not None
        assert rounds.run_round(pid, "beta") is None  # the round is alpha's; the next is a day away
        assert rounds.run_round(pid, "alpha") is None
    assert state(app, pid).last_run_node == "alpha"
    assert len(notifications(app)) == 1
