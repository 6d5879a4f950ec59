"""The node's senders against real aiosmtpd servers: batches, sleep, Start/Stop, outcomes, retries."""
from __future__ import annotations

import threading
import time

from sqlalchemy import select

from scheduler.bookkeeper import Bookkeeper
from scheduler.node import Node
from scheduler.outcomes import Backoff
from scheduler.sender import Sender
from scheduler.status import sender_status
from tests.scheduler.conftest import configure, queue_messages, running, start, statuses, stop, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, MessageRecipient, OutgoingMessage, SenderInstance


def view(app, message_id) -> dict:
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        attempts = db.session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.message_id == message_id)
                                      .order_by(DeliveryAttempt.id)).all()
        recipients = db.session.scalars(select(MessageRecipient).where(MessageRecipient.message_id == message_id)
                                        .order_by(MessageRecipient.id)).all()
        return {
            "status": message.status,
            "message_id": message.message_id,
            "raw_copy": message.raw_copy,
            "rendered": message.rendered,
            "last_error": message.last_error,
            "attempts": [(a.outcome, a.code, [(r["address"], r["code"]) for r in a.recipients]) for a in attempts],
            "recipients": {r.address: (r.status, r.code) for r in recipients},
        }


def _attempt_times(app, message_id) -> list:
    with app.app_context():
        return list(db.session.scalars(select(DeliveryAttempt.at)
                                       .where(DeliveryAttempt.message_id == message_id)
                                       .order_by(DeliveryAttempt.id)))


def _after_the_first_retry_would_have_come(app, wakes) -> None:
    """Waits until a retry after the first backoff would be due, then for the sender to look again:
    what a test then finds not to have happened, did not."""
    due = time.monotonic() + Backoff.configured(app.config).wait(1).total_seconds()
    wait_until(lambda: time.monotonic() >= due, what="the first retry's time")
    wakes.wait()


def test_batch_size_10_with_a_sleep_of_1_minute_sends_10_per_wake(app, seed, smtp_server, make_node, monkeypatch):
    claimed = []  # (when, how many) of each claim that found messages
    real_claim = Bookkeeper.claim

    def counting_claim(self, *args, **kwargs):
        ids = real_claim(self, *args, **kwargs)
        if ids:
            claimed.append((time.monotonic(), len(ids)))
        return ids

    monkeypatch.setattr(Bookkeeper, "claim", counting_claim)
    minute = 1.5
    running(app, seed["partition_id"], smtp_server, make_node, 25, {"MAILSENDER_MINUTE_SECONDS": minute},
            batch_size=10, sleep_minutes=1)

    arrived = smtp_server.wait_for(25)
    assert [count for _, count in claimed] == [10, 10, 5]
    # The sleep counts from the end of a batch, the last arrival being before it: each next
    # batch's first arrival comes a whole minute after the batch before's last, at least.
    assert arrived[10].at - arrived[9].at >= minute and arrived[20].at - arrived[19].at >= minute


def _a_first_batch_of_five_then_a_long_sleep(app, pid, server) -> None:
    configure(app, pid, server, batch_size=5, sleep_minutes=5000)  # 1000 s here, far beyond any deadline
    queue_messages(app, pid, 10)
    start(app, pid)
    server.wait_for(5)


def test_a_saved_sleep_change_acts_without_a_restart(app, seed, smtp_server, node, wakes):
    pid = seed["partition_id"]
    _a_first_batch_of_five_then_a_long_sleep(app, pid, smtp_server)
    wakes.wait()  # the sender looked again, within its sleep
    assert len(smtp_server.messages) == 5

    configure(app, pid, sleep_minutes=0)
    smtp_server.wait_for(10)


def test_stop_then_start_sends_at_once(app, seed, smtp_server, node):
    pid = seed["partition_id"]
    _a_first_batch_of_five_then_a_long_sleep(app, pid, smtp_server)

    stop(app, pid)
    with app.app_context():
        wait_until(lambda: sender_status(pid)["running"] == 0 or db.session.rollback(), what="stopped")
    start(app, pid)
    smtp_server.wait_for(10)  # within a minute: not after the sleep of 1000 s


def test_status_shows_the_senders_of_this_node_running(app, seed, smtp_server, make_node):
    pid = seed["partition_id"]
    make_node(MAILSENDER_SENDERS=2)
    start(app, pid)

    def running():
        with app.app_context():
            status = sender_status(pid)
            db.session.rollback()
            return status if status["running"] == 2 else None

    status = wait_until(running, what="two running senders")
    assert status["light"] == "green" and status["nodes"][0]["name"] == "test-node"
    stop(app, pid)
    wait_until(lambda: not running(), what="senders stopped")


def test_priority_order_when_enabled(app, seed, smtp_server, node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, batch_size=100, sleep_minutes=0, priority_enabled=True)
    low = queue_messages(app, pid, 3, priority=9, subject="low")
    high = queue_messages(app, pid, 3, priority=1, subject="high")
    middle = queue_messages(app, pid, 3, priority=5, subject="middle")
    start(app, pid)
    arrived = smtp_server.wait_for(9)
    expected = [view(app, i)["message_id"] for i in high + middle + low]
    assert [m.message_id for m in arrived] == expected


def test_queue_order_when_priority_is_off(app, seed, smtp_server, node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, batch_size=100, sleep_minutes=0, priority_enabled=False)
    ids = queue_messages(app, pid, 3, priority=9) + queue_messages(app, pid, 3, priority=1)
    start(app, pid)
    arrived = smtp_server.wait_for(6)
    assert [m.message_id for m in arrived] == [view(app, i)["message_id"] for i in ids]


def test_451_three_times_then_250_delivers_once_after_four_attempts(app, seed, node, wakes):
    pid = seed["partition_id"]
    busy = "451 4.3.0 Try again later"
    with SmtpServer(rcpt_replies={"customer@example.test": [busy, busy, busy, "250 OK"]}) as server:
        configure(app, pid, server, sleep_minutes=0)
        (message_id,) = queue_messages(app, pid, 1)
        start(app, pid)
        (arrived,) = server.wait_for(1)
        wait_until(lambda: view(app, message_id)["status"] == "sent", what="sent")
        wakes.wait()
        assert len(server.messages) == 1
    message = view(app, message_id)
    assert arrived.message_id == message["message_id"]
    assert [a[:2] for a in message["attempts"]] == [("deferred", 451)] * 3 + [("accepted", 250)]
    assert message["raw_copy"] == message["rendered"]


def test_550_for_one_of_two_recipients_is_sent_and_that_one_failed(app, seed, node, wakes):
    pid = seed["partition_id"]
    with SmtpServer(rcpt_replies={"gone@example.test": ["550 5.1.1 No such user"]}) as server:
        configure(app, pid, server, sleep_minutes=0)
        (message_id,) = queue_messages(app, pid, 1, to=("ok@example.test", "gone@example.test"))
        start(app, pid)
        (arrived,) = server.wait_for(1)
        wait_until(lambda: view(app, message_id)["status"] == "sent", what="sent")
        _after_the_first_retry_would_have_come(app, wakes)
        assert server.rcpt_count("gone@example.test") == 1
    assert arrived.rcpt_tos == ["ok@example.test"]
    message = view(app, message_id)
    assert message["recipients"] == {"ok@example.test": ("accepted", 250), "gone@example.test": ("failed", 550)}
    assert len(message["attempts"]) == 1


def test_550_for_every_recipient_fails_after_one_attempt(app, seed, node, wakes):
    pid = seed["partition_id"]
    with SmtpServer(rcpt_replies={"gone@example.test": ["550 5.1.1 No such user"]}) as server:
        configure(app, pid, server, sleep_minutes=0)
        (message_id,) = queue_messages(app, pid, 1, to=("gone@example.test",))
        start(app, pid)
        wait_until(lambda: view(app, message_id)["status"] == "failed", what="failed")
        _after_the_first_retry_would_have_come(app, wakes)
        assert server.messages == [] and server.rcpt_count("gone@example.test") == 1
    message = view(app, message_id)
    assert len(message["attempts"]) == 1 and "No such user" in message["last_error"]


def test_the_log_recipient_never_decides_the_state(app, seed, node):
    pid = seed["partition_id"]
    with SmtpServer(rcpt_replies={"log@acme.test": ["550 5.1.1 No such user"]}) as server:
        configure(app, pid, server, sleep_minutes=0, log_email_address="log@acme.test")
        (message_id,) = queue_messages(app, pid, 1)
        start(app, pid)
        server.wait_for(1)
        wait_until(lambda: view(app, message_id)["status"] == "sent", what="sent")
    assert view(app, message_id)["recipients"]["log@acme.test"] == ("failed", 550)


def test_a_server_that_is_down_then_up_gets_everything(app, seed, node, wakes):
    pid = seed["partition_id"]
    port = SmtpServer.free_port()
    server = SmtpServer(port=port)
    configure(app, pid, server, sleep_minutes=0)
    ids = queue_messages(app, pid, 3)
    start(app, pid)
    wait_until(lambda: statuses(app) == {"deferred": 3}, what="deferred while the server is down")
    # Down, it is tried with growing waits, not in a loop: whatever tries there were, each came
    # a backoff after the one before (half of it: the attempt's time is written a little after
    # its retry time was set), by the attempts' own times, whatever the machine's speed.
    _after_the_first_retry_would_have_come(app, wakes)
    wakes.wait(4)
    backoff = Backoff.configured(app.config)
    for message_id in ids:
        tried = _attempt_times(app, message_id)
        for number, (earlier, later) in enumerate(zip(tried, tried[1:]), start=1):
            assert later - earlier >= backoff.wait(number) / 2, (number, tried)
    with server:
        server.wait_for(3)
        wait_until(lambda: statuses(app) == {"sent": 3}, what="sent once the server is back")
    assert len(set(server.message_ids())) == 3


def test_a_452_splits_the_recipients_and_the_message_is_sent(app, seed, node):
    pid = seed["partition_id"]
    recipients = tuple(f"r{n}@example.test" for n in range(5))
    with SmtpServer(max_recipients=2) as server:
        configure(app, pid, server, sleep_minutes=0)
        (message_id,) = queue_messages(app, pid, 1, to=recipients)
        start(app, pid)
        arrived = server.wait_for(3)
        wait_until(lambda: view(app, message_id)["status"] == "sent", what="sent")
    assert sorted(a for m in arrived for a in m.rcpt_tos) == sorted(recipients)
    assert len(view(app, message_id)["attempts"]) == 3


def test_a_message_above_the_servers_size_fails_with_the_reason(app, seed, node):
    pid = seed["partition_id"]
    with SmtpServer(size_limit=200) as server:  # the message is about 290 bytes
        configure(app, pid, server, sleep_minutes=0)
        (message_id,) = queue_messages(app, pid, 1)
        start(app, pid)
        wait_until(lambda: view(app, message_id)["status"] == "failed", what="failed")
        assert server.messages == []
    assert "SIZE limit of 200" in view(app, message_id)["last_error"]


def test_two_senders_on_one_queue_never_send_a_message_twice(app, seed, smtp_server, make_node, wakes):
    running(app, seed["partition_id"], smtp_server, make_node, 120, {"MAILSENDER_SENDERS": 2}, batch_size=7,
            sleep_minutes=0)
    arrived = smtp_server.wait_for(120)
    wait_until(lambda: statuses(app) == {"sent": 120}, what="all sent")
    wakes.wait()  # both senders looked again: nothing was still on its way
    ids = smtp_server.message_ids()
    assert len(ids) == 120 and len(set(ids)) == 120
    assert len({m.peer for m in arrived}) == 2  # both senders worked, each on its own connection


def test_a_second_node_with_the_same_name_does_not_multiply_senders(app, seed, make_node, monkeypatch):
    asked = []  # the nodes that have asked for the lease on their name, once per time
    real_hold = Node._hold_lease
    monkeypatch.setattr(Node, "_hold_lease", lambda self: (real_hold(self), asked.append(self))[0])
    first = make_node()
    wait_until(lambda: first.active, what="the first node holds its name")
    twin = make_node()
    wait_until(lambda: twin in asked, what="the twin asking for the name")
    assert not twin.active
    with app.app_context():
        assert db.session.query(SenderInstance).count() == 1


def test_a_settings_change_re_renders_before_sending(app, seed, smtp_server, node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, sleep_minutes=0)
    (message_id,) = queue_messages(app, pid, 1)
    configure(app, pid, smtp_server)  # a new version: the stored bytes are stale
    start(app, pid)
    smtp_server.wait_for(1)
    wait_until(lambda: view(app, message_id)["status"] == "sent", what="sent")
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        from webapp.core.settings.store import get_settings

        assert message.rendered_version == get_settings(pid).version


def test_the_rate_limit_spreads_messages_over_minutes(app, seed, smtp_server, make_node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, batch_size=100, sleep_minutes=0)
    queue_messages(app, pid, 9)
    make_node(MAILSENDER_RATE_PER_MINUTE=4, MAILSENDER_MINUTE_SECONDS=0.5)
    start(app, pid)
    arrived = smtp_server.wait_for(9)
    assert arrived[-1].at - arrived[0].at >= 0.9  # 4, then 4 a minute later, then 1 after another


def test_stop_finishes_the_message_in_flight_and_releases_the_rest(app, seed, make_node):
    pid = seed["partition_id"]
    with SmtpServer(data_delay=0.3) as server:
        configure(app, pid, server, batch_size=50, sleep_minutes=0)
        queue_messages(app, pid, 20)
        running = make_node()
        start(app, pid)
        server.wait_for(2)
        running.stop(timeout=10)
        arrived = len(server.messages)
    counts = statuses(app)
    assert counts.get("sending", 0) == 0
    assert counts.get("sent", 0) == arrived and counts.get("queued", 0) == 20 - arrived


def test_a_batch_claimed_ahead_keeps_its_leases_while_a_slow_batch_is_on_the_wire(app, seed, make_node, wakes):
    # Each batch takes about 5 s on the wire against leases of 2 s: a batch claimed ahead whose
    # leases were not kept from its claim on would be claimed again by another sender, and sent
    # twice. The lease is kept every 2/3 s: a busy machine would have to hold the keeper back
    # for more than a second to cost one.
    pid = seed["partition_id"]
    with SmtpServer(data_delay=1.0) as server:
        configure(app, pid, server, batch_size=5, sleep_minutes=0)
        queue_messages(app, pid, 30)
        make_node(MAILSENDER_SENDERS=3, MAILSENDER_LEASE_SECONDS=2.0)
        start(app, pid)
        server.wait_for(30)
        wait_until(lambda: statuses(app) == {"sent": 30}, what="all sent")
        wakes.wait()  # every sender looked again: nothing was still on its way
        ids = server.message_ids()
    assert len(ids) == 30 and len(set(ids)) == 30


def test_a_failed_claim_of_the_next_batch_stays_the_senders_last_error(app, seed, smtp_server, node, monkeypatch):
    # The next batch is claimed while one is on the wire; the end of that batch must not wipe
    # out the claim's failure.
    real_claim, calls = Bookkeeper.claim, []

    def claim_failing_the_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the claim failed")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(Bookkeeper, "claim", claim_failing_the_second_time)
    # What the sender says once each batch has ended (the next wake may clear it soon after).
    real_finish, said = Sender._finish, []
    monkeypatch.setattr(Sender, "_finish", lambda self, sending: (real_finish(self, sending),
                                                                   said.append(self.last_error)))
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, batch_size=2, sleep_minutes=0)
    queue_messages(app, pid, 6)
    start(app, pid)
    smtp_server.wait_for(6)  # a later wake claims again
    assert said[0] == "RuntimeError: the claim failed"


def test_stop_waits_for_a_running_job_that_adds_a_job(app, seed, make_node):
    # The monitor adds a job when it meets a new partition; a Stop at that moment must not hang.
    running = make_node()
    began = threading.Event()

    def adds_a_job():
        began.set()
        wait_until(lambda: running.stopping, what="the Stop to begin")
        running.add_job(lambda: None, "interval", seconds=60, id="added-late")

    # An interval job, as the monitor's is; it runs at once.
    running.add_job(adds_a_job, "interval", seconds=60, next_run_time=utcnow(), id="adds-a-job")
    assert began.wait(10)
    stopping = threading.Thread(target=running.stop, kwargs={"timeout": 10}, daemon=True)
    stopping.start()
    stopping.join(20)
    assert not stopping.is_alive(), "Stop hung"
