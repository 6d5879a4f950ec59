"""A sender: wakes on the node's scheduler, claims a batch, moves it over SMTP on the node's loop.

Threads and their work:
- an APScheduler pool thread runs `Sender.wake`: the claim (made by the bookkeeper's process;
  the thread reads the claimed messages, and re-renders them when the settings changed), then
  waits for the batch's coroutine;
- the node's asyncio loop runs `Sender.deliver` (SMTP), and hands outcomes, lease extensions
  and releases to the node's `Bookkeeper` (scheduler/bookkeeper.py), a process that writes them.
A sender waits for its message's outcome to be committed before it sends the next one's bytes, so
a crash costs at most one duplicate per open connection.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webapp.core.clock import utcnow
from webapp.core.database import READ_ONLY, checkpoint_wal, db
from webapp.core.settings.store import get_settings
from webapp.core.states import ATTEMPT_UNTRIED, RCPT_DEFERRED, RCPT_TRAINING

from . import claims
from .bookkeeper import BookkeepingError
from .outcomes import Claimed, RecipientReply, Transaction
from .smtp.pipeline import SmtpConnection
from .smtp.session import SmtpConfig

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("mailsender.engine")


def claim_owner(node_name: str, partition_id: int, slot: int) -> str:
    """The owner a sender's claims carry: its node, partition and slot."""
    return f"{node_name}/{partition_id}/{slot}"


def node_claims(node_name: str) -> str:
    """What every claim of a node's senders begins with (claim_owner)."""
    return f"{node_name}/"


class Sender:
    """One of the node's senders for one partition (a SenderInstance row)."""

    def __init__(self, node: "Node", partition_id: int, slot: int, instance_id: int):
        self.node = node
        self.partition_id = partition_id
        self.slot = slot
        self.instance_id = instance_id
        self.owner = claim_owner(node.name, partition_id, slot)
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
        self.undeliverable_since = None  # wall clock: since when the server cannot be reached
        self.busy = False
        self.last_progress = time.monotonic()  # when the sender's current step of a batch began
        self.pacing = False
        self._claim_error: str | None = None  # the latest claim's failure, until one succeeds

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
                sending = asyncio.run_coroutine_threadsafe(self.deliver(batch), self.node.loop)
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
                    ids = self.node.bookkeeper.claim(self.owner, self.partition_id, limit,
                                                     priority_enabled=priority_enabled,
                                                     lease_seconds=self.node.claim_lease_seconds)
                    messages = claims.read_claimed(ids, self.owner, priority_enabled)
                    checkpoint_wal(db.engine)
                    if messages:
                        self.node.note_claim()
                        full = len(messages) >= limit
                        claims.refresh_rendering(messages, settings)
                finally:
                    db.session.rollback()
                    db.session.remove()
        except Exception as error:  # the next wake tries again
            self._failed(error)
            self._claim_error = self.last_error
            return None
        self._claim_error = None
        if not messages:
            self._batch_ended()
            return None
        batch = _Batch(messages, config, full, sleep_seconds, {message.id: message for message in messages})
        # From the claim on, not from the start of its sending: a batch claimed ahead waits for
        # the one on the wire, which may take longer than a lease.
        batch.keeper = asyncio.run_coroutine_threadsafe(self._keep_leases(batch.remaining), self.node.loop)
        return batch

    def _finish(self, sending) -> None:
        """Waits for a batch on the loop to end."""
        try:
            unreachable = sending.result()
            # A claim made meanwhile (the next batch) may have failed: that stays the last error.
            self.last_error = unreachable or self._claim_error
            if unreachable is None:
                self.undeliverable_since = None
            elif self.undeliverable_since is None:
                self.undeliverable_since = utcnow()
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

    async def deliver(self, claimed: "_Batch") -> str | None:
        """Sends the batch in order; on Stop, finishes the message in flight and releases the rest.
        Answers why the server could not be reached, if it could not (the sender's last error).

        A message's outcome is committed (by the bookkeeper) while the next one's MAIL, RCPT and
        DATA go out, and before its bytes and end of data: at most one accepted message per
        connection is ever uncommitted.
        """
        bookkeeper = self.node.bookkeeper
        batch, config, remaining = claimed.messages, claimed.config, claimed.remaining
        limiter = self.node.rate_limiter(self.partition_id)
        token_source = self.node.token_source(self.partition_id)
        committing: asyncio.Future | None = None
        unreachable: str | None = None

        async def previous_committed() -> None:
            nonlocal committing
            if committing is not None:
                done, committing = committing, None
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
                                                      token_source, before_end_of_data=previous_committed)
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
                        await bookkeeper.record(self.owner, [(m, [_same_reason(m, reason)]) for m in rest])
                    for other in rest:
                        remaining.pop(other.id, None)
                    break
            await previous_committed()
        finally:
            claimed.keeper.cancel()
            if committing is not None:
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
                try:
                    await self.node.bookkeeper.extend(self.owner, list(remaining), self.node.claim_lease_seconds)
                except BookkeepingError as error:  # the bookkeeper is being replaced: next round
                    log.warning("sender %s: leases not extended: %s", self.owner, error)

    async def close(self) -> None:
        await self.connection.close()


@dataclass
class _Batch:
    messages: list[Claimed]
    config: SmtpConfig
    full: bool  # as many as the batch size: more may be waiting
    sleep_seconds: float
    remaining: dict[int, Claimed]  # claimed and not yet settled: whose leases are kept
    keeper: concurrent.futures.Future | None = None  # keeps those leases, from the claim on


def _same_reason(message: Claimed, reason: Transaction) -> Transaction:
    """The rest of a batch whose server could not be reached: they wait, saying why, untried."""
    text = f"not tried: the SMTP server could not be reached: {reason.detail}"
    return Transaction(ATTEMPT_UNTRIED, reason.code, text,
                       [RecipientReply(r.address, RCPT_DEFERRED,
                                       reason.code, text)
                        for r in message.to_send if r.status != RCPT_TRAINING])
