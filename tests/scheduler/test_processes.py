"""Real node processes (`flask --app webapp serve`) on one database: no double sends, crashes, SIGTERM."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest
from sqlalchemy import select

from tests.conftest import SECRET_KEY
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, Node, SenderInstance

ROOT = pathlib.Path(__file__).resolve().parents[2]


class NodeProcess:
    """`flask --app webapp serve` as its own process, with a short node lease and a 0.2 s minute."""

    def __init__(self, db_url: str, folder: pathlib.Path, name: str, senders: int = 1):
        instance = folder / f"instance-{name}"
        instance.mkdir(parents=True, exist_ok=True)
        # A short lease on the name, so that a restart after SIGKILL takes over within seconds.
        (instance / "config.py").write_text("MAILSENDER_NODE_LEASE_SECONDS = 2.0\n")
        self.log_path = folder / f"{name}.log"
        self.env = {**os.environ, "DATABASE_URL": db_url, "MAILSENDER_INSTANCE": str(instance),
                    "MAILSENDER_SECRET_KEY": SECRET_KEY, "NODE_NAME": name, "MAILSENDER_SENDERS": str(senders),
                    "MAILSENDER_MINUTE_SECONDS": "0.2", "MAILSENDER_SMTP_COMMAND_TIMEOUT": "5",
                    "MAILSENDER_MONITOR": "0"}  # its notifications would arrive at the test's server
        self.name = name
        self.process: subprocess.Popen | None = None
        self.port: int | None = None  # its HTTP port on loopback, from start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "NodeProcess":
        self.port = SmtpServer.free_port()
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "webapp", "serve", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def signal_group(self, number: int) -> None:
        """To the node and its bookkeeping process at once, as Ctrl-C or a service manager does."""
        os.killpg(self.process.pid, number)

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def end(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if not self.log.closed:
            self.log.close()


@pytest.fixture
def node_processes(db_url, tmp_path):
    started: list[NodeProcess] = []

    def launch(name: str, senders: int = 1) -> NodeProcess:
        process = NodeProcess(db_url, tmp_path, name, senders).start()
        started.append(process)
        return process

    yield launch
    for process in started:
        process.end()


def batches_ended_since(app, moment, *names) -> bool:
    """Every sender of the named nodes has said (in its heartbeat) that a batch of its ended
    after `moment`: none is still in the middle of one begun before."""
    with app.app_context():
        nodes = db.session.scalars(select(Node.id).where(Node.name.in_(names))).all()
        ends = db.session.scalars(select(SenderInstance.last_batch_end_at)
                                  .where(SenderInstance.node_id.in_(nodes))).all()
        db.session.rollback()
        return bool(ends) and all(end is not None and end > moment for end in ends)


def holding(app, *names, senders: int) -> bool:
    """Every named node holds its name and has defined its senders."""
    with app.app_context():
        now = utcnow()
        live = db.session.scalars(select(Node).where(Node.name.in_(names), Node.lease_until > now)).all()
        defined = db.session.scalars(select(SenderInstance).where(
            SenderInstance.node_id.in_([n.id for n in live]))).all()
        db.session.rollback()
        return len(live) == len(names) and len(defined) == senders * len(names)


@pytest.mark.databases
def test_two_node_processes_on_one_queue_never_send_a_message_twice(app, seed, node_processes):
    pid = seed["partition_id"]
    with SmtpServer(data_delay=0.004) as server:
        configure(app, pid, server, batch_size=10, sleep_minutes=0)
        queue_messages(app, pid, 300)
        alpha, beta = node_processes("alpha", senders=2), node_processes("beta", senders=2)
        wait_until(lambda: holding(app, "alpha", "beta", senders=2), timeout=120, what="both nodes up")
        start(app, pid)
        server.wait_for(300, timeout=120)
        wait_until(lambda: statuses(app) == {"sent": 300}, what="all sent")
        all_sent = utcnow()
        wait_until(lambda: batches_ended_since(app, all_sent, "alpha", "beta"), what="every sender idle")
        ids = server.message_ids()
    assert len(ids) == 300 and len(set(ids)) == 300, alpha.output() + beta.output()
    with app.app_context():
        nodes = set(db.session.scalars(select(DeliveryAttempt.node)).all())
    assert nodes == {"alpha", "beta"}


def test_sigkill_mid_batch_then_restart_delivers_everything_with_at_most_one_duplicate(app, seed, node_processes):
    pid = seed["partition_id"]
    # After 15 messages the server holds the next one's end of data until the kill: the kill
    # lands mid-batch, with one message in flight, however slow the machine.
    release = threading.Event()
    with SmtpServer(data_gate=release, hold_after=15) as server:
        configure(app, pid, server, batch_size=100, sleep_minutes=0)
        queue_messages(app, pid, 60)
        first = node_processes("solo")
        wait_until(lambda: holding(app, "solo", senders=1), timeout=120, what="the node up")
        start(app, pid)
        server.wait_for(15)
        first.signal(signal.SIGKILL)
        first.wait()
        assert len(server.messages) < 60, "the batch ended before the kill"
        release.set()

        node_processes("solo")
        server.wait_for(60)
        wait_until(lambda: statuses(app) == {"sent": 60}, what="all sent after the restart")
        all_sent = utcnow()
        wait_until(lambda: batches_ended_since(app, all_sent, "solo"), what="the sender idle")
        ids = server.message_ids()
    assert len(set(ids)) == 60
    assert len(ids) - len(set(ids)) <= 1


def _terminate_mid_drain(app, pid, node_processes, name: str, *, senders: int, messages: int,
                         data_delay: float, arrived_first: int, terminate) -> int:
    """Starts a node on `messages`, ends it with `terminate(node)` once `arrived_first` have
    arrived, and checks that it exits cleanly with every outcome settled: how many arrived.

    From then on the server holds each end of data until the signal is sent: the signal lands
    with messages in flight, however slow the machine."""
    release = threading.Event()
    with SmtpServer(data_delay=data_delay, data_gate=release, hold_after=arrived_first) as server:
        configure(app, pid, server, batch_size=100, sleep_minutes=0)
        queue_messages(app, pid, messages)
        node = node_processes(name, senders=senders)
        wait_until(lambda: holding(app, name, senders=senders), timeout=120, what="the node up")
        start(app, pid)
        server.wait_for(arrived_first)
        terminate(node)
        release.set()
        assert node.wait(60) == 0, node.output()
        arrived = len(server.messages)
    counts = statuses(app)
    assert counts.get("sending", 0) == 0
    assert counts.get("sent", 0) == arrived and counts.get("queued", 0) == messages - arrived
    return arrived


def test_sigterm_finishes_the_message_in_flight_and_releases_the_rest(app, seed, node_processes):
    _terminate_mid_drain(app, seed["partition_id"], node_processes, "polite", senders=1, messages=30,
                         data_delay=0.25, arrived_first=2, terminate=lambda node: node.signal(signal.SIGTERM))
    with app.app_context():
        polite = db.session.scalars(select(Node).where(Node.name == "polite")).one()
        assert polite.lease_until <= utcnow()  # it no longer counts as a live node
        assert not any(s.running for s in db.session.scalars(select(SenderInstance)))


def test_sigterm_to_the_process_group_still_commits_every_outcome(app, seed, node_processes):
    # The bookkeeping process gets the signal too; it must not die with outcomes unwritten.
    _terminate_mid_drain(app, seed["partition_id"], node_processes, "grouped", senders=2, messages=40,
                         data_delay=0.1, arrived_first=4,
                         terminate=lambda node: node.signal_group(signal.SIGTERM))
