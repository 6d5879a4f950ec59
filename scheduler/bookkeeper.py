"""The node's database writer for the SMTP side: a child process, fed from the node's loop.

The senders hand it outcomes (and lease extensions and releases) and await a future each; the
child writes what it is handed in one transaction per group and answers once committed, and
the future resolves on the loop. One group is in the child at a time: whatever the senders
hand in meanwhile is the next group (group commit), so a commit serves every sender that
finished a message while the previous one was written.

The senders' claims go through the child too, each in a transaction of its own after the
group's: in a thread of the node, a claim held SQLite's write lock while that thread waited for
the GIL (which the SMTP loop holds), and the child's next commit slept in SQLite's busy handler
behind it while every sender waited for that commit. The sender's thread then reads what it
claimed, without the write lock.

Why a process: the loop spends its whole core on SMTP, and the database writes cost about
as much again per message. In the loop's own thread they stopped the SMTP work while they
ran; in another thread of this process they fought the loop for the GIL at every row. In a
process of its own they run on the other core, and the loop only pickles a few objects.

The child reads frames from its stdin and answers on its stdout: a 4-byte length, then a
pickle. It ends when its stdin closes: when the node stops, or dies. A frame it has read is
committed before it goes, so a killed node loses no outcome the child had received.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from operator import attrgetter
from typing import ClassVar, NamedTuple, Union

from flask import Flask

from webapp.core.clock import utcnow
from webapp.core.database import configure_engine, db
from webapp.core.logs import configure_logging
from webapp.core.states import RCPT_ACCEPTED, SENT

from . import claims, outcomes, store
from .outcomes import Backoff, Claimed, Recipient, RecipientReply, Transaction

log = logging.getLogger("mailsender.engine")
# What became of each message, once it is committed (sent, deferred, failed, held, training).
delivery_log = logging.getLogger("mailsender.delivery")

_LENGTH = struct.Struct("!I")
# A child that dies is replaced after this pause, so that one that cannot run is not respawned hot.
RESPAWN_SECONDS = 1.0
# The sequence number of the child's first answer: set up, connected, ready to write.
READY = 0
# How long a sender's thread waits for its claim before it gives up until its next wake: longer
# than SQLite's busy timeout, which a claim may wait out for the write lock.
CLAIM_WAIT_SECONDS = 60.0
# Plain values of the app's configuration, enough for the child to build the same app.
_PLAIN = (str, int, float, bool, type(None))


class BookkeepingError(Exception):
    """The child could not write a group (after retries), or is gone."""


class BookkeeperGone(BookkeepingError):
    """The child ended before it answered: what it was handed may or may not be committed. Its
    replacement takes what is handed in from now on."""


# --- what travels the pipe ------------------------------------------------------------------
# Typed messages in the code on both sides. On the wire each is the tuple of its fields' values,
# in the order its class declares them (encode_group, decode_group, encode_answer, decode_answer), so that a field added cannot
# shift another: pickling the dataclasses themselves cost the loop three times as much a message.


class JobKind(enum.Enum):
    RECORD = "record"  # outcomes to settle and write
    EXTEND = "extend"  # leases to extend
    RELEASE = "release"  # claims to give back
    CLAIM = "claim"  # a batch to claim


_RECIPIENT_ROW = attrgetter(*(f.name for f in fields(Recipient)))
_REPLY_ROW = attrgetter(*(f.name for f in fields(RecipientReply)))


class Outcome(NamedTuple):
    """What the child needs of a message a sender finished: the message without its bytes (a
    tenth of the size to pickle), and its transactions. Its own wire form, being a tuple."""

    message_id: int
    # A POSIX timestamp: pickling an aware datetime took five of the six µs an outcome cost.
    expires_at: float | None
    attempt_count: int
    recipients: list[tuple]
    transactions: list[tuple]
    unclear_count: int = 0
    unclear_retry_seconds: float | None = None

    @classmethod
    def of(cls, message: Claimed, transactions: list[Transaction]) -> "Outcome":
        expires_at = message.expires_at.timestamp() if message.expires_at is not None else None
        return cls(message.id, expires_at, message.attempt_count,
                   [_RECIPIENT_ROW(r) for r in message.recipients],
                   [(t.outcome, t.code, t.detail, [_REPLY_ROW(reply) for reply in t.recipients], t.answer,
                     t.hint_seconds, t.queue_id, t.timings)
                    for t in transactions], message.unclear_count, message.unclear_retry_seconds)

    def settled(self, now, backoff: Backoff) -> outcomes.Settled:
        expires_at = datetime.fromtimestamp(self.expires_at, timezone.utc) if self.expires_at is not None else None
        message = Claimed(id=self.message_id, envelope_from="", data=None, rendered_version=None,
                          expires_at=expires_at, attempt_count=self.attempt_count,
                          recipients=[Recipient(*row) for row in self.recipients],
                          unclear_count=self.unclear_count, unclear_retry_seconds=self.unclear_retry_seconds)
        transactions = [Transaction(outcome, code, detail, [RecipientReply(*row) for row in replies], *rest)
                        for outcome, code, detail, replies, *rest in self.transactions]
        return outcomes.settle(message, transactions, now, backoff)


@dataclass
class _Job:
    owner: str  # the sender's claim owner: a job acts only on that owner's claims


@dataclass
class Record(_Job):
    outcomes: list[Outcome]
    # The loop's own, for its metrics; not on the wire (_encode_job): each message's queue time
    # (POSIX), and when the outcomes were handed in, just after the server's reply.
    queued_at: list[float | None] = field(default_factory=list)
    handed_at: float = 0.0
    kind: ClassVar[JobKind] = JobKind.RECORD


@dataclass
class Extend(_Job):
    message_ids: list[int]
    lease_seconds: float
    kind: ClassVar[JobKind] = JobKind.EXTEND


@dataclass
class Release(_Job):
    message_ids: list[int] | None  # None: every claim of the owner's, but those in `keep`
    keep: list[int] = field(default_factory=list)
    kind: ClassVar[JobKind] = JobKind.RELEASE


@dataclass
class Claim(_Job):
    partition_id: int
    limit: int
    priority_enabled: bool
    lease_seconds: float
    kind: ClassVar[JobKind] = JobKind.CLAIM


Job = Union[Record, Extend, Release, Claim]


@dataclass
class Group:
    """Jobs handed to the child at once, answered at once (claims come in groups of their own)."""

    sequence: int
    jobs: list[Job]


@dataclass
class ClaimAnswer:
    error: str | None
    ids: list[int] | None


@dataclass
class Answer:
    """The child's answer to a group: its commit's error or how many outcomes it settled, and
    each claim's own answer by its index in the group."""

    sequence: int
    error: str | None = None
    settled: int = 0
    claims: dict[int, ClaimAnswer] = field(default_factory=dict)
    # By the job's index in the group: an extension's claims still held (the others are lost,
    # and there is an entry for every extension), and an outcome's messages whose claim was
    # lost (nothing written for them: another sender has them, or had).
    results: dict[int, list[int]] = field(default_factory=dict)
    # By the index of an outcomes job: the state each of its outcomes put its message in, in the
    # job's order (None: not written), for the node's metrics.
    statuses: dict[int, list[str | None]] = field(default_factory=dict)


@dataclass
class Setup:
    """The child's first message: what it needs to open the same database."""

    config: dict
    node_label: str


_JOB_ROW = {cls: attrgetter(*(f.name for f in fields(cls))) for cls in (Extend, Release, Claim)}
_JOB_CLASS = {cls.kind.value: cls for cls in (Record, Extend, Release, Claim)}


def encode_group(group: Group) -> tuple:
    return encode_jobs(group.sequence, group.jobs)


def encode_jobs(sequence: int, jobs: list[Job]) -> tuple:
    """A group's wire form, straight from its jobs (the loop's hot path makes no Group)."""
    return sequence, [(job.kind.value, _encode_job(job)) for job in jobs]


def _encode_job(job: Job) -> tuple:
    if job.kind is JobKind.RECORD:
        return job.owner, [tuple(outcome) for outcome in job.outcomes]
    return _JOB_ROW[type(job)](job)


def decode_group(wire: tuple) -> Group:
    sequence, jobs = wire
    return Group(sequence, [_decode_job(_JOB_CLASS[kind], row) for kind, row in jobs])


def _decode_job(cls, row: tuple) -> Job:
    if cls is Record:
        owner, outcomes_ = row
        return Record(owner, [Outcome(*fields_) for fields_ in outcomes_])
    return cls(*row)


def encode_answer(answer: Answer) -> tuple:
    return (answer.sequence, answer.error, answer.settled,
            {index: (claimed.error, claimed.ids) for index, claimed in answer.claims.items()}, answer.results,
            answer.statuses)


def decode_answer(wire: tuple) -> Answer:
    sequence, error, settled, claims_, results, statuses = wire
    return Answer(sequence, error, settled, {index: ClaimAnswer(*claimed) for index, claimed in claims_.items()},
                  results, statuses)


@dataclass
class _Waiting:
    """A job on the loop's side, with the future its sender awaits."""

    job: Job
    future: asyncio.Future


class Bookkeeper:
    """The loop's side: hands jobs to the child and resolves their futures on its answers."""

    def __init__(self, app, loop: asyncio.AbstractEventLoop, node_label: str, metrics=None):
        self.app = app
        self.loop = loop
        self.node_label = node_label
        self.metrics = metrics  # the node's (scheduler.metrics.NodeMetrics): what was committed
        self._process: subprocess.Popen | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._pending: list[_Waiting] = []
        self._in_flight: dict[int, list[_Waiting]] = {}  # by the group's sequence number
        self._send_scheduled = False
        self._stopping = False
        self._sequence = 0
        self._drained = threading.Event()
        self._started = threading.Event()  # the first child answered READY, or died before
        self._ready = False
        self.committed = 0  # messages whose outcome is committed
        self.last_commit: float | None = None  # monotonic
        self.lost_races = 0  # outcomes not written: their claim had gone to another sender

    @property
    def child_pid(self) -> int | None:
        """The bookkeeping process's id while one runs (a new one after a respawn)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def queue_depth(self) -> int:
        """Jobs handed in and not answered yet: waiting for the child, or in it. Read from any
        thread: copying the dict's values is one step under the GIL."""
        return len(self._pending) + sum(map(len, list(self._in_flight.values())))

    @property
    def idle(self) -> bool:
        """Nothing handed in waits for the child's answer."""
        return not self._in_flight and not self._pending

    # --- life (from the node's thread) --------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Starts the child and waits until it is ready to write."""
        asyncio.run_coroutine_threadsafe(self._start_child(), self.loop).result(timeout=timeout)
        if not self._started.wait(timeout) or not self._ready:
            code = None
            if self._process is not None:
                try:
                    code = self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            ended = f"it ended with exit code {code}; " if code is not None else ""
            raise BookkeepingError(f"the bookkeeping process did not start ({ended}its error is on stderr)")

    def stop(self, timeout: float = 10.0) -> None:
        """Lets the child write what is pending, then ends it."""
        if self._process is None:
            return
        self.loop.call_soon_threadsafe(self._begin_stop)
        self._drained.wait(timeout)
        try:
            self._process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            log.warning("the bookkeeper did not end in time; killing it")
            self._process.kill()
            self._process.wait()

    def _begin_stop(self) -> None:
        self._stopping = True
        self._send_next()
        if not self._in_flight and not self._pending:
            self._close_child()

    # --- the loop's side -----------------------------------------------------------------

    def record(self, owner: str, finished: list[tuple[Claimed, list[Transaction]]]) -> asyncio.Future:
        """From the loop: settles and writes what became of these messages; resolves once committed,
        to the ids of those whose claim `owner` no longer held (nothing written for them)."""
        job = Record(owner, [Outcome.of(message, transactions) for message, transactions in finished])
        if self.metrics is not None:
            job.queued_at = [message.queued_at for message, _ in finished]
            job.handed_at = time.time()
        return self._submit(job)

    def extend(self, owner: str, message_ids: list[int], lease_seconds: float) -> asyncio.Future:
        """From the loop: pushes the leases of `owner`'s claims on these messages; resolves to the
        ids of the claims still held. The others are lost: their messages must not be sent."""
        return self._submit(Extend(owner, list(message_ids), lease_seconds))

    def release(self, owner: str, message_ids: list[int]) -> asyncio.Future:
        """From the loop: gives these claims back to the queue."""
        return self._submit(Release(owner, list(message_ids)))

    def release_all(self, owner: str, keep: list[int]) -> asyncio.Future:
        """From the loop: gives back every claim of `owner`'s but those in `keep`."""
        return self._submit(Release(owner, None, list(keep)))

    def request_claim(self, owner: str, partition_id: int, limit: int, *, priority_enabled: bool,
                      lease_seconds: float) -> asyncio.Future:
        """From the loop: claims.claim_ids in the child; resolves to the ids claimed. A claim is
        answered after the outcomes handed in with it."""
        return self._submit(Claim(owner, partition_id, limit, priority_enabled, lease_seconds))

    def claim(self, owner: str, partition_id: int, limit: int, *, priority_enabled: bool,
              lease_seconds: float, timeout: float = CLAIM_WAIT_SECONDS) -> list[int]:
        """From a thread other than the loop's: claims.claim_ids in the child; the ids claimed.

        A child that dies between its commit and its answer leaves those messages claimed by
        nobody: they go back to the queue when their lease runs out, as after any crash.
        """
        async def claimed() -> list[int]:
            return await self.request_claim(owner, partition_id, limit, priority_enabled=priority_enabled,
                                            lease_seconds=lease_seconds)

        waiting = asyncio.run_coroutine_threadsafe(claimed(), self.loop)
        try:
            return waiting.result(timeout)
        except concurrent.futures.TimeoutError:
            # Not handed over yet: it never will be. Handed over: its messages are released
            # when the child answers. Answered meanwhile: the answer stands.
            if not waiting.cancel() and not waiting.cancelled():
                return waiting.result()
            raise BookkeepingError(f"the bookkeeping process did not claim within {timeout:.0f} s") from None

    def _submit(self, job: Job) -> asyncio.Future:
        future = self.loop.create_future()
        self._pending.append(_Waiting(job, future))
        if not self._send_scheduled:
            # After the callbacks already ready: what they hand in joins this group.
            self._send_scheduled = True
            self.loop.call_soon(self._send_next)
        return future

    def _send_next(self) -> None:
        self._send_scheduled = False
        if not self._pending or self._writer is None:
            return
        jobs, self._pending = self._pending, []
        # Claims go in a group of their own, so that the child can answer the writes first. A
        # claim given up on (Bookkeeper.claim timed out) is dropped; any other job is written
        # even if whoever waited for it is gone, since what it records happened.
        self._hand_over([w for w in jobs if w.job.kind is not JobKind.CLAIM])
        self._hand_over([w for w in jobs if w.job.kind is JobKind.CLAIM and not w.future.cancelled()])

    def _hand_over(self, jobs: list[_Waiting]) -> None:
        if not jobs:
            return
        self._sequence += 1
        try:
            frame = pickle.dumps(encode_jobs(self._sequence, [w.job for w in jobs]),
                                 protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # a payload that cannot travel: its senders hear of it
            log.exception("bookkeeping: a group could not be handed over")
            _resolve_all(jobs, error)
            return
        self._in_flight[self._sequence] = jobs
        self._writer.write(_framed(frame))

    def _answered(self, answer: Answer) -> None:
        if answer.sequence == READY:
            self._ready = True
            self._started.set()
            return
        jobs = self._in_flight.pop(answer.sequence, [])
        if answer.error is None:
            self.committed += answer.settled
            self.last_commit = time.monotonic()
        group_error = BookkeepingError(answer.error) if answer.error else None
        for index, waiting in enumerate(jobs):
            claimed = answer.claims.get(index)
            if claimed is not None:  # a claim answers for itself: its error, or its ids
                if waiting.future.cancelled() and claimed.ids:
                    self._release_unwanted(waiting.job.owner, claimed.ids)
                else:
                    _resolve(waiting, BookkeepingError(claimed.error) if claimed.error else None, claimed.ids)
            elif waiting.job.kind is JobKind.RELEASE:
                _resolve(waiting, group_error)
            else:
                result = answer.results.get(index, [])
                if waiting.job.kind is JobKind.RECORD and group_error is None:
                    self.lost_races += len(result)
                    if self.metrics is not None:
                        job = waiting.job
                        self.metrics.committed(job.owner, answer.statuses.get(index, []), job.queued_at,
                                               job.handed_at)
                _resolve(waiting, group_error, result)
        if self._stopping and not self._in_flight and not self._pending:
            self._close_child()

    def _release_unwanted(self, owner: str, ids: list[int]) -> None:
        """A claim made for a sender that had given up waiting for it: back to the queue at once."""
        def released(future: asyncio.Future) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.warning("%d messages claimed for %s wait for their lease to run out: %s",
                            len(ids), owner, future.exception())

        self.release(owner, ids).add_done_callback(released)

    def _child_gone(self) -> None:
        """The child's stdout closed: it ended (on stop) or died."""
        lost = [job for jobs in self._in_flight.values() for job in jobs] + self._pending
        self._in_flight, self._pending = {}, []
        if lost:
            log.error("the bookkeeper ended with %d jobs unwritten", len(lost))
            _resolve_all(lost, BookkeeperGone("the bookkeeping process ended"))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._stopping:
            self._drained.set()
        elif not self._ready:
            self._started.set()  # start() raises
        else:
            log.error("the bookkeeping process died (exit code %s); starting another", self._process.poll())
            self.loop.call_later(RESPAWN_SECONDS, lambda: self.loop.create_task(self._start_child()))

    def _close_child(self) -> None:
        if self._writer is not None:
            self._writer.close()  # the child's stdin ends: it finishes and exits
            self._writer = None

    async def _start_child(self) -> None:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen([sys.executable, "-m", "scheduler.bookkeeper"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
        self._writer, _ = await self.loop.connect_write_pipe(asyncio.Protocol, self._process.stdin)
        await self.loop.connect_read_pipe(lambda: _Answers(self), self._process.stdout)
        self._writer.write(_framed(pickle.dumps(Setup(_plain_config(self.app), self.node_label))))
        self._send_next()


class _Answers(asyncio.Protocol):
    """Reads the child's answers off its stdout, frame by frame."""

    def __init__(self, bookkeeper: Bookkeeper):
        self.bookkeeper = bookkeeper
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (frame := _take_frame(self.buffer)) is not None:
            self.bookkeeper._answered(decode_answer(pickle.loads(frame)))

    def connection_lost(self, exc) -> None:
        self.bookkeeper._child_gone()


def _framed(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def _take_frame(buffer: bytearray) -> bytes | None:
    """Takes the first whole frame off the buffer; None while it has not all arrived."""
    if len(buffer) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buffer)
    if len(buffer) < _LENGTH.size + length:
        return None
    frame = bytes(buffer[_LENGTH.size:_LENGTH.size + length])
    del buffer[:_LENGTH.size + length]
    return frame


def _plain_config(app) -> dict:
    config = {key: value for key, value in app.config.items() if isinstance(value, _PLAIN)}
    config["SQLALCHEMY_ENGINE_OPTIONS"] = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    return config


def _resolve_all(jobs: list[_Waiting], error: BaseException | None) -> None:
    for waiting in jobs:
        _resolve(waiting, error)


def _resolve(waiting: _Waiting, error: BaseException | None, value=None) -> None:
    if waiting.future.done():
        return
    if error is None:
        waiting.future.set_result(value)
    else:
        waiting.future.set_exception(error)


# --- the child ------------------------------------------------------------------------------

RETRIES = 3
READ_BYTES = 64 * 1024


class _FrameReader:
    """Frames from a pipe: the next one (waiting for it), and then any others already there."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()
        self.closed = False

    def next(self) -> bytes | None:
        """The next frame, waiting for it; None once the pipe is closed."""
        while (frame := _take_frame(self.buffer)) is None:
            if self.closed or not self._fill():
                return None
        return frame

    def waiting(self) -> list[bytes]:
        """The frames that have arrived already, without waiting."""
        frames = []
        while True:
            frame = _take_frame(self.buffer)
            if frame is not None:
                frames.append(frame)
                continue
            if self.closed or not select.select([self.fd], [], [], 0)[0] or not self._fill():
                return frames

    def _fill(self) -> bool:
        # Small enough to come from the heap: a larger read is a fresh mapping each time.
        chunk = os.read(self.fd, READ_BYTES)
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True


def _write_group(connection, node_label: str, jobs: list[Job], backoff: Backoff
                 ) -> tuple[str | None, list[outcomes.Settled], dict[int, list[int]], dict[int, list[str | None]]]:
    """Writes one group in one transaction: (the error's text or None, the outcomes written, each
    job's result by its index in `jobs`: see Answer.results, and each outcomes job's states:
    see Answer.statuses)."""
    try:
        now = utcnow()
        settled = []
        job_of: dict[int, int] = {}  # a message's outcome: the index of its job
        for index, job in enumerate(jobs):
            if job.kind is JobKind.RECORD:
                for outcome in job.outcomes:
                    item = outcome.settled(now, backoff)
                    item.owner = job.owner
                    settled.append(item)
                    job_of[item.message.id] = index
    except Exception as error:
        log.exception("settling outcomes failed")
        return f"{type(error).__name__}: {error}", [], {}, {}
    results: dict[int, list[int]] = {}

    def transaction(check_first: bool) -> tuple[list, list]:
        results.clear()
        if all(job.kind is JobKind.RECORD for job in jobs):
            with store.driver_transaction(connection) as writer:
                return _outcomes(settled, node_label, check_first, writer=writer)
        with connection.begin():
            held, lost = _outcomes(settled, node_label, check_first, connection=connection)
            for index, job in enumerate(jobs):
                if job.kind is JobKind.EXTEND:
                    results[index] = store.renew_leases(job.owner, job.message_ids, job.lease_seconds, connection)
                elif job.kind is JobKind.RELEASE:
                    store.release(job.owner, job.message_ids, keep=job.keep, connection=connection)
            return held, lost

    error_text = None
    for attempt in range(RETRIES):
        try:
            try:
                held, lost = transaction(check_first=False)
            except _RaceLost:
                held, lost = transaction(check_first=True)
            for item in lost:
                results.setdefault(job_of[item.message.id], []).append(item.message.id)
            if lost:
                # Its sender was paused or cut off past its lease, or the outcome came again
                # after a bookkeeper died: whoever holds the message now writes what becomes of it.
                log.warning("outcomes not written, their claim no longer held: %s",
                            ", ".join(f"message {item.message.id} ({item.status}, by {item.owner})"
                                      for item in lost))
            status_of = {item.message.id: item.status for item in held}
            statuses = {index: [status_of.get(outcome.message_id) for outcome in job.outcomes]
                        for index, job in enumerate(jobs) if job.kind is JobKind.RECORD}
            return None, held, results, statuses
        except Exception as error:  # a locked or lost database: try again, then tell the senders
            error_text = f"{type(error).__name__}: {error}"
            log.warning("bookkeeping failed (attempt %d): %s", attempt + 1, error_text)
            time.sleep(0.2 * (attempt + 1))
    return error_text, [], {}, {}


def log_settled(held: list[outcomes.Settled], node_label: str) -> None:
    """One line a message written: its new state, and for one that waits or failed the reply's
    code, the wait and the reason (scrubbed of secrets like every text the engine keeps)."""
    if not held or not delivery_log.isEnabledFor(logging.INFO):
        return
    now = utcnow()
    owners: dict[str, dict] = {}  # a group's outcomes are of few senders
    for item in held:
        context = owners.get(item.owner)
        if context is None:
            context = owners[item.owner] = {**store.owner_context(item.owner or ""), "node": node_label}
        extra = {"message_id": item.message.id, **context, "status": item.status,
                 "attempt": item.message.attempt_count + (1 if item.transactions else 0)}
        if item.status != SENT:
            extra["code"] = _deciding_code(item)
            if item.retry_at is not None:
                extra["wait_seconds"] = round(max(0.0, (item.retry_at - now).total_seconds()), 3)
                extra["retry_at"] = item.retry_at.isoformat()
            extra["error"] = item.last_error
        delivery_log.info("message %s", item.status, extra=extra)


def _deciding_code(item: outcomes.Settled) -> int | None:
    """The SMTP code behind a message that was not sent: its first recipient's not accepted (a
    timeout or a dropped connection has none)."""
    for recipient in item.changed:
        if recipient.status != RCPT_ACCEPTED and recipient.code:
            return recipient.code
    for transaction in reversed(item.transactions):
        if transaction.code and not 200 <= transaction.code < 400:
            return transaction.code
    return None


class _RaceLost(Exception):
    """Some outcome's claim was no longer held: the transaction is rolled back, and written again
    with only those whose claim is."""


def _outcomes(settled: list, node_label: str, check_first: bool, **where) -> tuple[list, list]:
    """Writes the outcomes whose claim is held: (those, the others). Unchecked first, since a
    lost race is rare: then a miss raises _RaceLost, to roll back and write again checked."""
    held, lost = store.keep_held(settled, **where) if check_first else (settled, [])
    if store.record_outcomes(held, None, node_label, **where) and not check_first:
        raise _RaceLost
    return held, lost


def _claim(connection, job: Claim) -> ClaimAnswer:
    """One claim in its own transaction: its error's text, or the ids claimed."""
    try:
        return ClaimAnswer(None, claims.claim_ids(connection, job.partition_id, job.owner, job.limit,
                                                  priority_enabled=job.priority_enabled,
                                                  lease_seconds=job.lease_seconds))
    except Exception as error:  # the sender's next wake claims again
        log.warning("claim for %s failed: %s: %s", job.owner, type(error).__name__, error,
                    extra=store.owner_context(job.owner))
        return ClaimAnswer(f"{type(error).__name__}: {error}", None)


def main() -> None:
    # Ctrl-C, or a service manager's SIGTERM, reaches the whole process group; the node then
    # stops and hands over what is pending, and this process ends when its stdin does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # stdout carries the answers alone: whatever else would print goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = _FrameReader(sys.stdin.fileno())
    setup_frame = requests.next()
    if setup_frame is None:
        return
    setup: Setup = pickle.loads(setup_frame)
    # Lines batched, and flushed once a group's are logged (a warning at once). Two lines a
    # message: what logging finds out for each record and no line shows (the calling function,
    # thread and process) cost a fifth of their time (see the logging HOWTO's "Optimization").
    log_handler = configure_logging(setup.config, batched=True)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False

    # The database and the engine's settings, and nothing of the web application's.
    app = Flask("mailsender-bookkeeper")
    app.config.update(setup.config)
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
        backoff = Backoff.configured(app.config)
        connection = db.engine.connect()
        if connection.dialect.name == "sqlite":
            # No checkpoint inside these commits, which senders wait for: the senders' threads
            # run them after each claim (webapp.core.database.checkpoint_wal), and the control
            # tick's heartbeats on commit.
            connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            connection.commit()
        try:
            _answer(answers, [Answer(READY)])
            claims_due: list[Group] = []
            while True:
                if claims_due:
                    frames = requests.waiting()
                elif (frame := requests.next()) is not None:
                    frames = [frame, *requests.waiting()]
                else:
                    break
                # Every group of writes that arrived while the last was written goes in one
                # transaction, answered at once: senders wait for it inside DATA. Then one group
                # of claims, which senders wait for off the wire, and the writes come first again.
                groups = [decode_group(pickle.loads(f)) for f in frames]
                writes = [group for group in groups if group.jobs[0].kind is not JobKind.CLAIM]
                claims_due += [group for group in groups if group.jobs[0].kind is JobKind.CLAIM]
                if writes:
                    error_text, written, results, statuses = _write_group(
                        connection, setup.node_label, [job for group in writes for job in group.jobs], backoff)
                    _answer(answers, _answers_of(writes, error_text, results, statuses))
                    log_settled(written, setup.node_label)  # after the answer, which senders wait for
                    log_handler.flush()
                if claims_due:
                    group = claims_due.pop(0)
                    answered = {index: _claim(connection, job) for index, job in enumerate(group.jobs)}
                    _answer(answers, [Answer(group.sequence, claims=answered)])
                    for index, claimed in answered.items():
                        claims.log_claimed(group.jobs[index].owner, claimed.ids or [])
                    log_handler.flush()
        finally:
            connection.close()


def _answers_of(groups: list[Group], error_text: str | None, results: dict[int, list[int]],
                statuses: dict[int, list[str | None]] | None = None) -> list[Answer]:
    """Each group's answer to a transaction that wrote them all (results, statuses: by index in all
    their jobs)."""
    answers, offset = [], 0
    statuses = statuses or {}
    for group in groups:
        own = {index: results[offset + index] for index in range(len(group.jobs)) if offset + index in results}
        own_statuses = {index: statuses[offset + index] for index in range(len(group.jobs))
                        if offset + index in statuses}
        offset += len(group.jobs)
        if error_text:
            answers.append(Answer(group.sequence, error_text))
            continue
        written = sum(len(job.outcomes) for index, job in enumerate(group.jobs) if job.kind is JobKind.RECORD)
        lost = sum(len(ids) for index, ids in own.items() if group.jobs[index].kind is JobKind.RECORD)
        answers.append(Answer(group.sequence, None, written - lost, results=own, statuses=own_statuses))
    return answers


def _answer(stream, answers: list[Answer]) -> None:
    stream.write(b"".join(_framed(pickle.dumps(encode_answer(answer), protocol=pickle.HIGHEST_PROTOCOL))
                          for answer in answers))


if __name__ == "__main__":
    # `python -m` runs this file as __main__: run it as scheduler.bookkeeper instead, so that the
    # messages it pickles and unpickles are of the same classes as the node's.
    from scheduler import bookkeeper

    bookkeeper.main()
