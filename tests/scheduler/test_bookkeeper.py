"""The bookkeeping process: outcomes are committed there, and its death loses no message."""
from __future__ import annotations

import asyncio
import collections
import os
import signal
import threading
import time

import pytest

from scheduler.bookkeeper import Bookkeeper, BookkeepingError
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import OutgoingMessage


@pytest.fixture
def loop():
    """An event loop on a thread of its own, as the node runs one."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)


@pytest.fixture
def bookkeeper(app, loop):
    """A started bookkeeper on that loop, stopped afterwards."""
    started = Bookkeeper(app, loop, "test-node")
    started.start(timeout=30)
    yield started
    started.stop()


def _claims(app, ids):
    with app.app_context():
        return {m.id: (m.status, m.claim_owner) for m in
                db.session.query(OutgoingMessage).where(OutgoingMessage.id.in_(ids))}


def test_a_bookkeeper_that_dies_mid_drain_is_replaced_and_every_message_is_sent(app, seed, make_node):
    pid = seed["partition_id"]
    # Each DATA takes a little while, so that the kill lands in the middle of the drain.
    with SmtpServer(data_delay=0.01) as server:
        configure(app, pid, server, batch_size=20, sleep_minutes=0)
        queue_messages(app, pid, 120)
        node = make_node(MAILSENDER_SENDERS=2, MAILSENDER_LEASE_SECONDS=4.0)
        first = node.bookkeeper.child_pid
        start(app, pid)
        server.wait_for(30)
        os.kill(first, signal.SIGKILL)

        wait_until(lambda: statuses(app) == {"sent": 120}, timeout=120, what="every message sent")
        assert node.bookkeeper.child_pid not in (None, first)
        # An outcome lost with the process is sent again once its claim expires: at most one
        # message per connection, as after any crash.
        counts = collections.Counter(server.message_ids())
        assert set(counts) and len(counts) == 120
        assert sum(count - 1 for count in counts.values()) <= 2


def test_a_bookkeeper_that_cannot_start_says_so_at_once(app, tmp_path):
    # Its database cannot be opened: the child exits, and start() says so instead of waiting.
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/missing-folder/mailsender.sqlite"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        bookkeeper = Bookkeeper(app, loop, "test-node")
        started = time.monotonic()
        with pytest.raises(BookkeepingError, match=r"did not start \(it ended with exit code [1-9]"):
            bookkeeper.start(timeout=120)
        # Well before the timeout: the child's end is noticed, not waited out.
        assert time.monotonic() - started < 60
        assert bookkeeper.child_pid is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.mark.databases
def test_a_claim_made_by_the_bookkeeper_answers_its_ids_and_a_failed_one_its_error(app, seed, bookkeeper):
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 5)
    claimed = bookkeeper.claim("test-node/1/0", pid, 3, priority_enabled=False, lease_seconds=60)
    assert sorted(claimed) == ids[:3]
    assert _claims(app, ids) == {**{i: ("sending", "test-node/1/0") for i in ids[:3]},
                                 **{i: ("queued", None) for i in ids[3:]}}
    # A claim the child cannot make: its own error, and the child goes on.
    with pytest.raises(BookkeepingError, match="TypeError"):
        bookkeeper.claim("test-node/1/1", pid, "three", priority_enabled=False, lease_seconds=60)
    assert sorted(bookkeeper.claim("test-node/1/1", pid, 10, priority_enabled=False,
                                   lease_seconds=60)) == ids[3:]


def test_a_claim_given_up_on_is_never_made(app, seed, loop):
    # The child is not there yet, so the claim waits; the sender gives up on it, and the child
    # that then starts must not claim messages for nobody.
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 3)
    bookkeeper = Bookkeeper(app, loop, "test-node")
    with pytest.raises(BookkeepingError, match="did not claim"):
        bookkeeper.claim("test-node/1/0", pid, 10, priority_enabled=False, lease_seconds=60, timeout=0.3)
    bookkeeper.start(timeout=30)
    try:
        assert bookkeeper.claim("test-node/1/1", pid, 1, priority_enabled=False, lease_seconds=60) == [ids[0]]
        assert _claims(app, ids) == {ids[0]: ("sending", "test-node/1/1"), ids[1]: ("queued", None),
                                     ids[2]: ("queued", None)}
    finally:
        bookkeeper.stop()


def _accepted(message):
    from scheduler.outcomes import RecipientReply, Transaction

    return [Transaction("accepted", 250, "2.0.0 OK",
                        [RecipientReply(r.address, "accepted", 250, "2.0.0 OK") for r in message.to_send])]


def _claimed(app, bookkeeper, owner, pid, count):
    from scheduler import claims

    ids = bookkeeper.claim(owner, pid, count, priority_enabled=False, lease_seconds=60)
    with app.app_context():
        return claims.read_claimed(ids, owner, False)


def test_outcomes_are_answered_before_a_claim_handed_in_with_them(app, seed, bookkeeper):
    # Senders wait for outcomes inside DATA; a claim is waited for off the wire.
    pid = seed["partition_id"]
    queue_messages(app, pid, 3)
    (message,) = _claimed(app, bookkeeper, "test-node/1/0", pid, 1)

    async def claim_then_record():
        answered = []
        claim = bookkeeper.request_claim("test-node/1/1", pid, 1, priority_enabled=False, lease_seconds=60)
        record = bookkeeper.record("test-node/1/0", [(message, _accepted(message))])
        claim.add_done_callback(lambda _: answered.append("claim"))
        record.add_done_callback(lambda _: answered.append("record"))
        await asyncio.gather(claim, record)
        return answered

    assert asyncio.run_coroutine_threadsafe(claim_then_record(), bookkeeper.loop).result(30) == ["record", "claim"]


def test_an_outcome_whose_sender_stopped_waiting_is_written_all_the_same(app, seed, bookkeeper):
    pid = seed["partition_id"]
    queue_messages(app, pid, 1)
    (message,) = _claimed(app, bookkeeper, "test-node/1/0", pid, 1)

    async def record_and_stop_waiting():
        bookkeeper.record("test-node/1/0", [(message, _accepted(message))]).cancel()

    asyncio.run_coroutine_threadsafe(record_and_stop_waiting(), bookkeeper.loop).result(10)
    wait_until(lambda: _claims(app, [message.id]) == {message.id: ("sent", None)}, what="the outcome written")


@pytest.mark.sqlite_only("holds SQLite's write lock")
def test_a_claim_given_up_on_after_it_was_handed_over_goes_back_to_the_queue(app, seed, bookkeeper):
    # The claim waits for SQLite's write lock, held here, longer than the sender waits for it.
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 2)
    with app.app_context():
        holder = db.engine.connect()
        holder.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE: the write lock
        try:
            with pytest.raises(BookkeepingError, match="did not claim"):
                bookkeeper.claim("test-node/1/0", pid, 10, priority_enabled=False, lease_seconds=600,
                                 timeout=0.5)
        finally:
            holder.rollback()
            holder.close()
    # The child claims once the lock is free; its answer hands the messages straight back.
    wait_until(lambda: bookkeeper.idle, what="the claim answered and released")
    assert _claims(app, ids) == {i: ("queued", None) for i in ids}


def test_an_outcome_crosses_the_pipe_whole_and_settles_there_as_it_would_here():
    import pickle
    from datetime import datetime, timedelta, timezone

    from scheduler.bookkeeper import Group, JobKind, Outcome, Record, decode_group, encode_group
    from scheduler.outcomes import Backoff, Claimed, Recipient, RecipientReply, Transaction, settle

    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    backoff = Backoff(timedelta(minutes=1), timedelta(hours=1))

    def message():
        return Claimed(7, "support@acme.test", b"the bytes stay behind", 3, now + timedelta(days=4), 2,
                       [Recipient(70, "a@x.test", "to", "pending"), Recipient(71, "b@x.test", "cc", "deferred", 451, "Later")])

    transactions = [Transaction("deferred", 451, "Try later", [RecipientReply("a@x.test", "accepted", 250, "OK"),
                                                               RecipientReply("b@x.test", "deferred", 451, "Try later")])]
    frame = pickle.dumps(encode_group(Group(1, [Record("node/1/0", [Outcome.of(message(), transactions)])])))
    assert b"the bytes stay behind" not in frame
    (job,) = decode_group(pickle.loads(frame)).jobs
    assert job.kind is JobKind.RECORD and job.owner == "node/1/0"
    there, here = job.outcomes[0].settled(now, backoff), settle(message(), transactions, now, backoff)
    assert (there.status, there.retry_at, there.last_error) == (here.status, here.retry_at, here.last_error)
    assert there.changed == here.changed and there.transactions == here.transactions
