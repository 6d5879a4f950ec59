"""Pending and stuck, as the window, the API and the job all count them (scheduler/monitor)."""
from __future__ import annotations

import time

import pytest

from scheduler.monitor import definitions as monitor
from tests.monitor.conftest import ago, later, queued
from webapp.core.states import DEFERRED, FAILED, REMOVED, SENDING, SENT, TRAINING

pytestmark = pytest.mark.databases

# MAILSENDER_STUCK_AGE_MINUTES of 0.2 s minutes: long enough that a message placed a minute
# short of it stays short of it, however slow the machine.
STUCK_AGE_MINUTES = 1000
STUCK_AGE = STUCK_AGE_MINUTES * 0.2


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MAILSENDER_STUCK_AGE_MINUTES": STUCK_AGE_MINUTES}


def _stuck(app, partition_id):
    with app.app_context():
        return {m.id: m.reason for m in monitor.stuck_messages(partition_id)}


def test_pending_counts_queued_deferred_and_sending_only(app, seed):
    pid = seed["partition_id"]
    queued(app, pid, 2)
    queued(app, pid, 1, status=DEFERRED, retry_at=later(60))
    queued(app, pid, 1, status=SENDING, claim_owner="n/1/0", lease_until=later(60))
    for done in (SENT, FAILED, TRAINING, REMOVED):
        queued(app, pid, 1, status=done)
    with app.app_context():
        assert monitor.pending_count(pid) == 4


def test_the_oldest_pending_age_is_that_of_the_longest_waiting_pending_message(app, seed):
    pid = seed["partition_id"]
    with app.app_context():
        assert monitor.oldest_pending_seconds(pid) is None
    began = time.monotonic()
    queued(app, pid, 1, queued_at=ago(30))
    queued(app, pid, 1, status=SENT, queued_at=ago(500))  # done: not pending
    with app.app_context():
        assert 29 <= monitor.oldest_pending_seconds(pid) <= 31 + time.monotonic() - began


def test_a_claim_past_its_lease_is_stuck_and_a_live_claim_is_not(app, seed):
    pid = seed["partition_id"]
    [expired] = queued(app, pid, 1, status=SENDING, claim_owner="gone/1/0", lease_until=ago(5))
    queued(app, pid, 1, status=SENDING, claim_owner="live/1/0", lease_until=later(60))
    assert _stuck(app, pid) == {expired: monitor.REASON_LEASE}


def test_a_message_deferred_after_three_attempts_is_stuck_and_after_two_is_not(app, seed):
    pid = seed["partition_id"]
    [three] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(60))
    queued(app, pid, 1, status=DEFERRED, attempt_count=2, retry_at=later(60))
    assert _stuck(app, pid) == {three: monitor.REASON_FAILURES}


def test_a_message_waiting_longer_than_the_stuck_age_is_stuck(app, seed):
    pid = seed["partition_id"]
    [old_queued] = queued(app, pid, 1, queued_at=ago(STUCK_AGE + 5))
    [old_deferred] = queued(app, pid, 1, status=DEFERRED, attempt_count=1, queued_at=ago(STUCK_AGE + 5))
    queued(app, pid, 1, queued_at=ago(STUCK_AGE - 60))
    # Finished messages are not moving either, but they are not waiting: not stuck.
    queued(app, pid, 1, status=FAILED, queued_at=ago(STUCK_AGE * 10))
    queued(app, pid, 1, status=REMOVED, queued_at=ago(STUCK_AGE * 10))
    assert _stuck(app, pid) == {old_queued: monitor.REASON_WAITING, old_deferred: monitor.REASON_WAITING}


def test_the_stuck_age_is_instance_configuration(app, seed):
    pid = seed["partition_id"]
    [message] = queued(app, pid, 1, queued_at=ago(3))
    assert _stuck(app, pid) == {}
    app.config["MAILSENDER_STUCK_AGE_MINUTES"] = 10  # 2 s
    assert _stuck(app, pid) == {message: monitor.REASON_WAITING}


def test_stuck_and_pending_are_counted_per_partition(app, seed):
    from webapp.core.database import db
    from webapp.core.directory.departments import create_partition

    with app.app_context():
        other = create_partition("Other").id
        db.session.commit()
    queued(app, other, 2, status=DEFERRED, attempt_count=5)
    with app.app_context():
        assert monitor.pending_count(seed["partition_id"]) == 0
        assert monitor.stuck_count(seed["partition_id"]) == 0
        assert monitor.stuck_count(other) == 2


def test_the_alert_is_on_above_the_threshold_or_with_anything_stuck():
    assert monitor.is_alert(True, 11, 10, 0)
    assert not monitor.is_alert(True, 10, 10, 0)  # at the threshold: not above it
    assert monitor.is_alert(True, 0, 10, 1)
    assert not monitor.is_alert(False, 11, 10, 1)
