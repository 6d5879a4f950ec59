"""The partition's rate limit holds across nodes: slots in the database, timed by its clock."""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from scheduler.rate import RateLimiter, take_send_slot
from tests.scheduler.conftest import configure, queue_messages, start, wait_until
from tests.scheduler.test_processes import NodeProcess, holding
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.models import DeliveryAttempt, SendSlot

pytestmark = pytest.mark.databases

# How much closer than one minute N+1 arrivals may come, as a share of the minute: the time
# between taking a slot and the server (or the test) seeing the message differs from message
# to message, and by more on a busy machine. A limiter that let them through at once is still
# far outside it.
TOLERANCE = 1 / 3


def slots(partition_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(SendSlot).where(SendSlot.partition_id == partition_id))


def age_slots(partition_id: int, seconds: float) -> None:
    """Moves the partition's slots `seconds` into the past, as if that long had gone by."""
    for slot in db.session.scalars(select(SendSlot).where(SendSlot.partition_id == partition_id)):
        slot.taken_at -= timedelta(seconds=seconds)
    db.session.commit()


def most_in_one_minute_is(arrivals: list[float], per_minute: int, minute: float) -> bool:
    """No `per_minute` + 1 arrivals fall within one minute (less the tolerance)."""
    times = sorted(arrivals)
    return all(later - earlier >= minute * (1 - TOLERANCE)
               for earlier, later in zip(times, times[per_minute:]))


def test_slots_are_taken_while_the_window_has_room(app, seed):
    pid = seed["partition_id"]
    # A window of ten minutes, and slots aged on the database's clock instead of waited for: the
    # steps between may take as long as a busy machine makes them, short of minutes.
    window = 600.0
    with app.app_context():
        other = create_partition("Other").id
        db.session.commit()

        assert take_send_slot(pid, 3, window) == 0.0
        age_slots(pid, 400)  # the first slot was taken 400 s ago: it leaves in 200 s
        assert [take_send_slot(pid, 3, window) for _ in range(2)] == [0.0, 0.0]
        wait = take_send_slot(pid, 3, window)
        assert 100 < wait <= 200  # until the first slot leaves
        assert take_send_slot(other, 3, window) == 0.0  # the other partition's slots are its own

        age_slots(pid, 201)  # the first slot has left the window, the other two have not
        assert take_send_slot(pid, 3, window) == 0.0
        assert take_send_slot(pid, 3, window) > 0

        age_slots(pid, window)
        assert take_send_slot(pid, 3, window) == 0.0
        assert slots(pid) == 1  # the ones out of the window are gone
        assert slots(other) == 1


def test_two_nodes_limiters_share_the_partitions_minute(app, seed):
    pid = seed["partition_id"]
    per_minute, minute = 3, 1.0
    # What two nodes each build for the partition, on one database.
    limiters = [RateLimiter(app, pid, per_minute, minute) for _ in range(2)]
    granted: list[float] = []

    async def send_one(limiter: RateLimiter) -> None:
        await limiter.wait()
        granted.append(time.monotonic())

    async def send_all() -> None:
        await asyncio.gather(*(send_one(limiter) for limiter in limiters * 4))

    asyncio.run(send_all())
    assert len(granted) == 8
    assert most_in_one_minute_is(granted, per_minute, minute), granted


def test_two_node_processes_send_at_most_the_rate_in_any_minute(app, seed, tmp_path, db_url):
    pid = seed["partition_id"]
    per_minute, minute, count = 3, 1.0, 9
    launched: list[NodeProcess] = []
    try:
        with SmtpServer() as server:
            # Small batches, so that both nodes claim some of the queue.
            configure(app, pid, server, batch_size=2, sleep_minutes=0)
            queue_messages(app, pid, count)
            for name in ("alpha", "beta"):
                process = NodeProcess(db_url, tmp_path, name)
                process.env.update(MAILSENDER_RATE_PER_MINUTE=str(per_minute), MAILSENDER_MINUTE_SECONDS=str(minute))
                launched.append(process.start())
            wait_until(lambda: holding(app, "alpha", "beta", senders=1), timeout=120, what="both nodes up")
            start(app, pid)
            arrived = server.wait_for(count, timeout=120)
    finally:
        for process in launched:
            process.end()
    output = "".join(process.output() for process in launched)
    offsets = [round(message.at - arrived[0].at, 3) for message in arrived]
    assert most_in_one_minute_is([message.at for message in arrived], per_minute, minute), f"{offsets}\n{output}"
    with app.app_context():
        nodes = set(db.session.scalars(select(DeliveryAttempt.node)).all())
    assert nodes == {"alpha", "beta"}, output
