"""The monitor job on a real node, notifying a real aiosmtpd server (a minute is 0.2 s here).

A test that asserts that no notification came waits for rounds (or the job's looks) to pass
first, never for a stretch of time.
"""
from __future__ import annotations

import threading
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from scheduler import message_actions
from scheduler.monitor import rounds
from tests.monitor.conftest import later, notifications, queued, state
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from webapp.core.states import DEFERRED


@pytest.fixture
def app_config(app_config):
    # No message here may become stuck by age (60 minutes are 12 s) while a slow machine runs
    # the test: each is stuck, or not, by its attempts alone.
    return {**app_config, "MAILSENDER_STUCK_AGE_MINUTES": 100000}


class Looks:
    """Counts the monitor job's looks at a partition (run_round returning, round or not)."""

    def __init__(self):
        self.count = 0
        self._condition = threading.Condition()

    def note(self) -> None:
        with self._condition:
            self.count += 1
            self._condition.notify_all()

    def wait(self, count: int, timeout: float = 60.0) -> None:
        """Blocks until `count` more looks have ended (the first may have begun before the call)."""
        with self._condition:
            target = self.count + count
            if not self._condition.wait_for(lambda: self.count >= target, timeout):
                raise AssertionError(f"the monitor did not look {count} more times in {timeout} s")


@pytest.fixture
def looks(monkeypatch):
    counted = Looks()
    real_round = rounds.run_round

    def run_round(*args, **kwargs):
        try:
            return real_round(*args, **kwargs)
        finally:
            counted.note()

    monkeypatch.setattr(rounds, "run_round", run_round)
    return counted


def parsed(received):
    return message_from_bytes(received.data, policy=default_policy)


def rounds_pass(app, partition_id: int, count: int) -> None:
    """Waits until the monitor has run `count` more rounds for the partition (on any node)."""
    seen = {state(app, partition_id).last_run_at}

    def enough():
        seen.add(state(app, partition_id).last_run_at)
        return len(seen) > count

    wait_until(enough, what=f"{count} monitor rounds")


def remove(app, seed, message_id):
    with app.app_context():
        message_actions.remove("test", seed["partition_id"], message_id)


def test_crossing_the_threshold_notifies_once_per_crossing(app, seed, smtp_server, node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_sleep_minutes=1, monitor_pending_threshold=2)
    ids = queue_messages(app, pid, 3)  # the senders are stopped: the queue only grows

    [first] = smtp_server.wait_for(1)
    mail = parsed(first)
    assert first.rcpt_tos == ["admin@acme.test"]
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "3 messages pending" in mail["Subject"]
    rounds_pass(app, pid, 5)
    assert len(smtp_server.messages) == 1, "notified again while pending stayed above the threshold"

    remove(app, seed, ids[0])  # pending 2: back to the threshold, not above it
    wait_until(lambda: not state(app, pid).above_threshold, what="the fall noticed")
    rounds_pass(app, pid, 2)
    assert len(smtp_server.messages) == 1

    queue_messages(app, pid, 1)  # pending 3 again: a new crossing
    smtp_server.wait_for(2)
    rounds_pass(app, pid, 4)
    assert len(smtp_server.messages) == 2
    assert [n.kind for n in notifications(app)] == ["threshold", "threshold"]
    assert all(n.ok for n in notifications(app))


def test_while_above_the_threshold_the_notification_repeats_after_the_renotify_interval(
        app, seed, smtp_server, make_node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_sleep_minutes=1, monitor_pending_threshold=0)
    queue_messages(app, pid, 1)
    make_node(MAILSENDER_RENOTIFY_MINUTES=8)  # 1.6 s
    # The marks the monitor sets when it notifies, on the database's clock: the second comes a
    # whole interval after the first, whenever the test gets to look.
    marks = []

    def second_mark():
        mark = state(app, pid).threshold_notified_at
        if mark is not None and mark not in marks:
            marks.append(mark)
        return len(marks) >= 2

    wait_until(second_mark, what="the notification repeated")
    assert (marks[1] - marks[0]).total_seconds() >= 1.6
    smtp_server.wait_for(2)
    # On a busy machine a third may already be due by now; none comes sooner than the interval.
    sent = notifications(app, "threshold")
    assert len(sent) >= 2
    assert all((later_one.created_at - earlier.created_at).total_seconds() >= 1.6
               for earlier, later_one in zip(sent, sent[1:]))


def test_new_stuck_messages_are_notified_once_each(app, seed, smtp_server, node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_sleep_minutes=1)
    first = queued(app, pid, 2, status=DEFERRED, attempt_count=3, last_error="451 4.3.0 Mailbox busy")

    [arrived] = smtp_server.wait_for(1)
    mail = parsed(arrived)
    body = mail.get_content()
    assert "2 messages are stuck" in mail["Subject"] and mail["Auto-Submitted"] == "auto-generated"
    assert all(f"#{i} " in body for i in first) and "451 4.3.0 Mailbox busy" in body
    rounds_pass(app, pid, 4)
    assert len(smtp_server.messages) == 1, "a stuck message was reported twice"

    [later] = queued(app, pid, 1, status=DEFERRED, attempt_count=4)
    smtp_server.wait_for(2)
    body = parsed(smtp_server.messages[1]).get_content()
    assert f"#{later} " in body and not any(f"#{i} " in body for i in first)
    rounds_pass(app, pid, 3)
    assert len(smtp_server.messages) == 2
    assert state(app, pid).alert_active


def test_the_job_runs_while_the_senders_run_too(app, seed, smtp_server, node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_sleep_minutes=1, sleep_minutes=0)
    [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(3600))
    start(app, pid)
    queue_messages(app, pid, 2)
    smtp_server.wait_for(3)  # two sent by the senders, one notification
    wait_until(lambda: statuses(app).get("sent") == 2, what="the two sent")
    # The server has the notification before the monitor writes that it went out.
    wait_until(lambda: [n.ok for n in notifications(app, "stuck")] == [True], what="the notification written as sent")
    [notified] = notifications(app, "stuck")
    assert notified.ok and f"#{stuck} " in notified.body


def test_a_saved_sleep_applies_from_the_next_round(app, seed, smtp_server, node, looks):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_sleep_minutes=1440)
    wait_until(lambda: state(app, pid).last_run_at is not None, what="the first round")
    first = state(app, pid).last_run_at
    looks.wait(3)  # the job looked again: no round under a sleep of a day
    assert state(app, pid).last_run_at == first
    configure(app, pid, monitor_sleep_minutes=1)
    wait_until(lambda: state(app, pid).last_run_at != first, what="a round under the new sleep")
    assert state(app, pid).last_run_node == "test-node"


def test_a_disabled_monitor_runs_no_round_and_sends_nothing(app, seed, smtp_server, make_node, looks):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_enabled=False, monitor_sleep_minutes=1, monitor_pending_threshold=0)
    queued(app, pid, 1, status=DEFERRED, attempt_count=3)
    make_node()
    looks.wait(3)
    assert state(app, pid).last_run_at is None
    assert smtp_server.messages == [] and notifications(app) == []
    configure(app, pid, monitor_enabled=True)
    smtp_server.wait_for(2)  # above the threshold, and one stuck
    assert sorted(n.kind for n in notifications(app)) == ["stuck", "threshold"]
