"""Claims: which rows are picked, in which order, never twice at once; leases; release."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text, update

from scheduler import claims, store
from tests.scheduler.conftest import queue_messages, wait_until
from webapp.core import clock
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.models import OutgoingMessage
from webapp.core.states import DEFERRED, FAILED, QUEUED, REMOVED, SENDING, SENT, TRAINING

pytestmark = pytest.mark.databases

LEASE = 120.0


def _set(app, message_id, **values):
    with app.app_context():
        db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == message_id).values(**values))
        db.session.commit()


def claim_batch(partition_id: int, owner: str, limit: int, *, priority_enabled: bool, lease_seconds: float):
    """A claim made here, as the bookkeeper makes it for a sender, and the read of what it claimed."""
    with db.engine.connect() as connection:
        ids = claims.claim_ids(connection, partition_id, owner, limit, priority_enabled=priority_enabled,
                               lease_seconds=lease_seconds)
    return claims.read_claimed(ids, owner, priority_enabled)


def _claim(app, partition_id, owner="n/1/0", limit=100, priority=False, lease=LEASE):
    with app.app_context():
        return [m.id for m in claim_batch(partition_id, owner, limit, priority_enabled=priority, lease_seconds=lease)]


def _database_now(app):
    with app.app_context():
        now = db.session.execute(select(clock.db_now())).scalar()
        db.session.rollback()
    if isinstance(now, str):  # SQLite answers text
        now = datetime.fromisoformat(now).replace(tzinfo=timezone.utc)
    return now


def _row(app, message_id):
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        db.session.expunge(message)
        return message


def test_a_claim_picks_exactly_the_due_messages(app, seed):
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 9)
    past, future = utcnow() - timedelta(minutes=5), utcnow() + timedelta(minutes=5)
    queued, deferred_due, deferred_later, leased, lease_ran_out, sent, failed, training, removed = ids
    _set(app, deferred_due, status=DEFERRED, retry_at=past)
    _set(app, deferred_later, status=DEFERRED, retry_at=future)
    _set(app, leased, status=SENDING, claim_owner="other/1/0", lease_until=future)
    _set(app, lease_ran_out, status=SENDING, claim_owner="other/1/0", lease_until=past)
    for message_id, state in ((sent, SENT), (failed, FAILED), (training, TRAINING), (removed, REMOVED)):
        _set(app, message_id, status=state)
    with app.app_context():
        other = create_partition("Other")
        db.session.commit()
        other_id = other.id
    queue_messages(app, other_id, 2)

    claimed = _claim(app, pid)

    assert sorted(claimed) == sorted([queued, deferred_due, lease_ran_out])
    for message_id in claimed:
        row = _row(app, message_id)
        assert row.status == SENDING and row.claim_owner == "n/1/0"
        assert row.lease_until > utcnow() + timedelta(seconds=LEASE - 30)
    assert _row(app, leased).claim_owner == "other/1/0"
    assert _claim(app, pid, owner="n/1/1") == []


def test_claim_order_is_queue_time_unless_priority_is_enabled(app, seed):
    pid = seed["partition_id"]
    low = queue_messages(app, pid, 2, priority=9)
    high = queue_messages(app, pid, 2, priority=1)
    middle = queue_messages(app, pid, 1, priority=5)

    assert _claim(app, pid, limit=5) == low + high + middle

    with app.app_context():
        store.release("n/1/0", low + high + middle)
        db.session.commit()
    assert _claim(app, pid, limit=5, priority=True) == high + middle + low


def test_a_batch_takes_at_most_its_size_and_the_next_claim_the_rest(app, seed):
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 7)
    first = _claim(app, pid, owner="a/1/0", limit=5)
    second = _claim(app, pid, owner="b/1/0", limit=5)
    assert first == ids[:5]
    assert second == ids[5:]


def test_concurrent_claims_never_take_a_row_twice(app, seed):
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 120)
    taken: dict[str, list[int]] = {}
    errors = []

    def claimer(owner):
        try:
            mine = taken.setdefault(owner, [])
            while True:
                got = _claim(app, pid, owner=owner, limit=7)
                if not got:
                    return
                mine.extend(got)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=claimer, args=(f"n/1/{slot}",)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    everything = [message_id for claimed in taken.values() for message_id in claimed]
    assert sorted(everything) == sorted(ids)  # each exactly once
    with app.app_context():
        owners = dict(db.session.execute(select(OutgoingMessage.id, OutgoingMessage.claim_owner)).all())
    for owner, claimed in taken.items():
        assert all(owners[message_id] == owner for message_id in claimed)


def test_a_claim_skips_rows_another_open_claim_holds(app, seed, db_url):
    """PostgreSQL: FOR UPDATE SKIP LOCKED lets a second claim pass rows locked by an open one.
    SQLite: the second claim waits for the first to commit, then takes only what is left."""
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 6)
    with app.app_context():
        holder = db.engine.connect()
        transaction = holder.begin()
        # The first claim's statement, left uncommitted: its rows stay locked.
        held = holder.execute(text(
            "UPDATE outgoing_message SET status='sending', claim_owner='holder/1/0', "
            "lease_until='2999-01-01 00:00:00.000000' "
            "WHERE id IN (SELECT id FROM outgoing_message WHERE status='queued' ORDER BY id LIMIT 3 "
            + ("FOR UPDATE SKIP LOCKED" if db.engine.dialect.name == "postgresql" else "") + ") RETURNING id"
        )).scalars().all()
    assert sorted(held) == ids[:3]
    result = {}
    second = threading.Thread(target=lambda: result.setdefault("ids", _claim(app, pid, owner="second/1/0")))
    second.start()
    # PostgreSQL: the claim returns without waiting for the lock, however long it takes to run.
    # SQLite: it is still waiting, whatever the machine's speed, while the lock is held.
    second.join(60 if "postgresql" in db_url else 0.5)
    if "postgresql" in db_url:
        assert not second.is_alive(), "the claim waited for locked rows instead of skipping them"
        assert result["ids"] == ids[3:]
        transaction.commit()
    else:
        assert second.is_alive(), "SQLite runs claims one after the other"
        transaction.commit()
        second.join(60)
        assert result["ids"] == ids[3:]
    holder.close()


def test_an_expired_lease_returns_the_message_to_the_queue(app, seed):
    pid = seed["partition_id"]
    (message_id,) = queue_messages(app, pid, 1)
    assert _claim(app, pid, owner="dead/1/0", lease=LEASE) == [message_id]
    assert _claim(app, pid, owner="live/1/0") == []
    # The lease runs out (set back on the database's clock rather than waited for).
    _set(app, message_id, lease_until=utcnow() - timedelta(seconds=1))
    assert _claim(app, pid, owner="live/1/0") == [message_id]
    assert _row(app, message_id).claim_owner == "live/1/0"


def test_extending_a_lease_keeps_the_claim(app, seed):
    pid = seed["partition_id"]
    (message_id,) = queue_messages(app, pid, 1)
    _claim(app, pid, owner="n/1/0", lease=0.3)
    first_end = _row(app, message_id).lease_until
    with app.app_context():
        assert store.extend_lease("n/1/0", [message_id], LEASE) == 1
        assert store.extend_lease("someone/1/0", [message_id], LEASE) == 0
        db.session.commit()
    # Past the first lease's end on the database's clock: only the extension holds the claim now.
    wait_until(lambda: _database_now(app) > first_end, what="the first lease's end")
    assert _claim(app, pid, owner="other/1/0") == []


def test_release_gives_claims_back_as_they_were(app, seed):
    pid = seed["partition_id"]
    fresh, retried = queue_messages(app, pid, 2)
    _set(app, retried, status=DEFERRED, retry_at=utcnow() - timedelta(seconds=1))
    _claim(app, pid, owner="node-x/1/0")
    with app.app_context():
        assert store.release("elsewhere/1/0", [fresh, retried]) == 0
        assert store.release(owner_prefix="node-x/") == 2
        db.session.commit()
    assert (_row(app, fresh).status, _row(app, fresh).claim_owner) == (QUEUED, None)
    assert (_row(app, retried).status, _row(app, retried).lease_until) == (DEFERRED, None)


def test_a_message_that_waited_out_its_undo_hold_goes_back_queued_when_released(app, seed):
    # Its retry_at was its not-before (the undo hold, send_at): passed once it is claimed.
    pid = seed["partition_id"]
    (held,) = queue_messages(app, pid, 1)
    _set(app, held, retry_at=utcnow() - timedelta(seconds=1))
    _claim(app, pid, owner="node-x/1/0")
    with app.app_context():
        assert store.release(owner_prefix="node-x/") == 1
        db.session.commit()
    assert (_row(app, held).status, _row(app, held).retry_at) == (QUEUED, None)


def test_the_database_clock_times_the_lease(app, seed):
    pid = seed["partition_id"]
    (message_id,) = queue_messages(app, pid, 1)
    # The lease ends 60 s after the database's time at the claim, which lies between these two.
    before = _database_now(app)
    _claim(app, pid, lease=60)
    after = _database_now(app)
    lease_until = _row(app, message_id).lease_until
    assert before + timedelta(seconds=60) <= lease_until <= after + timedelta(seconds=60)


def test_a_claim_larger_than_sqlites_parameter_limit_reads_every_message_with_its_recipients(app, seed):
    # The ids travel as one parameter: more than SQLite's 999 bound values in one statement.
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 1100, to=("a@example.test", "b@example.test"))
    with app.app_context():
        claimed = claim_batch(pid, "n/1/0", 1100, priority_enabled=False, lease_seconds=LEASE)
    assert [m.id for m in claimed] == ids
    assert all([r.address for r in m.recipients] == ["a@example.test", "b@example.test"] for m in claimed)
    assert all(m.data and m.data.startswith(b"From:") for m in claimed)


def test_a_claimed_message_without_a_lease_is_claimed_again_as_the_monitor_and_remove_take_it(app, seed):
    # One rule for "its sender is gone" (claims.lease_ran_out): a lease that ran out, or none.
    from scheduler.monitor import definitions

    pid = seed["partition_id"]
    [orphan] = queue_messages(app, pid, 1)
    _set(app, orphan, status=SENDING, claim_owner="gone/1/0", lease_until=None)
    with app.app_context():
        assert [m.id for m in definitions.stuck_messages(pid)] == [orphan]
    assert _claim(app, pid) == [orphan]
