"""A sender: wakes on the node's scheduler, claims a batch, moves it over SMTP on the node's loop.

Threads and their work:
- an APScheduler pool thread runs `Sender.wake`: the claim (and a re-render when the settings
  changed), then waits for the batch's coroutine;
- the node's asyncio loop runs `Sender.deliver`: SMTP only, never the database;
- the node's `Bookkeeper` thread writes outcomes, lease extensions and releases, committing
  the outcomes of every sender that is waiting in one transaction.
A sender waits for its message's outcome to be committed before it starts the next one, so
a crash costs at most one duplicate per open connection.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import queue as threading_queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webapp.database import READ_ONLY
from webapp.extensions import db
from webapp.models import RCPT_DEFERRED, RCPT_TRAINING, utcnow
from webapp.settings import get_settings

from . import queue
from .queue import Claimed, RecipientReply, Transaction
from .transport import DEFERRED, SmtpConfig, SmtpConnection

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("mailsender.engine")


class Sender:
    """One of the node's senders for one partition (a SenderInstance row)."""

    def __init__(self, node: "Node", partition_id: int, slot: int, instance_id: int):
        self.node = node
        self.partition_id = partition_id
        self.slot = slot
        self.instance_id = instance_id
        self.owner = f"{node.name}/{partition_id}/{slot}"
        self.connection = SmtpConnection()
        # Set by the node from the database each tick.
        self.wanted = False
        self.wanted_at = None
        self.sleep_seconds = 60.0
        # A Start after the last batch: wake at once instead of waiting out the sleep.
        self.kick = False
        self.last_batch_end: float | None = None  # monotonic
        self.last_batch_end_at = None  # wall clock, for the SenderInstance row
        self.last_error: str | None = None
        self.busy = False

    @property
    def job_id(self) -> str:
        return f"sender:{self.partition_id}:{self.slot}"

    def should_run(self) -> bool:
        return self.wanted and self.node.active and not self.node.stopping

    def is_due(self, now: float) -> bool:
        """A saved sleep counts from the end of the last batch, so a change acts at the next tick."""
        if self.kick or self.last_batch_end is None:
            return True
        return now - self.last_batch_end >= self.sleep_seconds

    # --- the scheduler's thread ----------------------------------------------------------

    def wake(self) -> None:
        """The scheduled job: one batch when due; with no sleep, more while batches come back full."""
        if not self.should_run() or not self.is_due(time.monotonic()):
            return
        self.busy = True
        try:
            while self.should_run():
                claimed, limit, sleep_seconds = self._batch()
                if not (claimed and claimed >= limit and sleep_seconds == 0):
                    break
        finally:
            self.busy = False

    def _batch(self) -> tuple[int, int, float]:
        app = self.node.app
        self.kick = False
        batch: list[Claimed] = []
        limit, sleep_seconds = 0, self.sleep_seconds
        try:
            with app.app_context():
                try:
                    # Read without the write lock, and end that read before the claim takes it.
                    db.session.connection(execution_options=READ_ONLY)
                    settings = get_settings(self.partition_id)
                    limit = settings.batch_size
                    sleep_seconds = self.sleep_seconds = settings.sleep_minutes * self.node.minute_seconds
                    config = SmtpConfig.from_settings(settings, app.config)
                    priority_enabled = settings.priority_enabled
                    db.session.rollback()
                    batch = queue.claim_batch(self.partition_id, self.owner, limit,
                                              priority_enabled=priority_enabled,
                                              lease_seconds=self.node.claim_lease_seconds)
                    if batch:
                        self.node.note_claim()
                        queue.refresh_rendering(batch, settings)
                finally:
                    db.session.rollback()
                    db.session.remove()
            if batch:
                future = asyncio.run_coroutine_threadsafe(self.deliver(batch, config), self.node.loop)
                future.result()
            self.last_error = None
        except Exception as error:  # the next wake tries again; claims left behind expire
            log.exception("sender %s: batch failed", self.owner)
            self.last_error = f"{type(error).__name__}: {error}"
        finally:
            self.last_batch_end = time.monotonic()
            self.last_batch_end_at = utcnow()
        return len(batch), limit, sleep_seconds

    # --- the node's asyncio loop ---------------------------------------------------------

    async def deliver(self, batch: list[Claimed], config: SmtpConfig) -> None:
        """Sends the batch in order; on Stop, finishes the message in flight and releases the rest.

        A message's outcome is committed while the next one's MAIL and RCPT go out, and before
        its DATA: at most one accepted message per connection is ever uncommitted.
        """
        bookkeeper = self.node.bookkeeper
        remaining = {message.id: message for message in batch}
        keeper = asyncio.create_task(self._keep_leases(remaining))
        limiter = self.node.rate_limiter(self.partition_id)
        token_source = self.node.token_source(self.partition_id)
        committing: asyncio.Future | None = None

        async def previous_committed() -> None:
            nonlocal committing
            if committing is not None:
                done, committing = committing, None
                await done

        try:
            for index, message in enumerate(batch):
                if not self.should_run():
                    break
                if limiter is not None:
                    await limiter.wait()
                    if not self.should_run():
                        break
                addresses = [r.address for r in message.to_send if r.status != RCPT_TRAINING]
                if not addresses:
                    # Every recipient withheld in training mode: settled without a connection.
                    await previous_committed()
                    committing = asyncio.ensure_future(bookkeeper.record(self.owner, [(message, [])]))
                    del remaining[message.id]
                    continue
                delivery = await self.connection.send(config, message.envelope_from, addresses, message.data,
                                                      token_source, before_data=previous_committed)
                await previous_committed()
                committing = asyncio.ensure_future(bookkeeper.record(self.owner, [(message, delivery.transactions)]))
                del remaining[message.id]
                if delivery.unreachable:
                    # The server cannot be reached: the rest wait for their retry too, untried.
                    reason = delivery.transactions[0]
                    rest = batch[index + 1:]
                    await previous_committed()
                    if rest:
                        await bookkeeper.record(self.owner, [(m, [_same_reason(m, reason)]) for m in rest])
                    for other in rest:
                        remaining.pop(other.id, None)
                    break
            await previous_committed()
        finally:
            keeper.cancel()
            if committing is not None:
                await asyncio.gather(committing, return_exceptions=True)
            if remaining:
                await bookkeeper.release(self.owner, list(remaining))
            self.connection.close_when_idle(config.idle_seconds)

    async def _keep_leases(self, remaining: dict[int, Claimed]) -> None:
        every = max(0.5, self.node.claim_lease_seconds / 3)
        while True:
            await asyncio.sleep(every)
            if remaining:
                await self.node.bookkeeper.extend(self.owner, list(remaining), self.node.claim_lease_seconds)

    async def close(self) -> None:
        await self.connection.close()


def _same_reason(message: Claimed, reason: Transaction) -> Transaction:
    text = reason.detail
    return Transaction(DEFERRED, reason.code, text,
                       [RecipientReply(r.address, RCPT_DEFERRED,
                                       reason.code, text)
                        for r in message.to_send if r.status != RCPT_TRAINING])


class RateLimiter:
    """At most `per_minute` messages in any product minute, shared by a partition's senders here."""

    def __init__(self, per_minute: int, minute_seconds: float):
        self.per_minute = per_minute
        self.window = minute_seconds
        self.sent: collections.deque[float] = collections.deque()

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            while self.sent and now - self.sent[0] >= self.window:
                self.sent.popleft()
            if len(self.sent) < self.per_minute:
                self.sent.append(now)
                return
            await asyncio.sleep(self.window - (now - self.sent[0]))


# --- the bookkeeper --------------------------------------------------------------------------


@dataclass
class _Job:
    kind: str  # record, extend, release
    owner: str
    payload: object
    future: asyncio.Future


class Bookkeeper:
    """The node's database writer for the SMTP side, on the node's asyncio loop.

    Outcomes are group-committed: every outcome handed in while the loop was busy is written
    in one transaction (three statements) by one callback, and each sender's future resolves
    once its outcome is committed. Writing on the loop's own thread costs a short pause of the
    loop per group, far less than handing each outcome to another thread and back, which under
    the GIL's switch interval took milliseconds per message.
    """

    RETRIES = 3

    def __init__(self, app, loop: asyncio.AbstractEventLoop, node_label: str):
        self.app = app
        self.loop = loop
        self.node_label = node_label
        self.pending: list[_Job] = []
        self.flush_scheduled = False
        self.connection = None
        self.committed = 0
        self.last_commit: float | None = None

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        """Writes what is still pending, then closes the connection (from any thread)."""
        if self.loop.is_running():
            done = threading.Event()

            def close():
                self._flush()
                self._close()
                done.set()

            self.loop.call_soon_threadsafe(close)
            done.wait(timeout)
        else:
            self._close()

    def _close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    async def record(self, owner: str, outcomes: list[tuple[Claimed, list[Transaction]]]) -> None:
        await self._submit("record", owner, outcomes)

    async def extend(self, owner: str, message_ids: list[int], lease_seconds: float) -> None:
        await self._submit("extend", owner, (message_ids, lease_seconds))

    async def release(self, owner: str, message_ids: list[int]) -> None:
        await self._submit("release", owner, message_ids)

    def _submit(self, kind: str, owner: str, payload) -> asyncio.Future:
        future = self.loop.create_future()
        self.pending.append(_Job(kind, owner, payload, future))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            # After the callbacks already ready: outcomes arriving meanwhile join this group.
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        with self.app.app_context():
            if self.connection is None:
                # A connection of its own, off the ORM: these writes are the drain path's hottest.
                self.connection = db.engine.connect()
            self._write(jobs)

    def _write(self, jobs: list[_Job]) -> None:
        error = None
        try:
            # Settled once: the decision mutates the claimed recipients, so a retry reuses it.
            settled = self._settle(jobs)
        except Exception as caught:
            log.exception("settling outcomes failed")
            settled, error = {}, caught
        for attempt in range(self.RETRIES if error is None else 0):
            try:
                with self.connection.begin():
                    self._apply(jobs, settled)
                self.committed += sum(len(items) for items in settled.values())
                error = None
                break
            except Exception as caught:  # a locked or lost database: try again, then tell the senders
                error = caught
                log.warning("bookkeeping failed (attempt %d): %s", attempt + 1, caught)
                time.sleep(0.2 * (attempt + 1))
        self.last_commit = time.monotonic()
        for job in jobs:
            _resolve(job.future, error)

    def _settle(self, jobs: list[_Job]) -> dict[str, list]:
        now = utcnow()
        settled: dict[str, list] = {}
        for job in jobs:
            if job.kind == "record":
                for message, transactions in job.payload:
                    settled.setdefault(job.owner, []).append(queue.settle(message, transactions, now))
        return settled

    def _apply(self, jobs: list[_Job], settled: dict[str, list]) -> None:
        for owner, items in settled.items():
            queue.record_outcomes(items, owner, self.node_label, self.connection)
        for job in jobs:
            if job.kind == "extend":
                message_ids, lease_seconds = job.payload
                queue.extend_lease(job.owner, message_ids, lease_seconds, self.connection)
            elif job.kind == "release":
                queue.release(job.owner, job.payload, connection=self.connection)


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
