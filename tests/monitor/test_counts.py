"""Counts that do not grow with the queue: exact up to the limit, the last full count above it,
and right through a crash, lease expiries, requeue and remove, as a real COUNT(*) says."""
from __future__ import annotations

import signal
import threading

import pytest
from sqlalchemy import func, select, text

from scheduler import message_actions
from scheduler.monitor import definitions
from tests.monitor.conftest import put, queued
from tests.scheduler.conftest import configure, start, wait_until
from tests.scheduler.test_processes import holding, node_processes  # noqa: F401  (fixture)
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import DEFERRED, FAILED, SENDING


def real_counts(app, partition_id: int) -> tuple[int, int]:
    """(pending, stuck) counted row by row."""
    with app.app_context():
        pending = db.session.execute(text(
            "SELECT count(*) FROM outgoing_message WHERE partition_id = :p "
            "AND status IN ('queued', 'deferred', 'sending')"), {"p": partition_id}).scalar()
        stuck = db.session.scalar(select(func.count()).select_from(OutgoingMessage).where(
            OutgoingMessage.partition_id == partition_id, definitions.stuck_condition()))
        db.session.rollback()
        return pending, stuck


def shown_counts(app, partition_id: int, *, limit: int) -> tuple[int, int, bool]:
    """(pending, stuck, exact) as the window shows them, with at most `limit` counted exactly;
    above it, once counted in full again."""
    app.config["MAILSENDER_EXACT_COUNT_LIMIT"] = limit
    with app.app_context():
        if definitions.bounded_pending_count(partition_id, limit) > limit:
            assert definitions.refresh_queue_figures(partition_id)
        counts = definitions.queue_counts(partition_id)
        db.session.rollback()
        return counts.pending, counts.stuck, counts.exact


def assert_counts_right(app, partition_id: int) -> None:
    pending, stuck = real_counts(app, partition_id)
    assert shown_counts(app, partition_id, limit=10_000) == (pending, stuck, True)
    assert shown_counts(app, partition_id, limit=2) == (pending, stuck, pending <= 2)


@pytest.mark.databases
def test_counts_equal_count_star_after_a_sigkill_then_requeue_and_remove(app, seed, node_processes):  # noqa: F811
    pid = seed["partition_id"]
    release = threading.Event()
    with SmtpServer(data_gate=release, hold_after=5) as server:
        configure(app, pid, server, batch_size=100, sleep_minutes=0)
        ids = queued(app, pid, 30)
        node = node_processes("solo")
        wait_until(lambda: holding(app, "solo", senders=1), timeout=120, what="the node up")
        start(app, pid)
        server.wait_for(5)
        node.signal(signal.SIGKILL)
        node.wait()
        release.set()
    # The killed node's claims: sending, under a lease that runs out, by a node that stopped answering.
    wait_until(lambda: real_counts(app, pid)[1] > 0, what="the killed node's claims counted stuck")
    assert_counts_right(app, pid)

    with app.app_context():
        held = db.session.scalars(select(OutgoingMessage.id).where(OutgoingMessage.status == SENDING)
                                  .order_by(OutgoingMessage.id)).all()
        db.session.rollback()
    put(app, held[0], status=DEFERRED, attempt_count=definitions.STUCK_ATTEMPTS, claim_owner=None, lease_until=None)
    put(app, held[1], status=FAILED, claim_owner=None, lease_until=None)
    assert_counts_right(app, pid)
    with app.app_context():
        message_actions.requeue("test", pid, held[1])
        message_actions.remove("test", pid, held[0])
        message_actions.remove("test", pid, held[2])
        db.session.commit()
    assert_counts_right(app, pid)
    assert real_counts(app, pid)[0] < len(ids)


def test_up_to_the_limit_the_counts_are_exact_at_each_request(app, seed, admin_api, client):
    pid = seed["partition_id"]
    app.config["MAILSENDER_EXACT_COUNT_LIMIT"] = 3
    queued(app, pid, 3)
    seen = client.get("/api/v1/monitor", headers=admin_api).json
    assert (seen["pending"], seen["pending_exact"], seen["pending_counted_at"]) == (3, True, None)


def test_above_the_limit_the_window_says_about_and_how_old(app, seed, admin_client, admin_api):
    pid = seed["partition_id"]
    app.config["MAILSENDER_EXACT_COUNT_LIMIT"] = 3
    configure(app, pid, monitor_pending_threshold=2)
    queued(app, pid, 5)
    with app.app_context():
        assert definitions.refresh_queue_figures(pid)
    seen = admin_client.get("/api/v1/monitor", headers=admin_api).json
    assert (seen["pending"], seen["pending_exact"]) == (5, False) and seen["pending_counted_at"]
    banner = admin_client.get("/admin/mail-sender/monitor/banner", headers={"HX-Request": "true"}).text
    assert "about 5 messages pending" in banner and "as counted" in banner
    page = admin_client.get("/admin/mail-sender").text
    assert 'data-exact="no"' in page and "about 5" in page


def test_an_old_full_count_is_counted_again_in_the_background(app, seed, admin_api, client):
    pid = seed["partition_id"]
    app.config["MAILSENDER_EXACT_COUNT_LIMIT"] = 3
    app.config["MAILSENDER_FIGURES_MAX_AGE_SECONDS"] = 0
    queued(app, pid, 5)
    assert client.get("/api/v1/monitor", headers=admin_api).json["pending"] == 5
    queued(app, pid, 2)
    wait_until(lambda: client.get("/api/v1/monitor", headers=admin_api).json["pending"] == 7,
               what="the new messages counted")
