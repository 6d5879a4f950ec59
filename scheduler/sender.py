"""A sender: wakes on the node's scheduler, claims a batch, moves it over SMTP on the node's loop.

Threads and their work:
- an APScheduler pool thread runs `Sender.wake`: the claim (and a re-render when the settings
  changed), then waits for the batch's coroutine;
- the node's asyncio loop runs `Sender.deliver` (SMTP) and the `Bookkeeper`, which writes
  outcomes, lease extensions and releases, committing the outcomes of every sender that
  needs a commit in one transaction.
A sender waits for its message's outcome to be committed before its next DATA, so a crash
costs at most one duplicate per open connection.
"""
from __future__ import annotations

import asyncio
import logging
import queue as threading_queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webapp.database import READ_ONLY, SQLITE_AUTOCHECKPOINT_PAGES, SQLITE_BUSY_TIMEOUT_MS
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
        self.last_progress = time.monotonic()  # when the sender's current step of a batch began
        self.pacing = False

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
        """The scheduled job: one batch when due; with no sleep, more while batches come back full.

        Then the next batch is claimed while the current one is on the wire, so that the
        connection does not sit idle through a claim.
        """
        if not self.should_run() or not self.is_due(time.monotonic()):
            return
        self.busy = True
        self.last_progress = time.monotonic()
        try:
            batch = self._claim()
            while batch is not None:
                sending = asyncio.run_coroutine_threadsafe(self.deliver(batch.messages, batch.config),
                                                           self.node.loop)
                follows = batch.full and batch.sleep_seconds == 0 and self.should_run()
                following = self._claim() if follows else None
                self._finish(sending)
                self.last_progress = time.monotonic()
                batch = following
        finally:
            self.busy = False

    def stalled_for(self, now: float) -> float:
        """Seconds this sender has been in one step of a batch (0 when it is not in a batch)."""
        return now - self.last_progress if self.busy and not self.pacing else 0.0

    def _claim(self) -> "_Batch | None":
        """Claims a batch under the saved settings; None when there is nothing to send (or it failed)."""
        app = self.node.app
        self.kick = False
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
                    messages = queue.claim_batch(self.partition_id, self.owner, limit,
                                                 priority_enabled=priority_enabled,
                                                 lease_seconds=self.node.claim_lease_seconds)
                    if messages:
                        self.node.note_claim()
                        full = len(messages) >= limit
                        queue.refresh_rendering(messages, settings)
                finally:
                    db.session.rollback()
                    db.session.remove()
        except Exception as error:  # the next wake tries again
            self._failed(error)
            return None
        if not messages:
            self._batch_ended()
            return None
        return _Batch(messages, config, full, sleep_seconds)

    def _finish(self, sending) -> None:
        """Waits for a batch on the loop to end."""
        try:
            self.last_error = sending.result()
        except Exception as error:  # claims left behind expire
            self._failed(error)
        self._batch_ended()

    def _failed(self, error: Exception) -> None:
        log.exception("sender %s: batch failed", self.owner)
        self.last_error = f"{type(error).__name__}: {error}"
        self._batch_ended()

    def _batch_ended(self) -> None:
        self.last_batch_end = time.monotonic()
        self.last_batch_end_at = utcnow()

    # --- the node's asyncio loop ---------------------------------------------------------

    async def deliver(self, batch: list[Claimed], config: SmtpConfig) -> str | None:
        """Sends the batch in order; on Stop, finishes the message in flight and releases the rest.
        Answers why the server could not be reached, if it could not (the sender's last error).

        A message's outcome is committed while the next one's MAIL and RCPT go out, and before
        its DATA: at most one accepted message per connection is ever uncommitted.
        """
        bookkeeper = self.node.bookkeeper
        remaining = {message.id: message for message in batch}
        keeper = asyncio.create_task(self._keep_leases(remaining))
        limiter = self.node.rate_limiter(self.partition_id)
        token_source = self.node.token_source(self.partition_id)
        committing: asyncio.Future | None = None
        unreachable: str | None = None

        async def previous_committed() -> None:
            nonlocal committing
            if committing is not None:
                done, committing = committing, None
                bookkeeper.needed()
                await done

        try:
            for index, message in enumerate(batch):
                self.last_progress = time.monotonic()
                if not self.should_run():
                    break
                if limiter is not None:
                    self.pacing = True  # waiting for the rate limit on purpose: not a stall
                    try:
                        await limiter.wait()
                    finally:
                        self.pacing = False
                    self.last_progress = time.monotonic()
                    if not self.should_run():
                        break
                addresses = [r.address for r in message.to_send if r.status != RCPT_TRAINING]
                if not addresses:
                    # Every recipient withheld in training mode: settled without a connection.
                    await previous_committed()
                    committing = bookkeeper.record(self.owner, [(message, [])])
                    del remaining[message.id]
                    continue
                delivery = await self.connection.send(config, message.envelope_from, addresses, message.data,
                                                      token_source, before_data=previous_committed)
                await previous_committed()
                committing = bookkeeper.record(self.owner, [(message, delivery.transactions)])
                del remaining[message.id]
                if delivery.unreachable:
                    # The server cannot be reached: the rest wait for their retry too, untried.
                    reason = delivery.transactions[0]
                    unreachable = f"the SMTP server could not be reached: {reason.detail}"
                    rest = batch[index + 1:]
                    await previous_committed()
                    if rest:
                        recorded = bookkeeper.record(self.owner, [(m, [_same_reason(m, reason)]) for m in rest])
                        bookkeeper.needed()
                        await recorded
                    for other in rest:
                        remaining.pop(other.id, None)
                    break
            await previous_committed()
        finally:
            keeper.cancel()
            if committing is not None:
                bookkeeper.needed()
                await asyncio.gather(committing, return_exceptions=True)
            if remaining:
                await bookkeeper.release(self.owner, list(remaining))
            self.connection.close_when_idle(config.idle_seconds)
        return unreachable

    async def _keep_leases(self, remaining: dict[int, Claimed]) -> None:
        every = max(0.5, self.node.claim_lease_seconds / 3)
        while True:
            await asyncio.sleep(every)
            if remaining:
                await self.node.bookkeeper.extend(self.owner, list(remaining), self.node.claim_lease_seconds)

    async def close(self) -> None:
        await self.connection.close()


@dataclass
class _Batch:
    messages: list[Claimed]
    config: SmtpConfig
    full: bool  # as many as the batch size: more may be waiting
    sleep_seconds: float


def _same_reason(message: Claimed, reason: Transaction) -> Transaction:
    text = reason.detail
    return Transaction(DEFERRED, reason.code, text,
                       [RecipientReply(r.address, RCPT_DEFERRED,
                                       reason.code, text)
                        for r in message.to_send if r.status != RCPT_TRAINING])


# --- the bookkeeper --------------------------------------------------------------------------


@dataclass
class _Job:
    kind: str  # record, extend, release
    owner: str
    payload: object
    future: asyncio.Future
    settled: list | None = None  # a record's outcomes, once settled


class Bookkeeper:
    """The node's database writer for the SMTP side, on the node's asyncio loop.

    Outcomes are group-committed: every outcome handed in until some sender needs one of
    them committed (before its next DATA) is written in one transaction (three statements)
    by one callback, and each sender's future resolves once its outcome is committed.
    Waiting for the need, instead of flushing at once, lets the other connections' outcomes
    join the group while MAIL and RCPT are on the wire, so a commit serves several messages.
    Writing on the loop's own thread costs a short pause of the loop per group, far less
    than handing each outcome to another thread and back, which under the GIL's switch
    interval took milliseconds per message.
    """

    RETRIES = 3
    # An outcome nobody asks for is still committed this soon (seconds).
    LATEST_FLUSH_SECONDS = 0.05
    # How soon a group that found SQLite's write lock taken tries again (seconds).
    BUSY_RETRY_SECONDS = 0.001

    def __init__(self, app, loop: asyncio.AbstractEventLoop, node_label: str):
        self.app = app
        self.loop = loop
        self.node_label = node_label
        self.pending: list[_Job] = []
        self.flush_scheduled = False
        self.latest_flush: asyncio.TimerHandle | None = None
        self.connection = None
        self.busy_since: float | None = None  # monotonic: since when the write lock was refused
        self.committed = 0
        self.last_commit: float | None = None

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        """Writes what is still pending, then closes the connection (from any thread)."""
        if self.loop.is_running():
            done = threading.Event()

            def close():
                deadline = time.monotonic() + timeout
                self._flush()
                while self.pending and time.monotonic() < deadline:  # the write lock is busy
                    time.sleep(self.BUSY_RETRY_SECONDS)
                    self._flush()
                self._close()
                done.set()

            self.loop.call_soon_threadsafe(close)
            done.wait(timeout)
        else:
            self._close()

    # Each answers a future that resolves once the write is committed (futures, not coroutines:
    # one a message, and a task each would cost the loop more than the future).

    def record(self, owner: str, outcomes: list[tuple[Claimed, list[Transaction]]]) -> asyncio.Future:
        """Committed after `needed()`, or within LATEST_FLUSH_SECONDS."""
        return self._submit("record", owner, outcomes, at_once=False)

    def extend(self, owner: str, message_ids: list[int], lease_seconds: float) -> asyncio.Future:
        return self._submit("extend", owner, (message_ids, lease_seconds))

    def release(self, owner: str, message_ids: list[int]) -> asyncio.Future:
        return self._submit("release", owner, message_ids)

    def needed(self) -> None:
        """A sender waits for a commit: write the pending group once the ready callbacks have run."""
        if self.pending and not self.flush_scheduled:
            self.flush_scheduled = True
            # After the callbacks already ready: outcomes arriving meanwhile join this group.
            self.loop.call_soon(self._flush)

    def _submit(self, kind: str, owner: str, payload, at_once: bool = True) -> asyncio.Future:
        future = self.loop.create_future()
        self.pending.append(_Job(kind, owner, payload, future))
        if at_once:
            self.needed()
        elif self.latest_flush is None:
            self.latest_flush = self.loop.call_later(self.LATEST_FLUSH_SECONDS, self.needed)
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.latest_flush is not None:
            self.latest_flush.cancel()
            self.latest_flush = None
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        with self.app.app_context():
            if self.connection is None:
                self._open()
            if not self._write(jobs):
                # Another connection holds SQLite's write lock (a claim): try again shortly,
                # and let the loop carry on with SMTP meanwhile instead of sleeping in SQLite's
                # busy handler. Outcomes handed in meanwhile join the group.
                self.pending[:0] = jobs
                self.flush_scheduled = True
                self.loop.call_later(self.BUSY_RETRY_SECONDS, self._flush)

    def _open(self) -> None:
        # A connection of its own, off the ORM: these writes are the drain path's hottest.
        self.connection = db.engine.connect()
        if self.connection.dialect.name == "sqlite":
            cursor = self.connection.connection.driver_connection.cursor()
            # Busy: answered at once, and waited for on the loop (see _flush). No automatic
            # checkpoints in this connection's commits: the other connections' commits (claims,
            # the control tick) run them, off the loop.
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

    def _close(self) -> None:
        if self.connection is not None:
            if self.connection.dialect.name == "sqlite":
                # Back to the pool as every other connection is.
                cursor = self.connection.connection.driver_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
                cursor.close()
            self.connection.close()
            self.connection = None

    def _write(self, jobs: list[_Job]) -> bool:
        """Writes the group in one transaction and resolves its futures; False (nothing written,
        nothing resolved) while SQLite's write lock is held elsewhere, up to the busy timeout."""
        error = None
        try:
            settled = [item for job in jobs if job.kind == "record" for item in self._settled(job)]
        except Exception as caught:
            log.exception("settling outcomes failed")
            settled, error = [], caught
        for attempt in range(self.RETRIES if error is None else 0):
            try:
                if all(job.kind == "record" for job in jobs):
                    with queue.driver_transaction(self.connection) as writer:
                        queue.record_outcomes(settled, None, self.node_label, writer=writer)
                else:
                    with self.connection.begin():
                        self._apply(jobs, settled)
                self.committed += len(settled)
                self.busy_since = None
                error = None
                break
            except Exception as caught:  # a locked or lost database: try again, then tell the senders
                if _is_busy(caught):
                    now = time.monotonic()
                    self.busy_since = self.busy_since or now
                    if now - self.busy_since < SQLITE_BUSY_TIMEOUT_MS / 1000:
                        return False
                self.busy_since = None
                error = caught
                log.warning("bookkeeping failed (attempt %d): %s", attempt + 1, caught)
                time.sleep(0.2 * (attempt + 1))
        self.last_commit = time.monotonic()
        for job in jobs:
            _resolve(job.future, error)
        return True

    @staticmethod
    def _settled(job: _Job) -> list[queue.Settled]:
        """The job's outcomes, settled once: settling mutates the claimed recipients, so a write
        that has to be tried again (the write lock was busy) reuses the decision."""
        if job.settled is None:
            now = utcnow()
            job.settled = []
            for message, transactions in job.payload:
                item = queue.settle(message, transactions, now)
                item.owner = job.owner
                job.settled.append(item)
        return job.settled

    def _apply(self, jobs: list[_Job], settled: list[queue.Settled]) -> None:
        queue.record_outcomes(settled, None, self.node_label, self.connection)
        for job in jobs:
            if job.kind == "extend":
                message_ids, lease_seconds = job.payload
                queue.extend_lease(job.owner, message_ids, lease_seconds, self.connection)
            elif job.kind == "release":
                queue.release(job.owner, job.payload, connection=self.connection)


def _is_busy(error: BaseException) -> bool:
    """SQLite's "database is locked": the write lock is held by another connection."""
    return "database is locked" in str(error)


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
