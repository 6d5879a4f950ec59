"""The partition's rate limit (MAILSENDER_RATE_PER_MINUTE), shared by every node through the database.

Each message sent takes a slot: a send_slot row stamped with the database's clock, so that
nodes with skewed clocks agree. At most `per_minute` of a partition's slots lie within one
product minute. Taking a slot is one short write transaction, and the partition's takers on
every node run it one after the other: on PostgreSQL behind a lock on the partition's row,
on SQLite behind its one write lock (every write transaction begins IMMEDIATE there).
"""
from __future__ import annotations

import asyncio

from sqlalchemy import delete, func, insert, select, type_coerce

from webapp.core.clock import db_now
from webapp.core.database import db
from webapp.core.models import Partition, SendSlot, TZDateTime

# The shortest pause before asking again: an answered wait can round down to nothing.
MIN_WAIT_SECONDS = 0.005


def take_send_slot(partition_id: int, per_minute: int, window_seconds: float) -> float:
    """Takes a slot for one message: 0.0 when taken, else the seconds until the oldest slot
    leaves the window (the caller sleeps that long and asks again). Needs an app context."""
    with db.engine.begin() as connection:
        # Without the lock two nodes could both count per_minute - 1 and both take the last slot.
        # SQLAlchemy leaves FOR UPDATE out on SQLite, whose write lock is already taken.
        connection.execute(select(Partition.id).where(Partition.id == partition_id).with_for_update())
        connection.execute(delete(SendSlot).where(SendSlot.partition_id == partition_id,
                                                  SendSlot.taken_at <= db_now(-window_seconds)))
        # What the delete left are the slots inside the window.
        taken, oldest, now = connection.execute(
            select(func.count(SendSlot.id), func.min(SendSlot.taken_at), type_coerce(db_now(), TZDateTime))
            .where(SendSlot.partition_id == partition_id)
        ).one()
        if taken < per_minute:
            connection.execute(insert(SendSlot).values(partition_id=partition_id, taken_at=db_now()))
            return 0.0
    return max(MIN_WAIT_SECONDS, (oldest - now).total_seconds() + window_seconds)


class RateLimiter:
    """A node's handle on one partition's rate limit, awaited by that partition's senders here."""

    def __init__(self, app, partition_id: int, per_minute: int, window_seconds: float):
        self.app = app
        self.partition_id = partition_id
        self.per_minute = per_minute
        self.window_seconds = window_seconds
        # This node's senders wait their turn here instead of each asking the database
        # while the window is full.
        self._turn = asyncio.Lock()

    async def wait(self) -> None:
        """Returns once this sender may send one message (a slot is taken for it)."""
        loop = asyncio.get_running_loop()
        async with self._turn:
            while True:
                wait_seconds = await loop.run_in_executor(None, self._take)
                if wait_seconds <= 0:
                    return
                await asyncio.sleep(wait_seconds)

    def _take(self) -> float:
        with self.app.app_context():
            try:
                return take_send_slot(self.partition_id, self.per_minute, self.window_seconds)
            finally:
                db.session.remove()
