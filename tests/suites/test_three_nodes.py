"""Three real node processes on one PostgreSQL (the operations issue): a bulk drain through a
SIGKILL, a SIGTERM and a replacement, checked at a real SMTP server, in the database and in each
node's own /metrics; and Start and Stop pressed on one node, followed by the two others.

Each node is `flask --app webapp serve` with a NODE_NAME of its own, the one shared
MAILSENDER_SECRET_KEY, and HTTP on a loopback port of its own (tests/scheduler/test_processes.py).

Counting the metrics honestly. `mailsender_messages_settled_total{status="sent"}` counts the
outcomes a node's bookkeeper committed, in that node's memory: a node's counter dies with it.
So the sum over the nodes is taken as
    the killed node's last scrape before the kill
  + the SIGTERMed node's last scrape before the signal, plus the messages it still had on the
    wire then (a clean stop finishes them and counts them, but /metrics stops answering with the
    signal: they are counted at the SMTP server, by the connections the node had open)
  + the surviving node's and the replacement's scrapes once all is sent.
For the scrapes before a kill or a signal to be the node's last word, the SMTP server answers no
end of data for a moment (a gate): every outcome already accepted is committed and counted (the
counters summed over the nodes equal the database's sent count, which equals the distinct
Message-IDs arrived), and the messages on the wire stay unanswered until the node is gone or
stopping, so nothing settles between the scrape and the signal.

The sum is then exactly the number of messages, not that plus the duplicates: a duplicate's first
copy went out on a connection of the killed node, whose outcome was never committed (the node died
first), so no counter counted it, and the second copy's outcome is counted once by the node that
sent it. The copies at the server are the messages plus the duplicates, at most one per
connection the killed node had open.

The figures (queueing, drain, the replacement's start) are printed in the terminal summary.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import ADMIN_PASSWORD
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.scheduler.test_processes import NodeProcess, batches_ended_since, holding
from tests.smtp_servers import SmtpServer
from tests.suites.test_pause_and_crash import Arrivals, nodes, tally  # noqa: F401  (fixtures)
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, OutgoingMessage
from webapp.core.states import ATTEMPT_ACCEPTED, SENT

# On two cores shared with other work this took 45 to 125 s, most of it queueing (20 to 90 s);
# the drain, with the kill, the signal and the replacement's start, 20 to 35 s.
MESSAGES = 10_000
# Processes queueing at once: one per core (more only wait for each other here), each committing
# every QUEUE_CHUNK messages, so that no session grows to thousands of objects.
QUEUERS = min(4, max(2, len(os.sched_getaffinity(0))))
QUEUE_CHUNK = 500
SENDERS = 3  # per node
BATCH = 200
NAMES = ("alpha", "beta", "gamma")
SHARE = 0.20  # of the messages, that each node delivers at least
KILL_AT = 2_400  # arrivals when alpha is SIGKILLed
# Beta's deliveries when it is SIGTERMed: above its share, so that it keeps it whatever the others do.
TERM_AT = int(MESSAGES * SHARE) + 300
UP_SECONDS = 120  # a busy two-core machine starts a node process in seconds, not in one
DRAIN_SECONDS = 300
FOLLOW_SECONDS = 5.0  # Start and Stop on one node reach the others within this


# --- what a node says over HTTP ------------------------------------------------------------


def scrape(node: NodeProcess) -> dict[tuple[str, tuple], float]:
    """The node's /metrics, as {(sample name, sorted labels): value}."""
    answer = requests.get(f"{node.url}/metrics", timeout=10)
    answer.raise_for_status()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def sent_counted(node: NodeProcess, partition_id: int) -> int:
    key = ("mailsender_messages_settled_total", (("partition", str(partition_id)), ("status", SENT)))
    return int(scrape(node).get(key, 0))


def senders_running(node: NodeProcess, partition_id: int) -> int | None:
    key = ("mailsender_senders_running", (("node", node.name), ("partition", str(partition_id))))
    return scrape(node).get(key)


def health(node: NodeProcess, path: str = "/healthz") -> int | None:
    """The status /healthz (or /readyz) answers; None when nothing answers."""
    try:
        return requests.get(f"{node.url}{path}", timeout=5).status_code
    except requests.ConnectionError:
        return None


# --- the database and the server -----------------------------------------------------------


def queue_in_parallel(app, partition_id: int, count: int, timeout: float) -> None:
    """queue_messages (enqueue, one message at a time, as the compose path does) in QUEUERS
    forked processes at once, as several web processes would: one process spends much of each
    message waiting on the database's round trips, and 10,000 in one took minutes here."""
    def queue(share: int, worker: int) -> None:
        with app.app_context():
            db.engine.dispose(close=False)  # the parent's connections stay the parent's
        for first in range(0, share, QUEUE_CHUNK):
            queue_messages(app, partition_id, min(QUEUE_CHUNK, share - first), subject=f"Hello {worker}.{first}")

    shares = [count // QUEUERS + (1 if worker < count % QUEUERS else 0) for worker in range(QUEUERS)]
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=queue, args=(share, worker)) for worker, share in enumerate(shares)]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        assert [worker.exitcode for worker in workers] == [0] * QUEUERS, "a queueing process failed or hung"
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(5)


def waiting(condition, *, seen, **bounds):
    """wait_until, saying on a timeout what was last seen (`seen`, which `condition` fills in)."""
    try:
        return wait_until(condition, **bounds)
    except AssertionError as error:
        raise AssertionError(f"{error}; last seen: {seen}") from None


def _sent(app) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(OutgoingMessage)
                                     .where(OutgoingMessage.status == SENT)) or 0
        finally:
            db.session.rollback()


def delivered_by(app) -> dict[str, int]:
    """Accepted deliveries per node name (a replacement counts with the node it replaces)."""
    with app.app_context():
        try:
            return dict(db.session.execute(
                select(DeliveryAttempt.node, func.count()).where(DeliveryAttempt.outcome == ATTEMPT_ACCEPTED)
                .group_by(DeliveryAttempt.node)).all())
        finally:
            db.session.rollback()


def quiet_counts(app, server: SmtpServer, partition_id: int, live: list[NodeProcess], gone: int = 0) -> dict:
    """With the server's gate shut: waits until every message accepted so far is committed and
    counted, and answers each live node's sent counter. Asserted on the way: the counters summed
    (with `gone`, what dead nodes had counted) equal the database's sent count and the distinct
    Message-IDs arrived."""
    seen = {}

    def settled():
        arrived = len(set(server.message_ids()))
        sent = _sent(app)
        counted = {node.name: sent_counted(node, partition_id) for node in live}
        seen.update(arrived=arrived, sent=sent, counted=counted, gone=gone)
        # Read again last: nothing arrived meanwhile.
        return arrived == sent == gone + sum(counted.values()) and len(set(server.message_ids())) == arrived

    waiting(settled, timeout=60, every=0.1, what="every outcome committed and counted", seen=seen)
    return seen["counted"]


def smtp_ports(pid: int, server_port: int) -> set[int]:
    """The local ports of the process's TCP connections to the server, from /proc: which
    connections are the node's, as the server sees them (Received.peer)."""
    inodes = set()
    for fd in _listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.split(":")[1], 16) == server_port:
                ports.add(int(local.split(":")[1], 16))
    return ports


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


@pytest.fixture
def node_trio(nodes):
    """`nodes` (tests/suites/test_pause_and_crash.py), and at the end, whatever the test did,
    each node stopped and then its process group (its bookkeeping process) killed."""
    launched: list[NodeProcess] = []

    def launch(name: str, **config) -> NodeProcess:
        node = nodes(name, SENDERS, MAILSENDER_SMTP_COMMAND_TIMEOUT=30.0, **config)
        launched.append(node)
        return node

    try:
        yield launch
    finally:
        for node in launched:  # all at once: each takes seconds to stop
            if node.process.poll() is None:
                node.signal(signal.SIGTERM)
        for node in launched:
            node.end()
            try:
                os.killpg(node.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- the drain -----------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_three_nodes_drain_ten_thousand_through_a_sigkill_a_sigterm_and_a_replacement(app, seed, node_trio,
                                                                                      tally):
    pid = seed["partition_id"]
    began = time.monotonic()
    gate = threading.Event()  # set: the server answers each end of data; cleared: none until set again
    gate.set()
    smtp_port = SmtpServer.free_port()
    configure(app, pid, smtp_host="127.0.0.1", smtp_port=smtp_port, batch_size=BATCH, sleep_minutes=0)
    # The nodes start meanwhile: their senders wait for Start.
    alpha, beta, gamma = (node_trio(name) for name in NAMES)
    # Forked before any thread of the test's (the SMTP server's) runs.
    queue_in_parallel(app, pid, MESSAGES, timeout=DRAIN_SECONDS)
    queued = time.monotonic()
    with SmtpServer(data_gate=gate, port=smtp_port) as server:
        wait_until(lambda: holding(app, *NAMES, senders=SENDERS), timeout=UP_SECONDS, what="three nodes up")
        assert {health(node) for node in (alpha, beta, gamma)} == {200}
        start(app, pid)
        draining = time.monotonic()

        # SIGKILL alpha (with its bookkeeping process: a machine lost) with messages on its wire.
        server.wait_for(KILL_AT, timeout=DRAIN_SECONDS)
        gate.clear()
        alpha_counted = quiet_counts(app, server, pid, [alpha, beta, gamma])["alpha"]
        alpha_connections = smtp_ports(alpha.process.pid, server.port)
        alpha.signal_group(signal.SIGKILL)
        alpha.wait()
        gate.set()
        assert health(alpha) is None

        # Its replacement, under the same name: /healthz fails or is not answered until the
        # node is up, then answers 200 and goes on doing so.
        replacement = node_trio("alpha")
        restarted, answers = time.monotonic(), []

        def healthy():
            assert replacement.process.poll() is None, replacement.output()[-4000:]
            answers.append(health(replacement))
            return answers[-1] == 200

        waiting(healthy, timeout=UP_SECONDS, what="the replacement's /healthz to answer 200", seen=answers)
        healthy_after = time.monotonic() - restarted
        wait_until(lambda: health(replacement, "/readyz") == 200, timeout=UP_SECONDS, what="the replacement ready")
        assert holding(app, "alpha", senders=SENDERS)

        # SIGTERM beta (with its bookkeeping process, as a service manager does) once it has
        # delivered its share, again with messages on its wire.
        wait_until(lambda: delivered_by(app).get("beta", 0) >= TERM_AT, timeout=DRAIN_SECONDS, every=0.2,
                   what=f"beta's {TERM_AT} deliveries")
        gate.clear()
        beta_counted = quiet_counts(app, server, pid, [replacement, beta, gamma], gone=alpha_counted)["beta"]
        assert health(replacement) == 200
        beta.signal_group(signal.SIGTERM)
        # Its connections, taken after the signal: a sender opens none once the node stops, and
        # the ones with a message on the wire stay open until the server answers it.
        beta_connections = smtp_ports(beta.process.pid, server.port)
        before_release = len(server.messages)
        gate.set()
        assert beta.wait(60) == 0, beta.output()[-4000:]
        beta_finished = sum(1 for message in server.messages[before_release:]
                            if message.peer and message.peer[1] in beta_connections)
        assert health(beta) is None

        wait_until(lambda: statuses(app) == {SENT: MESSAGES}, timeout=DRAIN_SECONDS, what="all sent")
        drained = time.monotonic() - draining
        all_sent = utcnow()
        wait_until(lambda: batches_ended_since(app, all_sent, "alpha", "gamma"), timeout=60,
                   what="every sender left past its batch")
        arrivals = Arrivals(app, server)
        last = {}

        def counted_in_all():
            last.update(alpha=alpha_counted, beta=beta_counted + beta_finished,
                        replacement=sent_counted(replacement, pid), gamma=sent_counted(gamma, pid))
            return sum(last.values()) == MESSAGES

        waiting(counted_in_all, timeout=30, every=0.1, what="the counters to add up", seen=last)
        share = delivered_by(app)

    tally("three nodes", messages=MESSAGES, queued_in=f"{queued - began:.1f} s", drained_in=f"{drained:.1f} s",
          replacement_healthy_after=f"{healthy_after:.1f} s", healthz_answers_before=len(answers) - 1,
          duplicates=arrivals.extra, alpha_connections=len(alpha_connections), beta_finished_on_stop=beta_finished,
          delivered=share, counted=last, took=f"{time.monotonic() - began:.1f} s")
    assert not arrivals.lost and not arrivals.strangers
    assert arrivals.extra <= len(alpha_connections) <= SENDERS
    assert len(server.messages) == MESSAGES + arrivals.extra
    assert sorted(share) == sorted(NAMES) and sum(share.values()) == MESSAGES
    assert all(count >= SHARE * MESSAGES for count in share.values()), share
    # The poll began before the node listened: it saw it not up, then up.
    assert answers[0] != 200 and answers[-1] == 200, answers
    assert beta_finished <= SENDERS


# --- Start and Stop ------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_start_and_stop_pressed_on_one_node_reach_the_other_two_within_five_seconds(app, seed, node_trio, tally):
    pid = seed["partition_id"]
    began = time.monotonic()
    # The product's minute, so that the nodes follow Start and Stop at their real pace (a
    # control tick a second), not at a test's shortened one.
    alpha, beta, gamma = (node_trio(name, MAILSENDER_MINUTE_SECONDS=60.0) for name in NAMES)
    wait_until(lambda: holding(app, *NAMES, senders=SENDERS), timeout=UP_SECONDS, what="three nodes up")
    others = (beta, gamma)
    wait_until(lambda: all(senders_running(node, pid) == 0 for node in others), timeout=30,
               what="the senders defined, and stopped, on beta and gamma")
    answer = requests.post(f"{alpha.url}/api/v1/tokens", json={"username": "admin", "password": ADMIN_PASSWORD},
                           timeout=30)
    assert answer.status_code == 201, answer.text
    bearer = {"Authorization": f"Bearer {answer.json()['token']}"}
    followed = {}
    for button, running in (("start", SENDERS), ("stop", 0)):
        pressed = time.monotonic()
        answer = requests.post(f"{alpha.url}/api/v1/mail-sender/{button}", headers=bearer, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["wanted"] == ("running" if button == "start" else "stopped")
        # Each node's own word on its senders: its /metrics, read off the node itself.
        wait_until(lambda: all(senders_running(node, pid) == running for node in others),
                   timeout=FOLLOW_SECONDS, every=0.05, what=f"{button} followed by beta and gamma")
        followed[button] = time.monotonic() - pressed
        # And the status, which the nodes' heartbeats make, agrees on every node.
        with_status = requests.get(f"{beta.url}/api/v1/mail-sender/status", headers=bearer, timeout=10).json()
        for listed in with_status["nodes"]:
            if listed["name"] in ("beta", "gamma"):
                assert listed["defined"] == SENDERS
    tally("start and stop across nodes", **{f"{button}_followed_in": f"{seconds:.2f} s"
                                            for button, seconds in followed.items()},
          took=f"{time.monotonic() - began:.1f} s")
