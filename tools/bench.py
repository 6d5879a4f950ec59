"""`make bench`: this node's senders against a bare aiosmtplib loop, and one node against two on PostgreSQL.

1. Queues 10,000 messages of about 2 KB (in a child process), once, into a template database.
2. Drains them with this node's senders (MAILSENDER_SENDERS connections) into smtp-sink, a C
   SMTP sink from Debian's postfix package on loopback; the clock starts at the first claim
   and stops at the last outcome's commit. Each drain runs in a child process of its own, on
   a fresh copy of the template, so that its peak memory is the node's own.
3. Sends the same stored bytes with a bare aiosmtplib loop over as many connections, with no
   database.
4. Copies the template, row for row, into a PostgreSQL database of its own (TEST_DATABASE_URL,
   else postgres@127.0.0.1:5432; dropped at the end), and drains fresh copies of it into the
   same sink with real node processes (`flask --app webapp serve`, as
   tests/scheduler/test_processes.py starts them): one node, then two on the one queue. The
   clock starts when Start is committed, with the nodes up, and stops at the last outcome's
   commit. Each node's peak memory is the VmHWM of its process and of its bookkeeping process.
5. Prints every rate, the two ratios, and the peak memory per node.

Steps 2 and 3 alternate for a few rounds (bare, node, bare, node, …, bare), and each node run
is compared with the mean of the bare runs on either side of it: this machine's speed drifts
by a third within a minute (other tenants of the host), and a lone pair of runs measured the
drift as much as the engine. The median of the rounds' ratios is the figure. The PostgreSQL
runs alternate the same way (one node, two nodes, one node, …).

Each PostgreSQL run also says where its time went: the CPU seconds per thousand messages of
each node's two processes and of the database's sessions, how busy the machine was, and what
the sessions were seen doing at each look at the queue (on CPU, waiting for a lock, for the
WAL's flush, or idle in a transaction while their node works). A machine at 100 % is busy with
more than the bench: its figures are then the share of the cores the bench got.

10,000 messages in batches of 250 give each of one node's 4 senders ten batches, and each of
two nodes' eight senders five: with a count that does not divide so, some senders run out of
work before the others and the drain's end waits for the last batch (`--count`,
`--batch-size`, `--senders`).

smtp-sink offers PIPELINING, as the relays a support team uses do, and the node then sends
MAIL, RCPT and DATA in one write; aiosmtplib waits for each reply in turn. `--no-pipelining`
runs a sink that does not offer it, so that both make the same round trips.

Not a test: the figures depend on the machine. Goals: SQLite's node at least 0.8 of the bare
loop; two nodes on PostgreSQL at least as fast as one (ideally 1.6 times); under 200 MB a node.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
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
POSTGRES_ROUNDS = 1
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # TEST_DATABASE_URL, if set, instead
# A drain that takes longer has gone wrong (a node stuck, the sink gone): the bench ends instead.
DRAIN_SECONDS = 300
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


def make_app(database_url: str, instance: str):
    os.environ["MAILSENDER_INSTANCE"] = instance
    from cryptography.fernet import Fernet

    from webapp import create_app

    return create_app({
        "SQLALCHEMY_DATABASE_URI": database_url,
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

    app = make_app(f"sqlite:///{database_path}", instance)
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

    app = make_app(f"sqlite:///{database_path}", instance)
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


def run_node_child(template: str, folder: str, instance: str) -> dict:
    """One drain in a child process, on a fresh copy of the template: its figures."""
    database_path = os.path.join(folder, "drain.sqlite")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(database_path + suffix)
    shutil.copyfile(template, database_path)
    result = subprocess.run([sys.executable, "-m", "tools.bench", *shared_arguments(),
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


# --- PostgreSQL: one node process, then two on one queue ----------------------------------


def copy_queue(sqlite_path: str, postgres_url: str) -> None:
    """The queued template, row for row, into an empty PostgreSQL database: the same messages and
    bytes as the SQLite runs drain, in seconds rather than the minute that queueing them takes."""
    from sqlalchemy import create_engine, select, text

    from webapp.core import models  # noqa: F401  (registers the tables)
    from webapp.core.database import db
    from webapp.core.migrations import upgrade

    source, target = create_engine(f"sqlite:///{sqlite_path}"), create_engine(postgres_url)
    try:
        upgrade(target)
        tables = db.metadata.sorted_tables
        with source.connect() as reading, target.begin() as writing:
            # What the migration may have put in is in the template too.
            names = ", ".join(f'"{table.name}"' for table in tables)
            writing.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            for table in tables:
                for rows in reading.execution_options(yield_per=1000).execute(select(table)).mappings().partitions():
                    writing.execute(table.insert(), [dict(row) for row in rows])
                if "id" in table.c:  # ids were copied as they are: the next one follows the largest
                    writing.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{table.name}\"', 'id'), max(id)) "
                                         f"FROM \"{table.name}\""))
        with target.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))  # what autovacuum would do within a minute
    finally:
        source.dispose()
        target.dispose()


def peak_mb(pid: int) -> float:
    """A live process's peak resident set (VmHWM from /proc) in MB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (the node's bookkeeping process)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # "pid (command) state ppid …": the command may hold spaces and parentheses.
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """The CPU time a live process has used so far (user and system); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle, iowait


def drain_with_processes(database_url: str, folder: str, names: list[str]) -> dict:
    """Real node processes (`flask --app webapp serve`, as tests/scheduler/test_processes.py
    starts them), MAILSENDER_SENDERS each, drain one database's queue into the sink: their figures.

    The clock starts when Start is committed (the nodes are up, senders defined, by then) and
    stops at the last outcome's commit (the largest finished_at), so how often this process
    looks at the queue does not count."""
    import pathlib

    from sqlalchemy import func, select, text

    from scheduler.status import set_wanted
    from tests.scheduler.conftest import wait_until
    from tests.scheduler.test_processes import NodeProcess, holding
    from webapp.core.clock import utcnow
    from webapp.core.database import db
    from webapp.core.models import DeliveryAttempt, OutgoingMessage, Partition
    from webapp.core.states import QUEUED, SENDING, SENT, WANTED_RUNNING

    app = make_app(database_url, os.path.join(folder, "instance"))
    nodes = []
    # What the database's sessions of this run were doing, sampled at each look at the queue.
    backends = text("SELECT pid, state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    waits: collections.Counter = collections.Counter()
    backend_cpu: dict[int, float] = {}

    def query(statement, many: bool = False):
        with app.app_context():
            try:
                return db.session.execute(statement).all() if many else db.session.scalar(statement)
            finally:
                db.session.remove()

    launched = time.monotonic()
    try:
        for name in names:
            node = NodeProcess(database_url, pathlib.Path(folder), name, senders=SENDERS)
            node.env["MAILSENDER_SECRET_KEY"] = os.environ["MAILSENDER_SECRET_KEY"]  # the queue's key
            nodes.append(node.start())
        try:
            wait_until(lambda: holding(app, *names, senders=SENDERS), timeout=120, what="the nodes up")
            print(f"    {len(names)} node(s) up in {time.monotonic() - launched:.1f} s", flush=True)
            processes = {node.name: [node.process.pid, *children_of(node.process.pid)] for node in nodes}
            cpu_before = {name: [cpu_seconds(pid) for pid in pids] for name, pids in processes.items()}
            machine_before = machine_cpu()
            backend_cpu = {pid: cpu_seconds(pid) for pid, _, _ in query(backends, many=True)}
            with app.app_context():
                partition_id = db.session.scalars(select(Partition.id)).one()
                started = utcnow()
                set_wanted(partition_id, WANTED_RUNNING, "bench")
                db.session.commit()
                db.session.remove()
            unsettled = (select(func.count()).select_from(OutgoingMessage)
                         .where(OutgoingMessage.status.in_((QUEUED, SENDING))))
            def settled() -> bool:
                for pid, state, wait in query(backends, many=True):
                    backend_cpu.setdefault(pid, 0.0)
                    if state != "idle":  # a session in the pool, between transactions
                        waits[wait if state == "active" else state] += 1
                return query(unsettled) == 0

            wait_until(settled, timeout=DRAIN_SECONDS, every=0.2, what="every message settled")
        except AssertionError as error:
            logs = "\n".join(f"--- {node.name}\n{node.output()[-3000:]}" for node in nodes)
            raise SystemExit(f"{', '.join(names)} on PostgreSQL: {error}\n{logs}")
        machine_after = machine_cpu()
        # Read before the nodes stop: the bookkeeping process is gone once its node has.
        cpu = {name: [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before[name])]
               for name, pids in processes.items()}
        database_cpu = sum(cpu_seconds(pid) - before for pid, before in backend_cpu.items())
        peaks = {node.name: (peak_mb(node.process.pid), sum(map(peak_mb, children_of(node.process.pid))))
                 for node in nodes}
        ended = query(select(func.max(OutgoingMessage.finished_at)))
        sent = query(select(func.count()).select_from(OutgoingMessage).where(OutgoingMessage.status == SENT))
        attempts = dict(query(select(DeliveryAttempt.node, func.count()).group_by(DeliveryAttempt.node), many=True))
    finally:
        for node in nodes:
            node.end()
        with app.app_context():
            db.engine.dispose()
    elapsed = (ended - started).total_seconds()
    busy = (machine_after[0] - machine_before[0]) / max(1, machine_after[1] - machine_before[1])
    return {"elapsed": elapsed, "sent": sent, "rate": sent / elapsed, "attempts": attempts, "peaks": peaks,
            "cpu": cpu, "machine_busy": busy, "database_cpu": database_cpu, "waits": waits}


def postgres_runs(server_url: str, template: str, folder: str, rounds: int) -> list[dict]:
    """One node, two nodes, one node, … (`rounds` runs of two, each between runs of one), each on
    a fresh copy of the queue in a database of the bench's own, dropped afterwards."""
    from tools.bench_scale import drain_copy, postgres_database

    queued_url, drop_queued = postgres_database(server_url)
    runs = []
    try:
        started = time.monotonic()
        copy_queue(template, queued_url)
        print(f"  copied into PostgreSQL in {time.monotonic() - started:.1f} s", flush=True)
        for number in range(2 * rounds + 1):
            names = [f"one-{number}"] if number % 2 == 0 else [f"alpha-{number}", f"beta-{number}"]
            url, drop = drain_copy("PostgreSQL", queued_url, folder)
            try:
                figures = drain_with_processes(url, folder, names)
            finally:
                drop()
            figures["nodes"] = len(names)
            runs.append(figures)
            split = " + ".join(f"{figures['attempts'].get(name, 0)}" for name in names)
            memory = ", ".join(f"{node + bookkeeper:.0f} MB ({node:.0f} + {bookkeeper:.0f})"
                               for node, bookkeeper in figures["peaks"].values())
            label = "one node " if len(names) == 1 else "two nodes"
            # Where the time went: CPU seconds per thousand messages, each node's SMTP process
            # and bookkeeping process, and how busy the whole machine was (other tenants too).
            thousands = max(1, figures["sent"]) / 1000
            cpu = ", ".join(" + ".join(f"{seconds / thousands:.2f}" for seconds in spent)
                            for spent in figures["cpu"].values())
            samples = sum(figures["waits"].values()) or 1
            waits = ", ".join(f"{what} {count / samples:.0%}" for what, count in figures["waits"].most_common(5))
            print(f"  PostgreSQL, {label} {figures['rate']:6.0f} msg/s  ({figures['elapsed']:.2f} s from Start to "
                  f"last commit; {figures['sent']} sent, attempts {split}; peak per node {memory})", flush=True)
            print(f"    CPU s per 1000 messages: nodes {cpu} (SMTP + bookkeeping process), database sessions "
                  f"{figures['database_cpu'] / thousands:.2f}; machine {figures['machine_busy']:.0%} busy; "
                  f"database sessions busy: {waits or 'never seen'}", flush=True)
    finally:
        drop_queued()
    return runs


def shared_arguments() -> list[str]:
    """What a child process of the bench is told of this run's choices."""
    return ["--count", str(MESSAGES), "--senders", str(SENDERS), "--batch-size", str(BATCH_SIZE)]


def main() -> None:
    global MESSAGES, SENDERS, BATCH_SIZE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="messages to queue (default 10,000)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"SQLite node runs, each between two bare runs (default {ROUNDS})")
    parser.add_argument("--postgres-rounds", type=int, default=POSTGRES_ROUNDS,
                        help=f"PostgreSQL runs of two nodes, each between runs of one (default {POSTGRES_ROUNDS})")
    parser.add_argument("--senders", type=int, default=SENDERS,
                        help=f"senders a node, and the bare loop's connections (default {SENDERS})")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"messages a sender claims at once (default {BATCH_SIZE})")
    parser.add_argument("--only", choices=("sqlite", "postgresql"),
                        help="only the SQLite runs (with the bare loop), or only the PostgreSQL ones")
    parser.add_argument("--no-pipelining", action="store_true",
                        help="a sink that does not offer PIPELINING, so that the node too waits for "
                             "each reply in turn, as the bare aiosmtplib loop always does")
    parser.add_argument("--queue", nargs=3, metavar=("DATABASE", "INSTANCE", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--drain", nargs=2, metavar=("DATABASE", "INSTANCE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    MESSAGES = arguments.count or MESSAGES
    SENDERS, BATCH_SIZE = arguments.senders, arguments.batch_size
    if arguments.queue:
        database_path, instance, port = arguments.queue
        queue_messages(database_path, instance, int(port))
        return
    if arguments.drain:
        drain_child(*arguments.drain)
        return

    from cryptography.fernet import Fernet
    from sqlalchemy.exc import OperationalError

    # The children (queueing, each drain, the node processes) share one instance key.
    os.environ.setdefault("MAILSENDER_SECRET_KEY", Fernet.generate_key().decode())
    server_url = os.environ.get("TEST_DATABASE_URL") or POSTGRES_URL
    began = time.monotonic()
    folder = tempfile.mkdtemp(prefix="mailsender-bench-")
    template = os.path.join(folder, "queued.sqlite")
    instance = os.path.join(folder, "instance")
    port = free_port()
    sink = start_sink(port, pipelining=not arguments.no_pipelining)
    bare_rates: list[float] = []
    nodes: list[dict] = []
    postgres: list[dict] = []
    postgres_missing = None
    try:
        print(f"Queueing {MESSAGES} messages …", flush=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "tools.bench", *shared_arguments(),
                        "--queue", template, instance, str(port)], check=True)
        with sqlite3.connect(template) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            stored = [row[0] for row in connection.execute("SELECT rendered FROM message_content ORDER BY message_id")]
        print(f"  queued in {time.monotonic() - started:.1f} s", flush=True)
        print("smtp-sink offers PIPELINING: the node sends MAIL, RCPT and DATA in one write; aiosmtplib "
              "waits for each reply" if not arguments.no_pipelining else
              "smtp-sink does not offer PIPELINING: both wait for each reply", flush=True)
        if arguments.only != "postgresql":
            print(f"SQLite, {arguments.rounds} rounds: a bare aiosmtplib loop and this node's {SENDERS} senders "
                  f"(batch {BATCH_SIZE}, sleep 0) in turn, each over {SENDERS} connections …", flush=True)
            for round_number in range(arguments.rounds + 1):
                bare_rates.append(len(stored) / asyncio.run(bare_loop(stored, port, SENDERS)))
                print(f"  bare aiosmtplib   {bare_rates[-1]:8.0f} msg/s", flush=True)
                if round_number == arguments.rounds:
                    break
                figures = run_node_child(template, folder, instance)
                figures["rate"] = figures["settled"] / figures["elapsed"]
                nodes.append(figures)
                print(f"  node (SQLite)     {figures['rate']:8.0f} msg/s  ({figures['elapsed']:.2f} s from first "
                      f"claim to last commit; {figures['sent']} marked sent; peak {figures['peak_mb']:.0f} MB, of "
                      f"which the bookkeeping process {figures['bookkeeper_mb']:.0f} MB)", flush=True)
        if arguments.only != "sqlite":
            print(f"PostgreSQL at {make_url_host(server_url)}, {arguments.postgres_rounds} round(s): node processes "
                  f"of {SENDERS} senders each (batch {BATCH_SIZE}, sleep 0), one, then two on one queue, in turn …",
                  flush=True)
            try:
                postgres = postgres_runs(server_url, template, folder, arguments.postgres_rounds)
            except OperationalError as error:
                if arguments.only:
                    raise
                postgres_missing = f"PostgreSQL at {make_url_host(server_url)} does not answer: {error}".strip()
                print(f"  {postgres_missing.splitlines()[0]}", flush=True)
    finally:
        sink.terminate()
        sink.wait(5)
        shutil.rmtree(folder, ignore_errors=True)

    average = sum(map(len, stored)) / len(stored)
    print()
    print(f"messages:                 {MESSAGES} of {average:.0f} bytes on average; {SENDERS} senders a node")
    if nodes:
        ratios = [node["rate"] / ((bare_rates[i] + bare_rates[i + 1]) / 2) for i, node in enumerate(nodes)]
        print(f"bare aiosmtplib:          {statistics.median(bare_rates):8.0f} msg/s  (median of {len(bare_rates)})")
        print(f"SQLite, one node:         {statistics.median(n['rate'] for n in nodes):8.0f} msg/s  "
              f"(median of {len(nodes)})")
    ones = [run for run in postgres if run["nodes"] == 1]
    twos = [run for run in postgres if run["nodes"] == 2]
    if postgres:
        print(f"PostgreSQL, one node:     {statistics.median(r['rate'] for r in ones):8.0f} msg/s  "
              f"(median of {len(ones)})")
        print(f"PostgreSQL, two nodes:    {statistics.median(r['rate'] for r in twos):8.0f} msg/s  "
              f"(median of {len(twos)}, both nodes together)")
    if nodes:
        print(f"SQLite one node / bare:   {statistics.median(ratios):8.2f}   (median; each round: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; goal ≥ 0.80)")
    if postgres:
        # Each run of two against the runs of one on either side of it, as the SQLite rounds do.
        scaling = [two["rate"] / ((ones[i]["rate"] + ones[i + 1]["rate"]) / 2) for i, two in enumerate(twos)]
        print(f"PostgreSQL two / one:     {statistics.median(scaling):8.2f}×  (median; each round: "
              f"{', '.join(f'{r:.2f}' for r in scaling)}; goal ≥ 1.0×, ideally ≥ 1.6×)")
    if postgres_missing:
        print(f"PostgreSQL:               not run ({postgres_missing.splitlines()[0]})")
    print("peak memory per node (the node's process and its bookkeeping process together; target < 200 MB):")
    if nodes:
        worst = max(nodes, key=lambda n: n["peak_mb"])
        print(f"  SQLite, one node:       {worst['peak_mb']:8.0f} MB  ({worst['peak_mb'] - worst['bookkeeper_mb']:.0f}"
              f" + {worst['bookkeeper_mb']:.0f}; the largest of {len(nodes)})")
    for label, runs in (("PostgreSQL, one node:   ", ones), ("PostgreSQL, two nodes:  ", twos)):
        peaks = [peak for run in runs for peak in run["peaks"].values()]
        if peaks:
            node, bookkeeper = max(peaks, key=sum)
            print(f"  {label}{node + bookkeeper:8.0f} MB  ({node:.0f} + {bookkeeper:.0f}; the largest of "
                  f"{len(peaks)} nodes)")
    print(f"the bench took {time.monotonic() - began:.0f} s; machine load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


def make_url_host(server_url: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    return f"{url.host}:{url.port or 5432}"


if __name__ == "__main__":
    main()
