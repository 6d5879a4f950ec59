"""Each sender beats for itself: one stuck in a slow SMTP command stops counting as running."""
from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from scheduler.node import HEARTBEAT_SECONDS
from scheduler.status import sender_status
from tests.scheduler.conftest import configure, queue_messages, start, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import SenderInstance


def _beat(app, partition_id):
    with app.app_context():
        return db.session.scalars(select(SenderInstance).where(SenderInstance.partition_id == partition_id)).first()


def _stalled(app, partition_id):
    row = _beat(app, partition_id)
    return row if row is not None and row.last_error and "no progress" in row.last_error else None


def test_a_sender_stuck_in_a_slow_data_stops_beating_and_beats_again_once_it_moves(app, seed, make_node):
    partition_id = seed["partition_id"]
    # DATA is answered only once the test has seen what it looks for: the sender is stuck that
    # long, against a stall limit of 0.5 s, however slow the machine.
    answer_data = threading.Event()
    with SmtpServer(data_gate=answer_data) as server:
        configure(app, partition_id, server, sleep_minutes=0)
        node = make_node(MAILSENDER_SENDER_STALL_SECONDS=0.5, MAILSENDER_SMTP_COMMAND_TIMEOUT=600.0)
        queue_messages(app, partition_id, 1)
        start(app, partition_id)

        try:
            stuck = wait_until(lambda: _stalled(app, partition_id),
                               what="a beat that says the sender makes no progress")
            assert stuck.heartbeat_at < utcnow() - timedelta(seconds=0.5)
            # Later beats keep the time of the last progress: the beat ages, and with it the light.
            # A later beat says a longer stall.
            again = wait_until(lambda: (lambda row: row if row is not None and row.last_error != stuck.last_error
                                        else None)(_stalled(app, partition_id)), what="a later beat")
            # The same time, give or take the moment between the clocks' readings (a beat is 2 s).
            assert abs((again.heartbeat_at - stuck.heartbeat_at).total_seconds()) < 0.5
            with app.app_context():
                aged = sender_status(partition_id, now=stuck.heartbeat_at + timedelta(seconds=15.5))
            assert aged["running"] == 0 and aged["nodes"][0]["defined"] == 1
            assert node.active  # the node's own tick is not stuck: only this sender is
        finally:
            answer_data.set()

        server.wait_for(1)
        fresh = wait_until(lambda: (lambda row: row if row.last_error is None and
                                    row.heartbeat_at > utcnow() - timedelta(seconds=HEARTBEAT_SECONDS + 1) else None)(
            _beat(app, partition_id)), what="a fresh beat once the message went out")
        assert fresh.running
        with app.app_context():
            assert sender_status(partition_id)["running"] == 1
