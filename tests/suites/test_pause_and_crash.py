"""Pauses, partitions and crashes of real node processes (issue 17), counted at a real SMTP server.

- Pause and partition: two nodes on PostgreSQL; one is frozen (SIGSTOP), or cut off from the
  database by a proxy that stops forwarding without closing, for longer than its leases, then
  let go. Nothing it sends afterwards was sent by the other node meanwhile: the only duplicates
  are the messages it had on the wire when it stopped, one per connection at most.
- Crash: a node SIGKILLed at random moments mid-drain (with its bookkeeping process, half of
  the time) and started again at once: nothing lost, duplicates within the promised bound, and
  every count right afterwards. The restarted node takes its name at once.
- Bookkeeper: the bookkeeping process alone SIGKILLed mid-drain: replaced within 2 s, nothing
  lost, and no stall as long as a lease.

The figures are printed in the terminal summary.
"""
from __future__ import annotations

import collections
import os
import pathlib
import random
import signal
import socket
import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.scheduler.test_processes import NodeProcess, holding
from tests.smtp_servers import SmtpServer
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, Node, OutgoingMessage, SenderInstance
from webapp.core.states import ATTEMPT_ACCEPTED, DEFERRED, QUEUED, SENDING

# Generous: a busy two-core machine starts a node process in seconds, not in one.
UP_SECONDS = 120
DRAIN_SECONDS = 240


# --- the figures, in the terminal summary ----------------------------------------------------


class Tally:
    """Each run's figures; shown once at the end of the session."""

    def __init__(self):
        self.runs: list[tuple[str, dict]] = []

    def pytest_terminal_summary(self, terminalreporter):
        if self.runs:
            terminalreporter.write_sep("-", "pauses and crashes")
            for name, figures in self.runs:
                shown = ", ".join(f"{key} {value}" for key, value in figures.items())
                terminalreporter.write_line(f"{name}: {shown}")


TALLY = Tally()


@pytest.fixture
def tally(request):
    if not request.config.pluginmanager.is_registered(TALLY):
        request.config.pluginmanager.register(TALLY, "pause-and-crash-tally")

    def note(name: str, **figures) -> None:
        TALLY.runs.append((name, figures))

    return note


# --- node processes, a proxy, and what arrived ----------------------------------------------


@pytest.fixture
def nodes(db_url, tmp_path):
    """Starts `flask --app webapp serve` processes with instance settings of the test's own."""
    started: list[NodeProcess] = []

    def launch(name: str, senders: int, database_url: str | None = None, **config) -> NodeProcess:
        process = NodeProcess(db_url, tmp_path, name, senders)
        if database_url is not None:
            process.env["DATABASE_URL"] = database_url
        settings = {"MAILSENDER_NODE_LEASE_SECONDS": 30.0, **config}
        (pathlib.Path(tmp_path) / f"instance-{name}" / "config.py").write_text(
            "".join(f"{key} = {value!r}\n" for key, value in settings.items()))
        started.append(process.start())
        return process

    yield launch
    for process in started:
        process.end()


class Proxy:
    """A TCP proxy in threads, from a port of its own to `upstream`; `black_hole()` stops it
    forwarding either way without closing anything (as a partition does), `forward()` resumes."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def black_hole(self) -> None:
        self.forwarding.clear()

    def forward(self) -> None:
        self.forwarding.set()

    def close(self) -> None:
        self.closed = True
        self.forwarding.set()
        for each in [self.listener, *self.sockets]:
            try:
                each.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            self.sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                self.forwarding.wait()
                data = source.recv(65536)
                if not data:
                    break
                self.forwarding.wait()  # read during a black hole: held until it ends
                target.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, target):
                try:
                    each.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Arrivals:
    """What a server received, by Message-ID, against the messages in the database."""

    def __init__(self, app, server: SmtpServer):
        with app.app_context():
            self.expected = set(db.session.scalars(select(OutgoingMessage.message_id)))
        received = list(server.messages)
        self.counts = collections.Counter(m.message_id for m in received)
        self.first_at: dict[str, float] = {}
        for message in received:
            self.first_at.setdefault(message.message_id, message.at)
        self.duplicates = sorted(mid for mid, count in self.counts.items() if count > 1)
        self.extra = sum(count - 1 for count in self.counts.values())
        self.lost = sorted(self.expected - set(self.counts))
        self.strangers = sorted(set(self.counts) - self.expected)


def _claims_of(app, name: str) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(OutgoingMessage).where(
                OutgoingMessage.status == SENDING, OutgoingMessage.claim_owner.startswith(f"{name}/"))) or 0
        finally:
            db.session.rollback()


def _waiting(app) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(OutgoingMessage).where(
                OutgoingMessage.status.in_((QUEUED, DEFERRED)))) or 0
        finally:
            db.session.rollback()


def _batches_ended_after(app, name: str, moment) -> bool:
    """Every sender of the node has ended a batch after `moment`, and said so in a heartbeat."""
    with app.app_context():
        try:
            ends = db.session.scalars(select(SenderInstance.last_batch_end_at).join(Node).where(
                Node.name == name)).all()
            return bool(ends) and all(end is not None and end > moment for end in ends)
        finally:
            db.session.rollback()


def _one_accepted_attempt_each(app) -> bool:
    with app.app_context():
        per_message = db.session.execute(
            select(DeliveryAttempt.message_id, func.count()).where(DeliveryAttempt.outcome == ATTEMPT_ACCEPTED)
            .group_by(DeliveryAttempt.message_id)).all()
        total = db.session.scalar(select(func.count()).select_from(OutgoingMessage))
    return len(per_message) == total and all(count == 1 for _, count in per_message)


# --- pause and partition -------------------------------------------------------------------

PAUSE_MESSAGES = 400
PAUSE_SENDERS = 2
CLAIM_LEASE = 6.0
NODE_LEASE = 3.0
# A message the stopped node had on the wire arrives within this of the stop (its end of data
# was written before it); a duplicate whose first copy came later was sent again by the node
# after it woke, or by the other one while it was away and then again by it.
ON_THE_WIRE_SECONDS = 1.5


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("fault", ["sigstop", "black hole"])
def test_a_node_paused_or_cut_off_past_its_leases_sends_nothing_the_other_node_sent(
        app, seed, nodes, db_url, fault, tally):
    pid = seed["partition_id"]
    leases = {"MAILSENDER_LEASE_SECONDS": CLAIM_LEASE, "MAILSENDER_NODE_LEASE_SECONDS": NODE_LEASE}
    proxy = None
    if fault == "black hole":
        url = make_url(db_url)
        proxy = Proxy(url.host, url.port or 5432)
    try:
        with SmtpServer(data_delay=0.05) as server:
            configure(app, pid, server, batch_size=40, sleep_minutes=0)
            queue_messages(app, pid, PAUSE_MESSAGES)
            nodes("alpha", PAUSE_SENDERS, **leases)
            beta = nodes("beta", PAUSE_SENDERS, database_url=None if proxy is None else make_url(db_url).set(
                host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), **leases)
            wait_until(lambda: holding(app, "alpha", "beta", senders=PAUSE_SENDERS), timeout=UP_SECONDS,
                       what="both nodes up")
            start(app, pid)
            wait_until(lambda: _claims_of(app, "beta") >= 40 and len(server.messages) >= 40, timeout=DRAIN_SECONDS,
                       what="beta sending, with claims in hand")

            stopped = time.monotonic()
            held = _claims_of(app, "beta")
            if proxy is None:
                beta.signal_group(signal.SIGSTOP)  # the node and its bookkeeper, as a VM pause freezes both
            else:
                proxy.black_hole()
            # Past its leases, and until the other node has taken every claim it held, or all it
            # could: rows that beta's bookkeeper had locked in a transaction when it stopped stay
            # locked until it goes on (claims skip locked rows).
            wait_until(lambda: time.monotonic() - stopped > CLAIM_LEASE + 1 and (
                _claims_of(app, "beta") == 0 or (_claims_of(app, "alpha") == 0 and _waiting(app) == 0)),
                timeout=DRAIN_SECONDS, what="beta's claims taken by alpha")
            away = time.monotonic() - stopped
            woke, woke_at = time.monotonic(), utcnow()
            if proxy is None:
                beta.signal_group(signal.SIGCONT)
            else:
                proxy.forward()

            wait_until(lambda: statuses(app) == {"sent": PAUSE_MESSAGES}, timeout=DRAIN_SECONDS, what="all sent")
            # Beta has looked at its batches since it woke: whatever it was going to send, it has.
            wait_until(lambda: _batches_ended_after(app, "beta", woke_at), timeout=DRAIN_SECONDS,
                       what="beta's senders past their batches")
            drained = time.monotonic() - woke
            arrivals = Arrivals(app, server)
    finally:
        if proxy is not None:
            proxy.close()
    late = [mid for mid in arrivals.duplicates if arrivals.first_at[mid] > stopped + ON_THE_WIRE_SECONDS]
    tally(f"pause and partition ({fault})", claims_held=held, away=f"{away:.1f} s",
          duplicates=len(arrivals.duplicates), from_the_paused_node=len(late), lost=len(arrivals.lost),
          drained_after=f"{drained:.1f} s")
    assert late == [], beta.output()[-4000:]
    assert not arrivals.lost and not arrivals.strangers
    assert arrivals.extra <= PAUSE_SENDERS  # what was on its wire when it stopped
    assert "lost the lease on its name" in beta.output()


# --- crashes ---------------------------------------------------------------------------------

CRASH_MESSAGES = 500
CRASH_SENDERS = 3
KILLS = 5


def test_sigkills_mid_drain_lose_nothing_and_duplicate_at_most_one_per_connection(app, seed, nodes, tally):
    pid = seed["partition_id"]
    draw = random.Random(17)
    resumed_after, with_bookkeeper = [], 0
    began = time.monotonic()
    with SmtpServer(data_delay=0.02) as server:
        configure(app, pid, server, batch_size=50, sleep_minutes=0)
        queue_messages(app, pid, CRASH_MESSAGES)
        # The default lease on the name (30 s): a restart that waited it out would show.
        node = nodes("crashy", CRASH_SENDERS)
        wait_until(lambda: holding(app, "crashy", senders=CRASH_SENDERS), timeout=UP_SECONDS, what="the node up")
        start(app, pid)
        for kill in range(KILLS):
            server.wait_for(len(server.messages) + draw.randint(20, 60), timeout=DRAIN_SECONDS)
            if kill % 2 == 0:
                node.signal_group(signal.SIGKILL)  # its bookkeeping process too
                with_bookkeeper += 1
            else:
                node.signal(signal.SIGKILL)
            node.wait()
            arrived, restarted = len(server.messages), time.monotonic()
            node = nodes("crashy", CRASH_SENDERS)
            server.wait_for(arrived + 1, timeout=DRAIN_SECONDS)
            resumed_after.append(time.monotonic() - restarted)
        wait_until(lambda: statuses(app) == {"sent": CRASH_MESSAGES}, timeout=DRAIN_SECONDS, what="all sent")
        arrivals = Arrivals(app, server)
    tally("crash", kills=KILLS, with_the_bookkeeper=with_bookkeeper, connections=CRASH_SENDERS,
          duplicates=arrivals.extra, lost=len(arrivals.lost),
          resumed_after=f"{max(resumed_after):.1f} s at most", took=f"{time.monotonic() - began:.1f} s")
    assert not arrivals.lost and not arrivals.strangers
    assert arrivals.extra <= KILLS * CRASH_SENDERS
    assert statuses(app) == {"sent": CRASH_MESSAGES}
    assert _one_accepted_attempt_each(app)
    # Well inside the 30 s lease on the name: the restarted node did not wait for it.
    assert max(resumed_after) < 25, resumed_after


# --- the bookkeeper alone ---------------------------------------------------------------------

KEEPER_MESSAGES = 400
KEEPER_SENDERS = 2
KEEPER_KILLS = 4
KEEPER_CLAIM_LEASE = 60.0


def _bookkeeper_of(node_pid: int) -> int | None:
    """The bookkeeping process the node runs now, from /proc (its child running the module)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if int(fields[1]) == node_pid and fields[0] not in ("Z", "X") and b"scheduler.bookkeeper" in command:
            return int(entry)
    return None


def test_a_bookkeeper_killed_mid_drain_is_replaced_at_once_and_nothing_waits_for_a_lease(
        app, seed, nodes, tally):
    pid = seed["partition_id"]
    draw = random.Random(5)
    replaced_after, gaps = [], []
    with SmtpServer(data_delay=0.02) as server:
        configure(app, pid, server, batch_size=40, sleep_minutes=0)
        queue_messages(app, pid, KEEPER_MESSAGES)
        node = nodes("keeper", KEEPER_SENDERS, MAILSENDER_LEASE_SECONDS=KEEPER_CLAIM_LEASE)
        wait_until(lambda: holding(app, "keeper", senders=KEEPER_SENDERS), timeout=UP_SECONDS, what="the node up")
        start(app, pid)
        began = time.monotonic()
        for _ in range(KEEPER_KILLS):
            server.wait_for(len(server.messages) + draw.randint(30, 60), timeout=DRAIN_SECONDS)
            child = wait_until(lambda: _bookkeeper_of(node.process.pid), what="the bookkeeping process")
            os.kill(child, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: _bookkeeper_of(node.process.pid) not in (None, child), timeout=30, every=0.02,
                       what="another bookkeeping process")
            replaced_after.append(time.monotonic() - killed)
        wait_until(lambda: statuses(app) == {"sent": KEEPER_MESSAGES}, timeout=DRAIN_SECONDS, what="all sent")
        drained = time.monotonic() - began
        times = sorted(m.at for m in server.messages)
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        arrivals = Arrivals(app, server)
    tally("bookkeeper", kills=KEEPER_KILLS, replaced_after=f"{max(replaced_after):.2f} s at most",
          duplicates=arrivals.extra, lost=len(arrivals.lost), drained=f"{drained:.1f} s",
          longest_gap=f"{max(gaps):.1f} s", claim_lease=f"{KEEPER_CLAIM_LEASE:.0f} s")
    assert max(replaced_after) <= 2.0, replaced_after
    assert not arrivals.lost and not arrivals.strangers
    assert arrivals.extra <= KEEPER_KILLS  # an outcome lost with the process, at most
    # Nothing waited for a claim's lease to run out: no pause in the drain near one.
    assert max(gaps) < KEEPER_CLAIM_LEASE / 3, node.output()[-4000:]
