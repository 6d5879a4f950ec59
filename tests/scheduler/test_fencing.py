"""Fencing: nothing is sent, or written, on a claim or a name that may have gone to someone else.

The real pauses and partitions are in tests/suites/test_pause_and_crash.py; here each rule on
its own, in this process, on both databases.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from scheduler.bookkeeper import Bookkeeper
from scheduler.monitor import definitions
from scheduler.outcomes import RecipientReply, Transaction
from scheduler.node import Node, process_gone, process_identity
from scheduler.sender import Sender, claim_owner, node_claims
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.scheduler.test_claims import claim_batch
from tests.smtp_servers import SmtpServer
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, MessageRecipient, OutgoingMessage
from webapp.core.models import Node as NodeRow
from webapp.core.states import ATTEMPT_ACCEPTED, QUEUED, RCPT_ACCEPTED, RCPT_PENDING, SENDING, SENT

pytestmark = pytest.mark.databases


@pytest.fixture
def bookkeeper(app):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = Bookkeeper(app, loop, "test-node")
    started.start(timeout=30)
    yield started
    started.stop()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _on_loop(bookkeeper, make):
    async def run():
        return await make()

    return asyncio.run_coroutine_threadsafe(run(), bookkeeper.loop).result(30)


def _set(app, ids, **values):
    with app.app_context():
        db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id.in_(ids)).values(**values))
        db.session.commit()


def _claimed(app, pid, owner, count):
    with app.app_context():
        return claim_batch(pid, owner, count, priority_enabled=False, lease_seconds=60)


def _accepted(message):
    return [Transaction(ATTEMPT_ACCEPTED, 250, "OK", [RecipientReply(r.address, RCPT_ACCEPTED, 250, "OK")
                                                      for r in message.to_send])]


def test_an_outcome_is_written_only_while_its_owner_holds_the_claim_under_a_running_lease(app, seed, bookkeeper):
    pid = seed["partition_id"]
    queue_messages(app, pid, 3)
    held, ran_out, taken = _claimed(app, pid, "n/t/1/0", 3)
    # One claim's lease ran out (its sender was paused); another sender took the third.
    _set(app, [ran_out.id], lease_until=utcnow() - timedelta(seconds=5))
    _set(app, [taken.id], claim_owner="other/t/1/0")

    lost = _on_loop(bookkeeper, lambda: bookkeeper.record(
        "n/t/1/0", [(message, _accepted(message)) for message in (held, ran_out, taken)]))

    assert sorted(lost) == sorted([ran_out.id, taken.id])
    assert bookkeeper.lost_races == 2
    with app.app_context():
        rows = {m.id: (m.status, m.claim_owner) for m in db.session.scalars(select(OutgoingMessage))}
        assert rows[held.id] == (SENT, None)
        assert rows[ran_out.id] == (SENDING, "n/t/1/0") and rows[taken.id] == (SENDING, "other/t/1/0")
        # Nothing of the lost races is written over what the new owner will write.
        for message_id in (ran_out.id, taken.id):
            assert set(db.session.scalars(select(MessageRecipient.status)
                                          .where(MessageRecipient.message_id == message_id))) == {RCPT_PENDING}
        attempts = db.session.scalars(select(DeliveryAttempt.message_id)).all()
        assert attempts == [held.id]


def test_an_extension_answers_which_claims_are_still_held(app, seed, bookkeeper):
    pid = seed["partition_id"]
    queue_messages(app, pid, 3)
    kept, stolen, expired = (m.id for m in _claimed(app, pid, "n/t/1/0", 3))
    _set(app, [stolen], claim_owner="other/t/1/0")
    # A lease that ran out while nobody took the message is still this owner's to renew.
    _set(app, [expired], lease_until=utcnow() - timedelta(seconds=5))

    held = _on_loop(bookkeeper, lambda: bookkeeper.extend("n/t/1/0", [kept, stolen, expired], 60))

    assert sorted(held) == sorted([kept, expired])


def test_a_batch_whose_claims_went_to_another_sender_sends_none_of_them(app, seed, make_node):
    pid = seed["partition_id"]
    with SmtpServer(data_delay=0.3) as server:
        configure(app, pid, server, batch_size=12, sleep_minutes=0)
        ids = queue_messages(app, pid, 12)
        make_node(MAILSENDER_LEASE_SECONDS=1.5)
        start(app, pid)
        server.wait_for(1, timeout=60)
        # Another sender takes what is still claimed (as if this one had been paused past its lease).
        with app.app_context():
            stolen = db.session.scalars(
                update(OutgoingMessage).where(OutgoingMessage.status == SENDING)
                .values(claim_owner="thief/t/1/0", lease_until=utcnow() + timedelta(minutes=10))
                .returning(OutgoingMessage.id)).all()
            db.session.commit()
        assert len(stolen) >= 8
        # The next extension tells the sender: it gives the batch up, and finds nothing else due.
        wait_until(lambda: statuses(app, ids).get(SENT, 0) == len(ids) - len(stolen), timeout=60,
                   what="the others sent")
        make_node.wakes.wait(2)
        arrived = set(server.message_ids())
    with app.app_context():
        stolen_ids = set(db.session.scalars(select(OutgoingMessage.message_id)
                                            .where(OutgoingMessage.id.in_(stolen))))
    # The theft broke a running lease, which no sender does: what the sender began before its
    # next extension told it (one a third of a lease) may still go, and nothing after. Without
    # the extension's answer, all of them went.
    assert len(arrived & stolen_ids) <= 3 < len(stolen_ids)


def test_a_node_whose_name_lease_ran_out_takes_it_again_as_a_new_life_and_gives_back_its_claims(
        app, seed, make_node):
    pid = seed["partition_id"]
    node = make_node(MAILSENDER_NODE_LEASE_SECONDS=3.0)
    wait_until(lambda: node.active, timeout=60, what="the node holds its name")
    old = node.lease_token
    ids = queue_messages(app, pid, 2)
    claimed = [m.id for m in _claimed(app, pid, claim_owner(node.name, old, pid, 0), 2)]
    assert claimed == ids
    # The database says the lease ran out: the node was paused, or cut off, for longer.
    with app.app_context():
        db.session.execute(update(NodeRow).where(NodeRow.name == node.name)
                           .values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()

    wait_until(lambda: node.lease_token != old and node.active, timeout=60, what="a new life")
    with app.app_context():
        row = db.session.scalars(select(NodeRow).where(NodeRow.name == node.name)).one()
        assert row.lease_owner == node.lease_token
    assert statuses(app, ids) == {QUEUED: 2}


def test_claims_of_a_node_whose_name_lease_ran_out_are_claimed_at_once_and_counted_stuck(app, seed):
    pid = seed["partition_id"]
    gone, alive = queue_messages(app, pid, 2)
    with app.app_context():
        now = utcnow()
        db.session.add_all([NodeRow(name="gone", lease_owner="t1", lease_until=now - timedelta(seconds=1)),
                            NodeRow(name="alive", lease_owner="t2", lease_until=now + timedelta(seconds=30))])
        db.session.commit()
    # Both claims' own leases have minutes to run.
    future = utcnow() + timedelta(minutes=2)
    _set(app, [gone], status=SENDING, claim_owner=claim_owner("gone", "t1", pid, 0), lease_until=future)
    _set(app, [alive], status=SENDING, claim_owner=claim_owner("alive", "t2", pid, 0), lease_until=future)

    with app.app_context():
        stuck = {m.id: m.reason for m in definitions.stuck_messages(pid)}
        assert stuck == {gone: definitions.REASON_NODE}
        assert definitions.REASON_TEXT[definitions.REASON_NODE] == "held by a node that stopped answering"
    assert [m.id for m in _claimed(app, pid, "n/t/1/0", 10)] == [gone]


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def _hold_name(app, name: str, *, host: str, pid: int, identity: str | None) -> None:
    with app.app_context():
        db.session.add(NodeRow(name=name, lease_owner="previous", lease_until=utcnow() + timedelta(seconds=60),
                               lease_host=host, lease_pid=pid, lease_process=identity))
        db.session.commit()


def test_a_restarted_node_takes_its_name_at_once_from_a_dead_process_of_this_host(app, seed, make_node):
    pid = _dead_pid()
    # What process_identity said of it while it ran: this boot and namespace, its start time.
    identity = process_identity(os.getpid()).rsplit("/", 1)[0] + "/1"
    _hold_name(app, "test-node", host=socket.gethostname(), pid=pid, identity=identity)
    started = time.monotonic()
    node = make_node()
    wait_until(lambda: node.active, timeout=20, what="the name taken over")
    assert time.monotonic() - started < 15  # the previous lease had 60 s to run


@pytest.mark.parametrize("holder", ["another host", "a live process"])
def test_a_node_waits_for_a_name_held_by_a_process_it_cannot_prove_dead(app, seed, make_node, holder, monkeypatch):
    tries = []
    real_take = Node._take_name

    def take(self):
        taken = real_take(self)
        tries.append(taken)
        return taken

    monkeypatch.setattr(Node, "_take_name", take)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if holder == "another host":
            _hold_name(app, "test-node", host="elsewhere.example", pid=_dead_pid(), identity=None)
        else:
            _hold_name(app, "test-node", host=socket.gethostname(), pid=sleeper.pid,
                       identity=process_identity(sleeper.pid))
        node = make_node(MAILSENDER_NODE_LEASE_SECONDS=3.0)
        wait_until(lambda: len(tries) >= 3, timeout=60, what="three tries at the name")
        assert not any(tries) and not node.active
        with app.app_context():
            assert db.session.scalar(select(NodeRow.lease_owner).where(NodeRow.name == "test-node")) == "previous"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_process_is_gone_when_its_id_is_free_or_taken_by_a_later_process():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = process_identity(sleeper.pid)
        assert identity is not None and not process_gone(sleeper.pid, identity)
        # The same id, started at another time: another process.
        assert process_gone(sleeper.pid, identity.rsplit("/", 1)[0] + "/1")
        # Of another boot or namespace: nothing can be told from here.
        assert not process_gone(_dead_pid(), "another-boot/pid:[1]/1")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert process_gone(sleeper.pid, identity)
    assert node_claims("a", "t") == "a/t/" and claim_owner("a", "t", 1, 0).startswith(node_claims("a"))


def test_a_lease_unsure_between_a_452_splits_transactions_sends_the_first_ones_recipients_no_second_copy(
        app, seed, make_node, monkeypatch):
    # The server takes two recipients a transaction: the first transaction goes, then the lease
    # can no longer be confirmed before the second's end of data. The first two recipients have
    # the message; only the third may get it on the retry.
    pid = seed["partition_id"]
    recipients = ("a@example.test", "b@example.test", "c@example.test")
    with SmtpServer(max_recipients=2) as server:
        sure, doubted = Sender._sure, []

        def unsure_once_after_the_first_copy(self, claimed, now):
            if server.messages and not doubted:
                doubted.append(now)
                return False
            return sure(self, claimed, now)

        monkeypatch.setattr(Sender, "_sure", unsure_once_after_the_first_copy)
        configure(app, pid, server, sleep_minutes=0)
        [message_id] = queue_messages(app, pid, 1, to=recipients)
        make_node()
        start(app, pid)
        wait_until(lambda: statuses(app, [message_id]) == {SENT: 1}, what="the message sent")
        arrived = server.wait_for(2)
    assert doubted, "the lease was never doubted"
    assert [sorted(m.rcpt_tos) for m in arrived] == [["a@example.test", "b@example.test"], ["c@example.test"]]
