"""`make bench`: this node's senders against a bare aiosmtplib loop, both into smtp-sink.

1. Queues 10,000 messages of about 2 KB (in a child process), once, into a template database.
2. Drains them with this node's senders (MAILSENDER_SENDERS connections) into smtp-sink, a C
   SMTP sink from Debian's postfix package on loopback; the clock starts at the first claim
   and stops at the last outcome's commit. Each drain runs in a child process of its own, on
   a fresh copy of the template, so that its peak memory is the node's own.
3. Sends the same stored bytes with a bare aiosmtplib loop over as many connections, with no
   database.
4. Prints both rates, their ratio, and the node's peak memory.

Steps 2 and 3 alternate for a few rounds (bare, node, bare, node, …, bare), and each node run
is compared with the mean of the bare runs on either side of it: this machine's speed drifts
by a third within a minute (other tenants of the host), and a lone pair of runs measured the
drift as much as the engine. The median of the rounds' ratios is the figure.

smtp-sink offers PIPELINING, as the relays a support team uses do, and the node then sends
MAIL, RCPT and DATA in one write; aiosmtplib waits for each reply in turn. `--no-pipelining`
runs a sink that does not offer it, so that both make the same round trips.

Not a test: the figures depend on the machine. Target: a ratio of at least 0.7 on SQLite, and
under 200 MB.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

MESSAGES = 10_000
SENDERS = 4
BATCH_SIZE = 250
ROUNDS = 3
FROM = "bench@acme.test"
TO = "customer@example.test"
SINK_CANDIDATES = ("smtp-sink", "/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink")


def find_smtp_sink() -> str:
    """smtp-sink's path; installs Debian's postfix package when it is missing."""
    for candidate in SINK_CANDIDATES:
        found = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    print("smtp-sink is missing: installing Debian's postfix package …", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(prefix + ["apt-get", "install", "-y", "--no-install-recommends", "postfix"],
                   check=True, env=environment)
    for candidate in SINK_CANDIDATES:
        found = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    raise SystemExit("smtp-sink not found even after installing postfix")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sink(port: int, pipelining: bool = True) -> subprocess.Popen:
    command = [find_smtp_sink()]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to keep root's privileges
    if not pipelining:
        command += ["-p"]
    command += [f"127.0.0.1:{port}", "256"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return sink
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise SystemExit("smtp-sink did not start")


def make_app(database_path: str, instance: str):
    os.environ["MAILSENDER_INSTANCE"] = instance
    from cryptography.fernet import Fernet

    from webapp import create_app

    return create_app({
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{database_path}",
        "MAILSENDER_SECRET_KEY": os.environ.get("MAILSENDER_SECRET_KEY") or Fernet.generate_key().decode(),
        "SECRET_KEY": "bench",
        "NODE_NAME": "bench",
        "MAILSENDER_SENDERS": SENDERS,
    })


def queue_messages(database_path: str, instance: str, port: int) -> None:
    """The child process: a fresh schema, one partition pointed at the sink, and the messages."""
    from webapp.core.database import db
    from webapp.core.directory.departments import create_partition
    from webapp.core.migrations import upgrade
    from webapp.core.models import OutgoingMessage
    from webapp.core.outbox import enqueue
    from webapp.core.settings.store import get_settings
    from webapp.core.states import ORIGINATION

    app = make_app(database_path, instance)
    body = "".join(f"Line {n:03d} of the benchmark's reply, long enough to make about two kilobytes.\n"
                   for n in range(22))
    with app.app_context():
        upgrade(db.engine)
        partition_id = create_partition("Bench").id
        settings = get_settings(partition_id)
        settings.smtp_host, settings.smtp_port = "127.0.0.1", port
        settings.batch_size, settings.sleep_minutes = BATCH_SIZE, 0
        db.session.commit()
        for number in range(MESSAGES):
            enqueue(OutgoingMessage(partition_id=partition_id, kind=ORIGINATION, from_address=FROM,
                                    envelope_from=FROM, to_addresses=[TO], subject=f"Benchmark {number}",
                                    body_text=body), settings)
            if number % 500 == 499:
                db.session.commit()
                db.session.expunge_all()
                settings = get_settings(partition_id)
        db.session.commit()


def drain_with_node(database_path: str, instance: str) -> tuple[float, int]:
    """Runs this node until every message is settled: (seconds from first claim to last commit, count)."""
    from scheduler.node import Node
    from webapp.core.database import db
    from webapp.core.models import Partition
    from webapp.core.states import WANTED_RUNNING

    app = make_app(database_path, instance)
    node = Node(app)
    node.start()
    with app.app_context():
        partition = db.session.query(Partition).one()
        partition.senders_wanted = WANTED_RUNNING
        db.session.commit()
    deadline = time.monotonic() + 600
    while node.bookkeeper.committed < MESSAGES and time.monotonic() < deadline:
        time.sleep(0.02)
    elapsed = node.bookkeeper.last_commit - node.first_claim
    settled = node.bookkeeper.committed
    node.stop()
    return elapsed, settled


async def bare_loop(messages: list[bytes], port: int, connections: int) -> float:
    import aiosmtplib

    pending = list(reversed(messages))

    async def worker():
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        while pending:
            await smtp.sendmail(FROM, [TO], pending.pop())
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - started


def run_node_child(template: str, folder: str, instance: str, count: int) -> dict:
    """One drain in a child process, on a fresh copy of the template: its figures."""
    database_path = os.path.join(folder, "drain.sqlite")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(database_path + suffix)
    shutil.copyfile(template, database_path)
    result = subprocess.run([sys.executable, "-m", "tools.bench", "--count", str(count),
                             "--drain", database_path, instance], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the node's drain failed:\n{result.stderr}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    with sqlite3.connect(database_path) as connection:
        figures["sent"] = connection.execute(
            "SELECT count(*) FROM outgoing_message WHERE status = 'sent'").fetchone()[0]
    return figures


def drain_child(database_path: str, instance: str) -> None:
    """The child process of one drain: prints its figures as one line of JSON."""
    elapsed, settled = drain_with_node(database_path, instance)
    # The node's own process, and its bookkeeping process (ended and waited for by now).
    node_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bookkeeper_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"elapsed": elapsed, "settled": settled, "peak_mb": node_mb + bookkeeper_mb,
                      "bookkeeper_mb": bookkeeper_mb}))


def main() -> None:
    global MESSAGES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="messages to queue (default 10,000)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"node runs, each between two bare runs (default {ROUNDS})")
    parser.add_argument("--no-pipelining", action="store_true",
                        help="a sink that does not offer PIPELINING, so that the node too waits for "
                             "each reply in turn, as the bare aiosmtplib loop always does")
    parser.add_argument("--queue", nargs=3, metavar=("DATABASE", "INSTANCE", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--drain", nargs=2, metavar=("DATABASE", "INSTANCE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    MESSAGES = arguments.count or MESSAGES
    if arguments.queue:
        database_path, instance, port = arguments.queue
        queue_messages(database_path, instance, int(port))
        return
    if arguments.drain:
        drain_child(*arguments.drain)
        return

    from cryptography.fernet import Fernet

    # The children (queueing, each drain) share one instance key.
    os.environ.setdefault("MAILSENDER_SECRET_KEY", Fernet.generate_key().decode())
    folder = tempfile.mkdtemp(prefix="mailsender-bench-")
    template = os.path.join(folder, "queued.sqlite")
    instance = os.path.join(folder, "instance")
    port = free_port()
    sink = start_sink(port, pipelining=not arguments.no_pipelining)
    bare_rates: list[float] = []
    nodes: list[dict] = []
    try:
        print(f"Queueing {MESSAGES} messages …", flush=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "tools.bench", "--count", str(MESSAGES),
                        "--queue", template, instance, str(port)], check=True)
        with sqlite3.connect(template) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            stored = [row[0] for row in connection.execute("SELECT rendered FROM message_content ORDER BY message_id")]
        print(f"  queued in {time.monotonic() - started:.1f} s", flush=True)
        print(f"{arguments.rounds} rounds: a bare aiosmtplib loop and this node's {SENDERS} senders "
              f"(batch {BATCH_SIZE}, sleep 0) in turn, each over {SENDERS} connections …", flush=True)
        print("  smtp-sink offers PIPELINING: the node sends MAIL, RCPT and DATA in one write; aiosmtplib "
              "waits for each reply" if not arguments.no_pipelining else
              "  smtp-sink does not offer PIPELINING: both wait for each reply", flush=True)
        for round_number in range(arguments.rounds + 1):
            bare_rates.append(len(stored) / asyncio.run(bare_loop(stored, port, SENDERS)))
            print(f"  bare aiosmtplib   {bare_rates[-1]:8.0f} msg/s", flush=True)
            if round_number == arguments.rounds:
                break
            figures = run_node_child(template, folder, instance, MESSAGES)
            figures["rate"] = figures["settled"] / figures["elapsed"]
            nodes.append(figures)
            print(f"  node (SQLite)     {figures['rate']:8.0f} msg/s  ({figures['elapsed']:.2f} s from first "
                  f"claim to last commit; {figures['sent']} marked sent; peak {figures['peak_mb']:.0f} MB, of which "
                  f"the bookkeeping process {figures['bookkeeper_mb']:.0f} MB)", flush=True)
    finally:
        sink.terminate()
        sink.wait(5)
        shutil.rmtree(folder, ignore_errors=True)

    ratios = [node["rate"] / ((bare_rates[i] + bare_rates[i + 1]) / 2) for i, node in enumerate(nodes)]
    average = sum(map(len, stored)) / len(stored)
    print()
    print(f"messages:           {MESSAGES} of {average:.0f} bytes on average")
    print(f"node (SQLite):      {statistics.median(n['rate'] for n in nodes):8.0f} msg/s  (median of {len(nodes)})")
    print(f"bare aiosmtplib:    {statistics.median(bare_rates):8.0f} msg/s  (median of {len(bare_rates)})")
    print(f"ratio:              {statistics.median(ratios):8.2f}  (median; each round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; target ≥ 0.70)")
    print(f"node peak memory:   {max(n['peak_mb'] for n in nodes):8.0f} MB  (both processes together; "
          f"target < 200 MB)")


if __name__ == "__main__":
    main()
