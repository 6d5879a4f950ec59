"""A sender: wakes on the node's scheduler, claims a batch, moves it over SMTP on the node's loop.

Threads and their work:
- an APScheduler pool thread runs `Sender.wake`: the claim (made by the bookkeeper's process;
  the thread reads the claimed messages, and re-renders them when the settings changed), then
  waits for the batch's coroutine;
- the node's asyncio loop runs `Sender.deliver` (SMTP), and hands outcomes, lease extensions
  and releases to the node's `Bookkeeper` (scheduler/bookkeeper.py), a process that writes them.
A sender waits for its message's outcome to be committed before it sends the next one's bytes, so
a crash costs at most one duplicate per open connection.

Fencing: a sender that was paused (SIGSTOP, a long GC pause, a VM migration) or cut off from the
database may find that its claims went to another sender meanwhile. So it sends a message only
while it is certain that the leases still hold: its node's lease on its name and the batch's
claims, each counted on this process's monotonic clock from when the database last confirmed it
(the claim, each extension that renewed it, each renewal of the name), less a safety margin
(LEASE_MARGIN). It checks before each transaction and again just before the end of data; one
it cannot confirm it gives back unsent. The outcome of a message sent just before a pause is
written only if its claim is still held (store.keep_held): the duplicate that costs is at most
one per open connection, as after a crash.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webapp.core import route_state
from webapp.core.clock import utcnow
from webapp.core.database import READ_ONLY, checkpoint_wal, db
from webapp.core.settings.store import get_settings
from webapp.core.states import (
    ANSWER_CONFIGURATION,
    ANSWER_LABELS,
    ANSWER_QUOTA,
    ANSWER_THROTTLED,
    ANSWER_UNCLEAR,
    ATTEMPT_DEFERRED,
    ATTEMPT_UNTRIED,
    RCPT_DEFERRED,
    RCPT_TRAINING,
    RCPT_UNCLEAR,
    UNCLEAR_HOLD,
)

from . import claims
from .bookkeeper import BookkeeperGone, BookkeepingError
from .outcomes import Backoff, Claimed, RecipientReply, Transaction
from .smtp.pipeline import Delivery, SmtpConnection
from .smtp.session import SmtpConfig
from .store import owner_context

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("mailsender.engine")

# The share of a lease not counted on: a lease confirmed at t is relied on until t + (1 - this) x
# lease. The margin covers the time between a check and the bytes it lets out, and a database
# clock running a little fast.
LEASE_MARGIN = 1 / 3
# How often an outcome, release or stray claim is handed to a bookkeeper that died with it, in all.
WRITE_TRIES = 3
ABANDONED = "abandoned: the node stopped, and its stop grace ran out while the SMTP server was answering"


def claim_owner(node_name: str, lease_token: str, partition_id: int, slot: int) -> str:
    """The owner a sender's claims carry: its node, that node's life (the lease token it holds its
    name under), partition and slot. A node that lost its name and took it again claims anew."""
    return f"{node_name}/{lease_token}/{partition_id}/{slot}"


def owner_partition(owner: str) -> int:
    """The partition of a claim owner (claim_owner's), read from the end: a node's name may hold a "/"."""
    return int(owner.rsplit("/", 2)[1])


def node_claims(node_name: str, lease_token: str | None = None) -> str:
    """What every claim of a node's senders begins with (claim_owner); of one life, with its token."""
    return f"{node_name}/" if lease_token is None else f"{node_name}/{lease_token}/"


def sure_for(lease_seconds: float) -> float:
    """How long after the database confirmed a lease of `lease_seconds` it is still relied on."""
    return lease_seconds * (1 - LEASE_MARGIN)


class NotSure(Exception):
    """A sender can no longer be certain that its claim on the message in hand is held."""


@dataclass
class RouteFault:
    """A batch ended for the route, not for its messages: pause it (a configuration fault), hold
    it (a quota), or sit this sender out (throttling, or turned away at connect)."""

    kind: str  # ANSWER_CONFIGURATION, ANSWER_QUOTA, ANSWER_THROTTLED
    reason: str
    hint_seconds: float | None = None
    turned_away: bool = False  # turned away at connect while another connection is open


class Sender:
    """One of the node's senders for one partition (a SenderInstance row)."""

    def __init__(self, node: "Node", partition_id: int, slot: int, instance_id: int):
        self.node = node
        self.partition_id = partition_id
        self.slot = slot
        self.instance_id = instance_id
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
        self._on_the_wire: _Batch | None = None  # the batch being delivered while the next is claimed
        self._sending: concurrent.futures.Future | None = None  # that batch's coroutine on the loop
        # Why the route sends nothing now (paused, held), as read at the last wake; for the status.
        self.route_stop: route_state.RouteStop | None = None
        self._route_fault: RouteFault | None = None  # the last batch's, for the thread to act on
        self.settings_version: int | None = None  # of the settings the last claim was made under
        self.sitting_out_until = 0.0  # monotonic: this sender claims nothing before (throttling)
        self._turned_away = 0  # turned away at connect in a row: each sits out twice as long

    @property
    def job_id(self) -> str:
        return f"sender:{self.partition_id}:{self.slot}"

    @property
    def owner(self) -> str:
        """The owner of the claims this sender makes now, under its node's current life."""
        return claim_owner(self.node.name, self.node.lease_token, self.partition_id, self.slot)

    def should_run(self) -> bool:
        return self.wanted and self.node.active and not self.node.stopping

    def is_due(self, now: float) -> bool:
        """A saved sleep counts from the end of the last batch, so a change acts at the next tick."""
        if now < self.sitting_out_until:
            return False
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
                self._on_the_wire = batch
                sending = self._sending = asyncio.run_coroutine_threadsafe(self.deliver(batch), self.node.loop)
                follows = batch.full and batch.sleep_seconds == 0 and self.should_run()
                following = self._claim() if follows else None
                self._finish(sending)
                self._on_the_wire = None
                self.last_progress = time.monotonic()
                if self._route_fault is not None:
                    # The route (or this sender) stops: the batch claimed ahead goes back unsent.
                    if following is not None:
                        self._give_back(following)
                    self._act_on_route_fault()
                    following = None
                batch = following
        finally:
            self._on_the_wire = None
            self.busy = False

    def stalled_for(self, now: float) -> float:
        """Seconds this sender has been in one step of a batch (0 when it is not in a batch)."""
        return now - self.last_progress if self.busy and not self.pacing else 0.0

    def _claim(self) -> "_Batch | None":
        """Claims a batch under the saved settings; None when there is nothing to send (or it failed)."""
        app = self.node.app
        self.kick = False
        owner, life = self.owner, self.node.lease_token
        try:
            with app.app_context():
                try:
                    # Read without the write lock, and end that read before the claim takes it.
                    db.session.connection(execution_options=READ_ONLY)
                    settings = get_settings(self.partition_id)
                    limit = settings.batch_size
                    sleep_seconds = self.sleep_seconds = settings.sleep_minutes * self.node.minute_seconds
                    self.route_stop = route_state.route_stop(self.partition_id, settings.version)
                    if self.route_stop is not None:
                        self._batch_ended()
                        return None
                    self.settings_version = settings.version
                    config = SmtpConfig.from_settings(settings, app.config)
                    priority_enabled = settings.priority_enabled
                    unclear_retry = None if settings.after_unclear == UNCLEAR_HOLD else \
                        settings.unclear_retry_minutes * self.node.minute_seconds
                    db.session.rollback()
                    # Before the claim is asked for: the lease it gets ends after this plus a lease.
                    asked = time.monotonic()
                    ids = self.node.bookkeeper.claim(owner, self.partition_id, limit,
                                                     priority_enabled=priority_enabled,
                                                     lease_seconds=self.node.claim_lease_seconds)
                    self.node.metrics.claimed(self.partition_id, time.monotonic() - asked)
                    messages = claims.read_claimed(ids, owner, priority_enabled)
                    for message in messages:
                        message.unclear_retry_seconds = unclear_retry
                    checkpoint_wal(db.engine)
                    if messages:
                        self.node.note_claim()
                        full = len(messages) >= limit
                        later = claims.refresh_rendering(messages, settings)
                        if later:  # to be rendered by the next claims, a slice each
                            asyncio.run_coroutine_threadsafe(_handed_again(
                                lambda: self.node.bookkeeper.release(owner, later)), self.node.loop).result()
                finally:
                    db.session.rollback()
                    db.session.remove()
        except Exception as error:  # the next wake tries again
            if isinstance(error, BookkeeperGone):
                # It may have claimed before it died: those claims would wait out their lease.
                asyncio.run_coroutine_threadsafe(self._release_strays(owner), self.node.loop)
            self._failed(error)
            self._claim_error = self.last_error
            return None
        self._claim_error = None
        if not messages:
            self._batch_ended()
            return None
        batch = _Batch(messages, config, full, sleep_seconds, {message.id: message for message in messages},
                       owner=owner, life=life, sure_until=asked + sure_for(self.node.claim_lease_seconds))
        # From the claim on, not from the start of its sending: a batch claimed ahead waits for
        # the one on the wire, which may take longer than a lease.
        batch.keeper = asyncio.run_coroutine_threadsafe(self._keep_leases(batch), self.node.loop)
        return batch

    def _finish(self, sending) -> None:
        """Waits for a batch on the loop to end."""
        try:
            try:
                unreachable = sending.result()
            finally:
                self._sending = None
            # A claim made meanwhile (the next batch) may have failed: that stays the last error.
            self.last_error = unreachable or self._claim_error
            if unreachable is None:
                self.undeliverable_since = None
            elif self.undeliverable_since is None:
                self.undeliverable_since = utcnow()
        except concurrent.futures.CancelledError:
            self.last_error = ABANDONED
        except Exception as error:  # claims left behind expire
            self._failed(error)
        self._batch_ended()

    def abandon(self) -> None:
        """Gives up the batch on the wire (a stop whose grace ran out): the command waited on ends
        at once, and the claims not settled go back to the queue, to be sent later."""
        sending = self._sending
        if sending is not None:
            sending.cancel()

    def _give_back(self, batch: "_Batch") -> None:
        """Releases a claimed batch that will not be delivered, unsent and untouched."""
        async def give_back() -> None:
            batch.keeper.cancel()
            if batch.remaining:
                await _handed_again(lambda: self.node.bookkeeper.release(batch.owner, list(batch.remaining)))
        try:
            asyncio.run_coroutine_threadsafe(give_back(), self.node.loop).result()
        except Exception as error:  # their leases run out, and they are claimed again then
            log.warning("sender %s: a batch not sent waits for its lease: %s", self.owner, error,
                        extra=owner_context(self.owner))

    def _act_on_route_fault(self) -> None:
        """Pauses or holds the route, or sits this sender out (throttled at connect), for the last
        batch's route fault."""
        fault, self._route_fault = self._route_fault, None
        minute = self.node.minute_seconds
        if fault.kind == ANSWER_THROTTLED:
            if fault.turned_away:
                # Too many connections: the route's concurrency drops by this sender, for a minute
                # doubling with each turn-away in a row (at most an hour).
                self._turned_away += 1
                wait = minute * min(60, 2 ** (self._turned_away - 1))
            else:
                wait = Backoff.configured(self.node.app.config).throttled_wait(fault.hint_seconds).total_seconds()
            self.sitting_out_until = time.monotonic() + wait
            self.last_error = f"{ANSWER_LABELS[ANSWER_THROTTLED]}: {fault.reason}; this sender waits"
            return
        app = self.node.app
        try:
            with app.app_context():
                try:
                    if fault.kind == ANSWER_CONFIGURATION:
                        route_state.pause(self.partition_id, self.settings_version, fault.reason)
                    else:
                        now = utcnow()
                        until = now + Backoff.configured(app.config).quota_wait(now, fault.hint_seconds)
                        route_state.hold(self.partition_id, until, fault.reason)
                    db.session.commit()
                    self.route_stop = route_state.route_stop(self.partition_id, self.settings_version)
                finally:
                    db.session.rollback()
                    db.session.remove()
        except Exception as error:  # the next batch meets the same fault, and tries again
            self._failed(error)
        self.last_error = f"{ANSWER_LABELS[fault.kind]}: {fault.reason}"

    def _failed(self, error: Exception) -> None:
        log.exception("sender %s: batch failed", self.owner, extra=owner_context(self.owner))
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
        batch, config, remaining, owner = claimed.messages, claimed.config, claimed.remaining, claimed.owner
        limiter = self.node.rate_limiter(self.partition_id)
        token_source = self.node.token_source(self.partition_id)
        committing: _Recording | None = None
        unreachable: str | None = None
        in_hand: Claimed | None = None
        took: float | None = None  # how long the last message's send took

        async def previous_committed() -> None:
            nonlocal committing
            if committing is not None:
                done, committing = committing, None
                await done.written()

        async def end_of_data() -> None:
            await previous_committed()
            # The last moment the message can still be held back: after the wait for the commit,
            # which lasts as long as the database is away.
            if not self._sure(claimed, time.monotonic()) or in_hand.id not in remaining:
                raise NotSure

        try:
            for index, message in enumerate(batch):
                self.last_progress = time.monotonic()
                if not self.should_run():
                    break
                if message.id not in remaining:
                    continue  # its claim was lost (see _extend): another sender has it
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
                    committing = _Recording(bookkeeper, owner, [(message, [])])
                    remaining.pop(message.id, None)
                    continue
                if took is not None and self.node.route_slowed(self.partition_id):
                    # The provider throttles the route: it goes at half its rate, each message
                    # followed by a pause as long as it took.
                    self.pacing = True
                    try:
                        await asyncio.sleep(took)
                    finally:
                        self.pacing = False
                if not await self._confirmed(claimed):
                    break  # the rest go back unsent, if they are still this sender's to give
                in_hand = message
                started = time.monotonic()
                try:
                    delivery = await self.connection.send(config, message.envelope_from, addresses, message.data,
                                                          token_source, before_end_of_data=end_of_data)
                except NotSure as refusal:  # the connection was dropped before the end of data
                    log.warning("sender %s: lease no longer certain; message %d and the rest of its batch "
                                "not sent", owner, message.id, extra={"message_id": message.id, **owner_context(owner)})
                    done = getattr(refusal, "done_transactions", [])
                    self.node.metrics.attempted(self.partition_id, done)
                    if done:
                        # A 452 split's first transaction went: its recipients are written as they
                        # are (while the claim is still held), so that a retry does not repeat them.
                        remaining.pop(message.id, None)
                        await previous_committed()
                        committing = _Recording(bookkeeper, owner, [(message, done)])
                    break
                except asyncio.CancelledError:
                    unanswered = self.connection.unanswered_end
                    if unanswered:
                        # Given up (a stop whose grace ran out) after the end of data: the server
                        # may have it, so it is unclear, not back in the queue to go again at once.
                        remaining.pop(message.id, None)
                        text = "unclear: the node stopped while the server had not answered the end of data"
                        unclear = Transaction(ATTEMPT_DEFERRED, None, text,
                                              [RecipientReply(a, RCPT_UNCLEAR, None, text) for a in unanswered],
                                              ANSWER_UNCLEAR)
                        self.node.metrics.attempted(self.partition_id, [unclear])
                        await previous_committed()
                        await _handed_again(lambda: bookkeeper.record(owner, [(message, [unclear])]))
                    raise
                took = time.monotonic() - started
                self.node.metrics.attempted(self.partition_id, delivery.transactions)
                fault = self._route_fault_of(delivery)
                if fault is not None and fault.turned_away:
                    # Another connection of the route is open: this message goes back untouched,
                    # with the rest, and the open connections take them.
                    self._route_fault = fault
                    break
                self._turned_away = 0 if not delivery.unreachable else self._turned_away
                await previous_committed()
                committing = _Recording(bookkeeper, owner, [(message, delivery.transactions)])
                remaining.pop(message.id, None)
                if fault is not None:
                    # The route's fault, not the messages': the rest go back untouched, unsent.
                    self._route_fault = fault
                    break
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
                await asyncio.gather(committing.written(), return_exceptions=True)
            if remaining:
                await _handed_again(lambda: bookkeeper.release(owner, list(remaining)))
            self.connection.close_when_idle(config.idle_seconds)
        return unreachable

    def _route_fault_of(self, delivery: Delivery) -> RouteFault | None:
        """The route's fault in a delivery, which ends the batch; None for the message's own.
        Throttling on an open connection slows the route instead, and the batch goes on."""
        kind = delivery.answer
        if kind not in (ANSWER_CONFIGURATION, ANSWER_QUOTA, ANSWER_THROTTLED):
            return None
        deciding = next(t for t in delivery.transactions if t.answer == kind)
        if kind == ANSWER_THROTTLED and not delivery.unreachable:
            wait = Backoff.configured(self.node.app.config).throttled_wait(deciding.hint_seconds).total_seconds()
            self.node.slow_route(self.partition_id, wait)
            return None
        shown_code = f"{deciding.code} " if deciding.code and str(deciding.code) not in deciding.detail else ""
        reason = f"{shown_code}{deciding.detail}".strip()
        if delivery.turned_away:
            # Another sender of the route has a connection, or is in a batch (opening one, maybe):
            # the batch is theirs to take. When none is, the refusal defers like any throttling.
            others_open = any(sender is not self and sender.partition_id == self.partition_id
                              and (sender.connection.is_open or sender.busy)
                              for sender in self.node.senders.values())
            if others_open:
                return RouteFault(ANSWER_THROTTLED, reason, deciding.hint_seconds, turned_away=True)
        return RouteFault(kind, reason, deciding.hint_seconds)

    # --- fencing ---------------------------------------------------------------------------

    def _sure(self, claimed: "_Batch", now: float) -> bool:
        """Whether the node's name and the batch's claims are certainly still held (no I/O)."""
        node = self.node
        return now < claimed.sure_until and now < node.name_sure_until and claimed.life == node.lease_token

    async def _confirmed(self, claimed: "_Batch") -> bool:
        """Sure of the batch's claims, asking the database again if their confirmation is too
        old (after a pause, or a slow bookkeeper). False: nothing of the batch may be sent."""
        if self._sure(claimed, time.monotonic()):
            return True
        node = self.node
        if claimed.life != node.lease_token or time.monotonic() >= node.name_sure_until:
            # The node renews its name on its own tick, or has lost it: nothing until then.
            return False
        await self._extend(claimed)
        return self._sure(claimed, time.monotonic())

    async def _extend(self, claimed: "_Batch") -> None:
        """Renews the batch's claims; those not renewed are lost and leave the batch, unsent."""
        remaining = claimed.remaining
        if not remaining:
            return
        asked, ids = time.monotonic(), list(remaining)
        try:
            held = set(await self.node.bookkeeper.extend(claimed.owner, ids, self.node.claim_lease_seconds))
        except BookkeepingError as error:  # the bookkeeper is being replaced: next round
            log.warning("sender %s: leases not extended: %s", claimed.owner, error, extra=owner_context(claimed.owner))
            return
        lost = [message_id for message_id in ids if message_id not in held and message_id in remaining]
        for message_id in lost:
            del remaining[message_id]
        if lost:
            log.warning("sender %s: %d claims lost to another sender, not sent: %s", claimed.owner, len(lost),
                        ", ".join(map(str, lost)), extra=owner_context(claimed.owner))
        if held:
            claimed.sure_until = max(claimed.sure_until, asked + sure_for(self.node.claim_lease_seconds))

    async def _keep_leases(self, claimed: "_Batch") -> None:
        # Every third of a lease: the confirmation is relied on for two thirds (LEASE_MARGIN),
        # which leaves a third for the extension's own round trip.
        every = max(0.5, self.node.claim_lease_seconds / 3)
        while True:
            await asyncio.sleep(every)
            await self._extend(claimed)

    async def _release_strays(self, owner: str) -> None:
        """Gives back the claims of `owner` that no batch of this sender holds: a claim that a
        bookkeeper made before it died, unanswered."""
        on_the_wire = self._on_the_wire
        keep = list(on_the_wire.remaining) if on_the_wire is not None and on_the_wire.owner == owner else []
        try:
            await _handed_again(lambda: self.node.bookkeeper.release_all(owner, keep))
        except BookkeepingError as error:
            log.warning("sender %s: claims of a lost answer wait for their lease: %s", owner, error,
                        extra=owner_context(owner))

    async def close(self) -> None:
        await self.connection.close()


@dataclass
class _Batch:
    messages: list[Claimed]
    config: SmtpConfig
    full: bool  # as many as the batch size: more may be waiting
    sleep_seconds: float
    remaining: dict[int, Claimed]  # claimed and not yet settled: whose leases are kept
    owner: str = ""  # the claims' owner
    life: str = ""  # the node's lease token when they were claimed
    sure_until: float = 0.0  # monotonic: until when the claims are certainly held (see Sender._sure)
    keeper: concurrent.futures.Future | None = None  # keeps those leases, from the claim on


class _Recording:
    """A message's outcome handed to the bookkeeper; handed again if the bookkeeper died with it
    (the outcome is written at most once: only while its claim is held)."""

    __slots__ = ("bookkeeper", "owner", "finished", "future")

    def __init__(self, bookkeeper, owner: str, finished: list):
        self.bookkeeper, self.owner, self.finished = bookkeeper, owner, finished
        self.future = bookkeeper.record(owner, finished)

    async def written(self) -> list[int]:
        future = self.future
        return await _handed_again(lambda: self.bookkeeper.record(self.owner, self.finished), future)


async def _handed_again(submit, first: asyncio.Future | None = None):
    """Awaits a bookkeeping job (`first`, else `submit()`), handing it to the replacement of a
    bookkeeper that died with it, WRITE_TRIES times in all."""
    future = first if first is not None else submit()
    for attempt in range(1, WRITE_TRIES + 1):
        try:
            return await future
        except BookkeeperGone:
            if attempt == WRITE_TRIES:
                raise
            future = submit()


def _same_reason(message: Claimed, reason: Transaction) -> Transaction:
    """The rest of a batch whose server could not be reached: they wait, saying why, untried."""
    text = f"not tried: the SMTP server could not be reached: {reason.detail}"
    return Transaction(ATTEMPT_UNTRIED, reason.code, text,
                       [RecipientReply(r.address, RCPT_DEFERRED,
                                       reason.code, text)
                        for r in message.to_send if r.status != RCPT_TRAINING])
