"""A refused login pauses the route, and the alert reaches the administrators by the webhook,
signed, although the failing SMTP server carries no e-mail (a real node, aiosmtpd, http.server)."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from scheduler.monitor.notifications import ROUTE_PAUSED_KIND
from tests.monitor.conftest import notifications, queued, state
from tests.monitor.test_webhook import SECRET, HookServer, failing_smtp_and_hook, refusing_smtp, verifies  # noqa: F401
from tests.scheduler.conftest import start, statuses, wait_until
from webapp.core import states
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt

pytestmark = pytest.mark.databases


def test_with_auth_refused_the_paused_route_alert_reaches_the_webhook_signed_and_only_once(
        app, seed, refusing_smtp, make_node):
    pid = seed["partition_id"]
    with HookServer() as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_sleep_minutes=1, sleep_minutes=0)
        ids = queued(app, pid, 3)
        make_node()
        start(app, pid)

        def paused_alert():
            return [call for call in hook.requests if json.loads(call["body"])["kind"] == ROUTE_PAUSED_KIND]

        [call] = wait_until(paused_alert, what="the paused-route alert at the webhook")
        # Two more rounds: the pause is announced once.
        first_round = state(app, pid).last_run_at
        wait_until(lambda: state(app, pid).last_run_at > first_round, what="a later round")
        later_round = state(app, pid).last_run_at
        wait_until(lambda: state(app, pid).last_run_at > later_round, what="another round")
    assert verifies(call, SECRET)
    alert = json.loads(call["body"])
    assert "535" in alert["reason"] and alert["route"] == "" and alert["paused_at"]
    assert "Save" in alert["body"] and "paused" in alert["subject"]
    [row] = notifications(app, ROUTE_PAUSED_KIND)
    assert row.webhook_status == states.CHANNEL_OK and not row.ok and "535" in row.error
    assert len(paused_alert()) == 1
    # One attempt, for the first message; the others untouched; nothing failed or delivered.
    with app.app_context():
        tried = db.session.scalars(select(DeliveryAttempt.message_id)).all()
    assert tried == [ids[0]]
    assert states.FAILED not in statuses(app, ids) and refusing_smtp.messages == []
