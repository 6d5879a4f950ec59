"""The node: this process's senders, their scheduler, its asyncio loop, its lease and heartbeats.

One node per process (start_node). It keeps a lease on its name in the database (30 s,
renewed every 5 s), so that a second process started with the same name waits instead of
multiplying senders. While it holds the lease it defines MAILSENDER_SENDERS senders per
partition, follows each partition's wanted state (Start/Stop) at every tick, and writes a
heartbeat per sender that the status (scheduler/status.py) reads. A clean stop writes when it
stopped, so that the status tells it from a crash.

Each time it takes its name it does so under a new lease token, which its claims carry. A node
whose lease ran out (it was paused, or cut off from the database) does not renew it as if
nothing happened: other nodes may already have taken its claims (claims.node_gone), so its
senders stop at once and it takes its name again as a new life, giving back its old claims.
Its senders rely on the name only while it is certainly held (name_sure_until; see the
fencing in scheduler/sender.py).

A node restarted on the same host does not wait out the lease of its previous process when
that process is provably dead (process_gone): the lease records the host, the process id and
what tells that process from a later one with the same id.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError

from webapp.core import clock
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import MailSenderSettings, Partition, SenderInstance
from webapp.core.models import Node as NodeRow
from webapp.core.states import WANTED_RUNNING
from webapp.core.version import product_version

from . import metrics, store
from .bookkeeper import Bookkeeper
from .monitor.rounds import schedule as schedule_monitor
from .rate import RateLimiter
from .sender import Sender, node_claims, sure_for
from .status import HEARTBEAT_STALE_SECONDS

log = logging.getLogger("mailsender.engine")

NODE_RENEW_SECONDS = 5.0
# Well inside HEARTBEAT_STALE_SECONDS, so that one late beat never turns a light yellow.
HEARTBEAT_SECONDS = min(2.0, HEARTBEAT_STALE_SECONDS / 5)
# How often the node looks at the database for Start/Stop and due senders, at most.
MAX_TICK_SECONDS = 1.0

_process_node: "Node | None" = None
_process_lock = threading.Lock()


def start_node(app) -> "Node | None":
    """Starts this process's node, once: a second call answers the same node.

    Under the Flask reloader only the serving child runs one, never the watching parent.
    """
    global _process_node
    with _process_lock:
        if _process_node is not None:
            return _process_node
        if "WERKZEUG_SERVER_FD" in os.environ and os.environ.get("WERKZEUG_RUN_MAIN") != "true":
            return None
        node = Node(app)
        node.start()
        _process_node = node
        return node


def process_node() -> "Node | None":
    """This process's node (start_node); None in a process that runs none (the web alone)."""
    return _process_node


def stop_node(timeout: float = 30.0) -> None:
    global _process_node
    with _process_lock:
        node, _process_node = _process_node, None
    if node is not None:
        node.stop(timeout)


class Node:
    def __init__(self, app):
        config = app.config
        self.app = app
        self.name: str = config["NODE_NAME"]
        # Who holds the lease: this very life of this process, not just any process with this name.
        self.lease_token = _new_token()
        self.host = socket.gethostname()
        self.identity = process_identity(os.getpid())
        # Monotonic: until when the lease on the name is certainly held (0: it is not).
        self.name_sure_until = 0.0
        self.senders_per_partition = int(config["MAILSENDER_SENDERS"])
        self.minute_seconds = float(config["MAILSENDER_MINUTE_SECONDS"])
        self.claim_lease_seconds = float(config["MAILSENDER_LEASE_SECONDS"])
        self.rate_per_minute = int(config["MAILSENDER_RATE_PER_MINUTE"])
        self.node_lease_seconds = float(config["MAILSENDER_NODE_LEASE_SECONDS"])
        self.renew_seconds = min(NODE_RENEW_SECONDS, self.node_lease_seconds / 3)
        # A busy sender without progress for this long stops beating (see _heartbeat).
        self.stall_seconds = float(config["MAILSENDER_SENDER_STALL_SECONDS"])
        self.stop_grace_seconds = float(config["MAILSENDER_STOP_GRACE_SECONDS"])
        # Fast enough to follow Start/Stop within a second, and a shortened minute in tests.
        self.tick_seconds = max(0.05, min(MAX_TICK_SECONDS, self.minute_seconds / 4))
        self.node_id: int | None = None
        self.active = False  # holds the lease on its name
        self.senders_started = False  # this life's senders are defined and scheduled
        self.stopping = False
        self.senders: dict[tuple[int, int], Sender] = {}
        self._slowed: dict[int, float] = {}  # partition → monotonic end of its slowing (throttling)
        self._limiters: dict[int, RateLimiter] = {}
        self._next_renew = 0.0
        self._next_heartbeat = 0.0
        self._last_tick = time.monotonic()
        self._first_claim: float | None = None
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="mailsender-smtp", daemon=True)
        self.metrics = metrics.NodeMetrics(self)
        self.bookkeeper = Bookkeeper(app, self.loop, self.name, self.metrics)
        self._jobs = ThreadPoolExecutor(max_workers=32)
        self.scheduler = BackgroundScheduler(
            executors={"default": self._jobs},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        # A tick that finds the previous one still running is skipped on purpose: not news.
        scheduler_log = logging.getLogger("apscheduler.scheduler")
        if scheduler_log.level == logging.NOTSET:
            scheduler_log.setLevel(logging.ERROR)
        self._loop_thread.start()
        self.bookkeeper.start()
        with self.app.app_context():
            self._register()
        self.scheduler.add_job(self._control, "interval", seconds=self.tick_seconds, id="node:control",
                               next_run_time=utcnow())
        schedule_monitor(self)
        self._last_tick = time.monotonic()  # the first tick is due now
        self.scheduler.start()
        metrics.attach(self)
        log.info("node %s started (%s)", self.name, self.lease_token)

    def stop(self, timeout: float = 30.0) -> None:
        """Senders finish the message in flight and release the rest; then the lease is given up."""
        self.stopping = True
        metrics.detach(self)
        # Then waits for the jobs in progress (wakes stop early). Not inside shutdown(wait=True):
        # that waits holding the scheduler's lock, and a running job that adds a job (the
        # monitor, meeting a new partition) would wait for that lock for ever.
        self.scheduler.shutdown(wait=False)
        # A stalled command would be waited out to its timeout (a minute), longer than a service
        # manager waits before its SIGKILL: after the grace the batches on the wire are given up.
        grace = threading.Timer(self.stop_grace_seconds, self._abandon_batches)
        grace.daemon = True
        grace.start()
        self._jobs.shutdown(wait=True)
        grace.cancel()
        closing = asyncio.run_coroutine_threadsafe(self._close_connections(), self.loop)
        try:
            closing.result(timeout=10)
        except Exception:
            log.warning("node %s: closing SMTP connections took too long", self.name)
        self.bookkeeper.stop(timeout)
        with self.app.app_context():
            try:
                if self.active:
                    self._heartbeat()
                    store.release(owner_prefix=node_claims(self.name))
                    db.session.execute(
                        update(NodeRow).where(NodeRow.id == self.node_id, NodeRow.lease_owner == self.lease_token)
                        .values(lease_owner=None, lease_until=utcnow(), last_seen=utcnow(), stopped_at=utcnow()))
                    db.session.commit()
            finally:
                db.session.rollback()
        self.active = False
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=5)
        log.info("node %s stopped", self.name)

    def add_job(self, func, trigger, **kwargs):
        """Adds a job to this node's scheduler, run inside an app context (the monitor's hook)."""
        app = self.app

        def in_app(*args, **kw):
            with app.app_context():
                try:
                    return func(*args, **kw)
                finally:
                    db.session.remove()

        return self.scheduler.add_job(in_app, trigger, **kwargs)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _abandon_batches(self) -> None:
        busy = [sender for sender in self.senders.values() if sender.busy]
        if busy:
            log.warning("node %s: the stop grace of %g s ran out; %d batches on the wire are given up",
                        self.name, self.stop_grace_seconds, len(busy))
        for sender in busy:
            sender.abandon()

    async def _close_connections(self) -> None:
        await asyncio.gather(*(sender.close() for sender in self.senders.values()), return_exceptions=True)

    # --- what the SMTP side asks of the node ----------------------------------------------

    def slow_route(self, partition_id: int, seconds: float) -> None:
        """After a throttling answer: the partition's senders here halve their rate for `seconds`."""
        until = time.monotonic() + seconds
        self._slowed[partition_id] = max(until, self._slowed.get(partition_id, 0.0))

    def route_slowed(self, partition_id: int) -> bool:
        return time.monotonic() < self._slowed.get(partition_id, 0.0)

    def rate_limiter(self, partition_id: int) -> RateLimiter | None:
        if self.rate_per_minute <= 0:
            return None
        limiter = self._limiters.get(partition_id)
        if limiter is None:
            limiter = self._limiters[partition_id] = RateLimiter(self.app, partition_id, self.rate_per_minute,
                                                                 self.minute_seconds)
        return limiter

    def token_source(self, partition_id: int):
        """An async callable that fetches the partition's XOAUTH2 token off the loop."""
        app = self.app

        def fetch() -> str:
            # Here rather than at the top: Authlib and requests cost a node 10 MB, and only a
            # partition that uses OAuth2 needs them.
            from . import oauth

            with app.app_context():
                try:
                    return oauth.access_token(partition_id)
                finally:
                    db.session.remove()

        async def token() -> str:
            return await asyncio.get_running_loop().run_in_executor(None, fetch)

        return token

    def note_claim(self) -> None:
        if self._first_claim is None:
            self._first_claim = time.monotonic()

    @property
    def first_claim(self) -> float | None:
        """When this node first claimed anything (monotonic): where the benchmark's clock starts."""
        return self._first_claim

    # --- what /healthz and /readyz ask (scheduler/health.py) ------------------------------

    def failing(self) -> list[str]:
        """Why this node is not alive, in words; [] while its scheduler (and its control tick),
        its SMTP loop and its bookkeeping process run."""
        if self.stopping:
            return ["the node is stopping"]
        reasons = []
        since_tick = time.monotonic() - self._last_tick
        if not self.scheduler.running:
            reasons.append("the scheduler is not running")
        elif since_tick > self.node_lease_seconds:
            # As long as the lease on the name: the node has lost it by now, whatever holds it up.
            reasons.append(f"the scheduler has not run the node's control tick for {since_tick:.0f} s")
        if not (self._loop_thread.is_alive() and self.loop.is_running()):
            reasons.append("the SMTP loop is not running")
        if self.bookkeeper.child_pid is None:
            reasons.append("the bookkeeper process is not running")
        return reasons

    def not_ready(self) -> list[str]:
        """Why this node takes no work yet, in words; [] once it holds its name and has started
        its senders."""
        if self.stopping:
            return ["the node is stopping"]
        if not self.active:
            return [f"the node waits for the lease on its name {self.name!r} (another process may hold it)"]
        if not self.senders_started:
            return ["the node has not started its senders yet"]
        return []

    # --- the control tick -----------------------------------------------------------------

    def _control(self) -> None:
        self._last_tick = time.monotonic()
        with self.app.app_context():
            try:
                now = time.monotonic()
                if now >= self._next_renew:
                    self._next_renew = now + self.renew_seconds
                    self._hold_lease()
                if self.active:
                    changed = self._follow_partitions()
                    if changed or now >= self._next_heartbeat:
                        self._next_heartbeat = now + HEARTBEAT_SECONDS
                        self._heartbeat()
                db.session.commit()
                self.senders_started = self.active
            except Exception:
                log.exception("node %s: control tick failed", self.name)
                db.session.rollback()
            finally:
                db.session.remove()

    def _register(self) -> None:
        row = db.session.scalars(select(NodeRow).where(NodeRow.name == self.name)).first()
        if row is None:
            try:
                db.session.add(NodeRow(name=self.name))
                db.session.commit()
            except IntegrityError:  # another process of this name made it first
                db.session.rollback()
            row = db.session.scalars(select(NodeRow).where(NodeRow.name == self.name)).one()
        self.node_id = row.id
        db.session.commit()

    def _hold_lease(self) -> None:
        """Renews the lease on the name, or takes it; timed by the database clock."""
        asked = time.monotonic()  # before the statement: the lease it sets ends after this + lease
        if self.active:
            renewed = db.session.execute(
                update(NodeRow)
                .where(NodeRow.id == self.node_id, NodeRow.lease_owner == self.lease_token,
                       NodeRow.lease_until > clock.db_now())
                .values(lease_until=clock.db_now(self.node_lease_seconds), last_seen=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount == 1
            if renewed:
                self.name_sure_until = asked + sure_for(self.node_lease_seconds)
                return
            self._lost_name()
        if not self._take_name():
            return
        db.session.execute(update(NodeRow).where(NodeRow.id == self.node_id)
                           .values(started_at=utcnow(), version=product_version())
                           .execution_options(synchronize_session=False))
        # Claims under this name are from a previous life of this node: nobody else holds them.
        released = store.release(owner_prefix=node_claims(self.name))
        if released:
            log.info("node %s: took back %d claims of a previous run", self.name, released)
        db.session.commit()
        self.name_sure_until = asked + sure_for(self.node_lease_seconds)
        self.active = True
        log.info("node %s holds its name", self.name)

    def _lost_name(self) -> None:
        """The lease ran out, or another process holds it: this life of the node has ended."""
        log.warning("node %s lost the lease on its name (paused or cut off from the database?); its senders "
                    "stop, and it takes the name again as a new life", self.name)
        self.active = False
        self.senders_started = False
        self.name_sure_until = 0.0
        # The senders' batches carry the old token: none sends another message.
        self.lease_token = _new_token()

    def _take_name(self) -> bool:
        """Takes the lease if it is free, or held by a process of this host that is provably dead."""
        values = dict(lease_owner=self.lease_token, lease_until=clock.db_now(self.node_lease_seconds),
                      lease_host=self.host, lease_pid=os.getpid(), lease_process=self.identity,
                      last_seen=utcnow(), stopped_at=None)
        now = clock.db_now()
        taken = db.session.execute(
            update(NodeRow)
            .where(NodeRow.id == self.node_id,
                   or_(NodeRow.lease_owner.is_(None), NodeRow.lease_until.is_(None), NodeRow.lease_until < now))
            .values(**values).execution_options(synchronize_session=False)
        ).rowcount == 1
        if taken:
            return True
        holder = db.session.execute(
            select(NodeRow.lease_owner, NodeRow.lease_host, NodeRow.lease_pid, NodeRow.lease_process)
            .where(NodeRow.id == self.node_id)).one_or_none()
        if holder is None or holder.lease_host != self.host or holder.lease_pid is None \
                or not process_gone(holder.lease_pid, holder.lease_process):
            return False
        # Only that holder's lease: a twin that took it meanwhile keeps it.
        taken = db.session.execute(
            update(NodeRow).where(NodeRow.id == self.node_id, NodeRow.lease_owner == holder.lease_owner)
            .values(**values).execution_options(synchronize_session=False)
        ).rowcount == 1
        if taken:
            log.info("node %s: process %d that held the name is gone; taking it over at once", self.name,
                     holder.lease_pid)
        return taken

    def _follow_partitions(self) -> bool:
        """Reads each partition's wanted state and sleep; defines missing senders. True on a change."""
        rows = db.session.execute(
            select(Partition.id, Partition.senders_wanted, Partition.senders_wanted_at,
                   MailSenderSettings.sleep_minutes)
            .join(MailSenderSettings, MailSenderSettings.partition_id == Partition.id)
        ).all()
        changed = False
        for partition_id, wanted_state, wanted_at, sleep_minutes in rows:
            if (partition_id, 0) not in self.senders:
                self._define_senders(partition_id)
                changed = True
            wanted = wanted_state == WANTED_RUNNING
            for slot in range(self.senders_per_partition):
                sender = self.senders[(partition_id, slot)]
                if wanted and (not sender.wanted or (sender.wanted_at is not None and wanted_at != sender.wanted_at)):
                    sender.kick = True  # Stop then Start sends at once
                if wanted != sender.wanted:
                    changed = True
                sender.wanted = wanted
                sender.wanted_at = wanted_at
                sender.sleep_seconds = (sleep_minutes or 0) * self.minute_seconds
        return changed

    def _define_senders(self, partition_id: int) -> None:
        existing = {
            s.slot: s for s in db.session.scalars(
                select(SenderInstance).where(SenderInstance.node_id == self.node_id,
                                             SenderInstance.partition_id == partition_id))
        }
        for slot, instance in existing.items():
            if slot >= self.senders_per_partition:
                db.session.delete(instance)
        for slot in range(self.senders_per_partition):
            if slot not in existing:
                existing[slot] = SenderInstance(node_id=self.node_id, partition_id=partition_id, slot=slot,
                                                running=False)
                db.session.add(existing[slot])
        db.session.flush()
        for slot in range(self.senders_per_partition):
            sender = Sender(self, partition_id, slot, existing[slot].id)
            self.senders[(partition_id, slot)] = sender
            self.scheduler.add_job(sender.wake, "interval", seconds=self.tick_seconds, id=sender.job_id,
                                   replace_existing=True, next_run_time=utcnow())

    def _heartbeat(self) -> None:
        """Each sender says whether it runs; the status reads these beats, not this process.

        A sender beats for itself: one that has made no progress for `stall_seconds` (stuck in
        a slow SMTP command, or waiting for the database) beats no more than its last progress,
        so that its light goes out while the node's control tick carries on.
        """
        if not self.senders:
            return
        now, monotonic_now = utcnow(), time.monotonic()
        rows = []
        for sender in self.senders.values():
            stalled_for = sender.stalled_for(monotonic_now)
            stalled = stalled_for > self.stall_seconds
            rows.append({
                "b_id": sender.instance_id, "b_running": sender.should_run(), "b_end": sender.last_batch_end_at,
                "b_beat": now - timedelta(seconds=stalled_for) if stalled else now,
                "b_error": f"no progress for {stalled_for:.0f} s: waiting on the SMTP server or the database"
                           if stalled else sender.last_error,
                "b_undeliverable": sender.undeliverable_since if sender.should_run() else None,
            })
        db.session.connection().execute(
            update(SenderInstance.__table__)
            .where(SenderInstance.__table__.c.id == bindparam("b_id"))
            .values(running=bindparam("b_running"), heartbeat_at=bindparam("b_beat"),
                    last_batch_end_at=bindparam("b_end"), last_error=bindparam("b_error"),
                    undeliverable_since=bindparam("b_undeliverable")),
            rows,
        )


def _new_token() -> str:
    return uuid.uuid4().hex[:16]


def process_identity(pid: int) -> str | None:
    """What tells process `pid` of this host from a later one given the same id: the kernel's boot,
    the PID namespace it is seen in (this process's) and its start time. None where /proc does
    not tell (not Linux), or the process is gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot_file:
            boot = boot_file.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        with open(f"/proc/{pid}/stat") as stat_file:
            # Field 22, counted after the command's name, which may hold spaces and parentheses.
            started = stat_file.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}/{namespace}/{started}"


def process_gone(pid: int, identity: str | None) -> bool:
    """Whether the process `pid` of this host, known by `identity` (process_identity), has
    certainly ended. Unsure (another PID namespace, or no way to tell) is not gone."""
    mine = process_identity(os.getpid())
    if identity is not None and (mine is None or identity.rsplit("/", 1)[0] != mine.rsplit("/", 1)[0]):
        return False  # another boot or another PID namespace: its process ids say nothing here
    if pid == os.getpid():
        return identity is not None and identity != mine
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's process: it exists
    if identity is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            if stat_file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True  # ended, not yet reaped by its parent
    except (OSError, IndexError):
        return True  # ended between the two looks
    return process_identity(pid) not in (None, identity)
