"""`make bench-scale`: the window, the API and a claim with a million messages queued and a
million sent.

1. Seeds a database in a child process: BASE messages queued through the real code
   (webapp.core.outbox.enqueue), then multiplied in SQL (each copy with its own ids and queue
   time) until ROWS are queued; as many again are sent, each with its recipient and attempt.
   The queued copies span the last two hours, so that half of them wait longer than the stuck
   age, as they do after an outage; the sent ones span thirty days.
2. Measures, in another child process with the app warm, p50 and p95 of each answer through
   the Flask test client (the senders are stopped), and of a claim of CLAIM messages
   (scheduler.claims.claim_ids) and a claim read and made ready to send (read_claimed and
   refresh_rendering), with priority off and on.
3. Measures again after a settings save of the monitor threshold (no byte changes), and after
   a save of the column width (every queued message's bytes change).
4. Drains, each in a child process of its own, with a real node (scheduler.node.Node: 2
   senders, batch 100, sleep 0, a product minute of 1 s, the monitor on) into smtp-sink on
   loopback, counting in the database each second the messages that became sent over a 15 s
   window after 3 s of warm-up: a baseline database seeded the same way with 10,000 queued and
   10,000 sent (its window ends early when fewer than 2,500 are left, so that it measures the
   rate and not an emptying queue), then a copy of the big one taken before step 3 (so that
   its re-rendering after the column width save is not what is measured), unloaded, then with
   4 client threads posting messages and reading the status, the monitor and a page of queued
   messages throughout: in the node's process (as `flask serve` runs its requests beside its
   node) and in a process of their own. It prints the rates, their ratios, the clients' 5xx and
   "database is locked" counts, and the peak RSS of the node's process and its bookkeeping
   process together.

Runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set (in databases of their own,
created and dropped). Not a test: the figures depend on the machine. Goals: p95 ≤ 30 ms for
each answer, ≤ 50 ms for a claim; the drain rate at this size ≥ 0.9 of that at 10,000, and
under load ≥ 0.5 of that unloaded.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta

ROWS = 1_000_000
BASE = 1_000
CLAIM = 500
SAMPLES = 30
CELL = 20  # the width of one round's column in the table
WARM_UP = 3
ADMIN, PASSWORD = "bench-admin", "bench-pass-1"
FROM = "bench@acme.test"
TO = "customer@example.test"
# The copies' queue times: the queued ones over the last two hours, the sent ones over thirty days.
QUEUED_SPAN = timedelta(hours=2)
SENT_SPAN = timedelta(days=30)
# The drains: a real node with DRAIN_SENDERS senders (batch DRAIN_BATCH, sleep 0) into smtp-sink;
# counted over WINDOW_SECONDS after WARM_UP_SECONDS, at --rows and at BASELINE_ROWS.
BASELINE_ROWS = 10_000
DRAIN_SENDERS = 2
DRAIN_BATCH = 100
DRAIN_MINUTE_SECONDS = 1.0
WARM_UP_SECONDS = 3
WINDOW_SECONDS = 15
# The baseline's window ends early when its queue runs this low: a node can send its 10,000 in
# less than the window, and an emptying queue measures the tail, not the rate.
BASELINE_FLOOR = BASELINE_ROWS // 4
CLIENTS = 4
LOAD_NONE, LOAD_THREADS, LOAD_PROCESS = "none", "threads", "process"
CLIENT_REQUESTS = (
    ("POST /api/v1/messages", "POST", "/api/v1/messages"),
    ("GET /api/v1/mail-sender/status", "GET", "/api/v1/mail-sender/status"),
    ("GET /api/v1/monitor", "GET", "/api/v1/monitor"),
    ("GET /api/v1/messages?status=queued", "GET", "/api/v1/messages?status=queued&limit=50"),
)

ANSWERS = (
    ("/admin/mail-sender page", "page", "/admin/mail-sender"),
    ("Status fragment (HX-Request)", "htmx", "/admin/mail-sender/status"),
    ("Monitor banner (HX-Request)", "htmx", "/admin/mail-sender/monitor/banner"),
    ("GET /api/v1/monitor", "api", "/api/v1/monitor"),
    ("GET /api/v1/mail-sender/status", "api", "/api/v1/mail-sender/status"),
    ("/outbox", "page", "/outbox"),
    ("GET /api/v1/messages?status=queued&limit=50", "api", "/api/v1/messages?status=queued&limit=50"),
)


def make_app(database_url: str, instance: str, **config):
    os.environ["MAILSENDER_INSTANCE"] = instance
    from webapp import create_app

    return create_app({
        "SQLALCHEMY_DATABASE_URI": database_url,
        "MAILSENDER_SECRET_KEY": os.environ["MAILSENDER_SECRET_KEY"],
        "SECRET_KEY": "bench-scale",
        "NODE_NAME": "bench-scale",
        **config,
    })


# --- seeding ------------------------------------------------------------------------------


def seed(database_url: str, instance: str, rows: int) -> None:
    """The child process that seeds: a fresh schema, one partition, its administrator, and the rows."""
    from sqlalchemy import Column, Integer, MetaData, Table, func, select, text

    from webapp.core.clock import utcnow
    from webapp.core.database import db
    from webapp.core.directory.departments import create_partition
    from webapp.core.directory.users import create_user
    from webapp.core.migrations import upgrade
    from webapp.core.models import DeliveryAttempt, MessageContent, MessageRecipient, OutgoingMessage, TZDateTime
    from webapp.core.outbox import enqueue
    from webapp.core.settings.store import get_settings
    from webapp.core.states import ORIGINATION, QUEUED, RCPT_ACCEPTED, SENT

    app = make_app(database_url, instance)
    body = "".join(f"Line {n:02d} of a reply waiting in the backlog.\n" for n in range(8))
    with app.app_context():
        upgrade(db.engine)
        partition = create_partition("Bench")
        create_user(partition, ADMIN, PASSWORD, "admin", email="admin@acme.test")
        settings = get_settings(partition.id)
        # Nowhere to deliver: the senders stay stopped, and a claim is only ever measured.
        settings.smtp_host, settings.smtp_port = "127.0.0.1", 9
        db.session.commit()
        for number in range(BASE):
            enqueue(OutgoingMessage(partition_id=partition.id, kind=ORIGINATION, from_address=FROM,
                                    envelope_from=FROM, to_addresses=[TO], subject=f"Backlog {number}",
                                    body_text=body), settings)
        db.session.commit()

        copies = max(1, rows // BASE)
        now = utcnow()
        metadata = MetaData()
        multiplier = Table("bench_multiplier", metadata, Column("n", Integer, primary_key=True),
                           Column("status", Integer), Column("at", TZDateTime))
        metadata.create_all(db.engine)
        # Copy 0 is the base itself, left queued; copies 1..copies-1 are queued, the next `copies` sent.
        db.session.execute(multiplier.insert(), [
            {"n": n, "status": 0 if n < copies else 1,
             "at": now - QUEUED_SPAN * (1 - n / copies) if n < copies
             else now - SENT_SPAN * (n - copies + 1) / copies}
            for n in range(1, 2 * copies)])
        db.session.commit()

        messages, contents = OutgoingMessage.__table__, MessageContent.__table__
        recipients, attempts = MessageRecipient.__table__, DeliveryAttempt.__table__
        message_span = db.session.scalar(select(func.max(messages.c.id)))
        recipient_span = db.session.scalar(select(func.max(recipients.c.id)))
        m = multiplier.alias("m")

        def copy(table, source, span: int, changed: dict):
            columns = [changed[c.name] if c.name in changed
                       else (source.c.id + m.c.n * span if c.name == "id" else source.c[c.name])
                       for c in table.columns]
            return table.insert().from_select([c.name for c in table.columns],
                                              select(*columns).select_from(source.join(m, text("1 = 1"))))

        started = time.monotonic()
        base = messages.alias("base")
        db.session.execute(copy(messages, base, message_span, {
            "status": _by_copy(m, QUEUED, SENT),
            "queued_at": m.c.at,
            "finished_at": _by_copy(m, None, m.c.at),
            "attempt_count": _by_copy(m, 0, 1),
        }))
        base_contents = contents.alias("base")
        db.session.execute(copy(contents, base_contents, message_span, {
            "message_id": base_contents.c.message_id + m.c.n * message_span}))
        base_recipients = recipients.alias("base")
        db.session.execute(copy(recipients, base_recipients, recipient_span, {
            "message_id": base_recipients.c.message_id + m.c.n * message_span,
            "status": _by_copy(m, base_recipients.c.status, RCPT_ACCEPTED),
            "code": _by_copy(m, None, 250),
            "text": _by_copy(m, None, "2.0.0 Ok: queued"),
        }))
        db.session.execute(attempts.insert().from_select(
            ["id", "message_id", "at", "node", "outcome", "code", "detail", "recipients"],
            select(messages.c.id, messages.c.id, messages.c.queued_at, text("'bench'"), text("'accepted'"),
                   text("250"), text("'2.0.0 Ok: queued'"), text("'[]'"))
            .where(messages.c.status == SENT)))
        db.session.commit()
        multiplier.drop(db.engine)
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect() as connection:
                for table in ("outgoing_message", "message_recipient", "delivery_attempt"):
                    connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                            f"(SELECT max(id) FROM {table}))"))
                connection.commit()
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM ANALYZE"))  # what autovacuum does within minutes
        counted = db.session.execute(select(messages.c.status, func.count()).group_by(messages.c.status)).all()
        print(json.dumps({"seconds": round(time.monotonic() - started, 1),
                          "counts": {status: count for status, count in counted}}))


def _by_copy(m, queued, sent):
    """A column's value in a queued copy, and in a sent one."""
    from sqlalchemy import case, literal, null

    def value(v):
        return null() if v is None else (v if hasattr(v, "compile") else literal(v))
    return case((m.c.status == 0, value(queued)), else_=value(sent))


# --- measuring ----------------------------------------------------------------------------


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples), cuts[18]


def measure(database_url: str, instance: str, samples: int) -> None:
    """The child process that measures: one JSON line per round of figures."""
    from sqlalchemy import update

    from scheduler import claims
    from webapp.core.clock import utcnow
    from webapp.core.database import db
    from webapp.core.models import OutgoingMessage, Partition
    from webapp.core.settings.store import get_settings
    from webapp.core.states import QUEUED

    app = make_app(database_url, instance)
    client = app.test_client()
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert client.post("/login", data={"username": ADMIN, "password": PASSWORD, "csrf_token": token}).status_code == 302
    bearer = {"Authorization": "Bearer " + client.post(
        "/api/v1/tokens", json={"username": ADMIN, "password": PASSWORD}).json["token"]}
    with app.app_context():
        partition_id = db.session.query(Partition.id).scalar()

    def ask(kind: str, path: str):
        headers = bearer if kind == "api" else ({"HX-Request": "true"} if kind == "htmx" else {})
        response = client.get(path, headers=headers)
        assert response.status_code in (200, 304), f"{path}: {response.status_code}"

    def timed(action, count: int) -> tuple[float, float]:
        for _ in range(WARM_UP):
            action()
        seen = []
        for _ in range(count):
            started = time.perf_counter()
            action()
            seen.append((time.perf_counter() - started) * 1000)
        return percentiles(seen)

    def claim(priority: bool, ready: bool):
        """One claim of CLAIM messages (and, when `ready`, their reading and refresh), put back
        at the end of the queue afterwards, so that the next claim takes messages not claimed yet."""
        def action():
            with app.app_context():
                connection = db.engine.connect()
                ids = claims.claim_ids(connection, partition_id, "bench-scale/claim/0", CLAIM,
                                       priority_enabled=priority, lease_seconds=120)
                connection.close()
                if ready:
                    batch = claims.read_claimed(ids, "bench-scale/claim/0", priority)
                    claims.refresh_rendering(batch, get_settings(partition_id))
                action.ids = ids
        def put_back():
            with app.app_context():
                db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id.in_(action.ids)).values(
                    status=QUEUED, claim_owner=None, lease_until=None,
                    queued_at=utcnow()))
                db.session.commit()
        seen = []
        for number in range(WARM_UP + max(10, samples // 2)):
            started = time.perf_counter()
            action()
            if number >= WARM_UP or ready:
                seen.append((time.perf_counter() - started) * 1000)
            put_back()
        return percentiles(seen)

    def round_of(label: str) -> dict:
        figures = {"label": label}
        for name, kind, path in ANSWERS:
            figures[name] = timed(lambda: ask(kind, path), samples)
        figures[f"claim {CLAIM} (priority off)"] = claim(False, False)
        figures[f"claim {CLAIM} (priority on)"] = claim(True, False)
        figures[f"claim, read, refresh {CLAIM}"] = claim(False, True)
        return figures

    def save(field: str, value) -> None:
        current = client.get("/api/v1/mail-sender/settings", headers=bearer).json
        answer = client.put("/api/v1/mail-sender/settings", headers=bearer,
                            json={"version": current["version"], field: value})
        assert answer.status_code == 200, answer.text

    print(json.dumps(round_of("as seeded")), flush=True)
    save("monitor_pending_threshold", 5000)
    print(json.dumps(round_of("threshold saved")), flush=True)
    save("column_width", 72)
    print(json.dumps(round_of("column width saved")), flush=True)


# --- draining -----------------------------------------------------------------------------


def rss_mb(pid: int | None) -> float:
    """A live process's resident set now (VmRSS from /proc), 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Clients:
    """CLIENTS threads, each posting a message, then reading the status, the monitor and a page of
    queued messages, in turn, through its own test client: in the node's process, as `flask serve`
    runs its requests beside its node, or in a process of their own (a web server apart)."""

    def __init__(self, app, bearer: dict):
        self.app, self.bearer = app, bearer
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answers: collections.Counter[str] = collections.Counter()
        self.server_errors = 0
        self.locked = 0
        self.failures: list[str] = []
        self.milliseconds: list[float] = []
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(CLIENTS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            if thread.ident is not None:  # started (a drain that claimed nothing starts none)
                thread.join(60)

    def figures(self) -> dict:
        return {"answers": dict(self.answers), "server_errors": self.server_errors, "locked": self.locked,
                "failures": self.failures[:5], "failed": len(self.failures),
                "ms": list(percentiles(self.milliseconds)) if len(self.milliseconds) > 1 else None}

    @classmethod
    def of(cls, app) -> "Clients":
        token = app.test_client().post("/api/v1/tokens", json={"username": ADMIN, "password": PASSWORD}).json["token"]
        return cls(app, {"Authorization": "Bearer " + token})

    def run(self, number: int) -> None:
        client = self.app.test_client()
        sequence = 0
        while not self.stopping.is_set():
            for name, method, path in CLIENT_REQUESTS:
                sequence += 1
                body = {"kind": "origination", "to": [TO], "subject": f"Under load {number}-{sequence}",
                        "body_text": "Posted while the node drains the backlog.\n"} if method == "POST" else None
                started = time.perf_counter()
                try:
                    response = client.open(path, method=method, json=body, headers=self.bearer)
                    status, text = response.status_code, response.get_data(as_text=True)
                except Exception as error:  # a 500 the app did not turn into an answer
                    status, text = 599, repr(error)
                elapsed = (time.perf_counter() - started) * 1000
                with self.lock:
                    self.answers[name] += 1
                    self.milliseconds.append(elapsed)
                    if status >= 500:
                        self.server_errors += 1
                        self.failures.append(f"{name}: {status} {text[:200]}")
                    elif status >= 400:
                        self.failures.append(f"{name}: {status} {text[:200]}")
                    if "database is locked" in text:
                        self.locked += 1
                if self.stopping.is_set():
                    return


class LockedInLogs(logging.Handler):
    """Counts the node's log records that say "database is locked" (the bookkeeping process's
    are counted in its stderr by the parent)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0
        self.warnings: list[str] = []  # the first few, to print

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        if "database is locked" in text:
            self.count += 1
        if len(self.warnings) < 5:
            self.warnings.append(f"{record.name}: {record.getMessage()[:300]}")


def clients_apart(database_url: str, instance: str) -> None:
    """The child process of the clients apart from the node: they run until a line on stdin."""
    clients = Clients.of(make_app(database_url, instance, MAILSENDER_MONITOR=False))
    clients.start()
    print("started", flush=True)
    sys.stdin.readline()
    clients.stop()
    print(json.dumps(clients.figures()), flush=True)


def drain(database_url: str, instance: str, port: int, load: str) -> None:
    """The child process of one drain: a real node sends into the sink for WARM_UP_SECONDS, then
    for WINDOW_SECONDS (or until fewer than BASELINE_FLOOR are queued) while the messages that
    become sent are counted in the database each second. `load`: LOAD_NONE, or the clients posting
    and reading throughout, in the node's process (LOAD_THREADS) or in one of their own
    (LOAD_PROCESS). One JSON line."""
    from sqlalchemy import func, select

    from scheduler.node import Node
    from scheduler.status import set_wanted
    from webapp.core.database import db
    from webapp.core.directory.mailboxes import create_mailbox
    from webapp.core.models import DeliveryAttempt, Mailbox, OutgoingMessage, Partition
    from webapp.core.settings.store import get_settings
    from webapp.core.states import QUEUED, SENT, WANTED_RUNNING

    locked_in_logs = LockedInLogs()
    logging.getLogger().addHandler(locked_in_logs)
    app = make_app(database_url, instance, MAILSENDER_SENDERS=DRAIN_SENDERS,
                   MAILSENDER_MINUTE_SECONDS=DRAIN_MINUTE_SECONDS)
    with app.app_context():
        partition_id = db.session.query(Partition.id).scalar()
        # The clients' From; the drain at --rows that comes second finds it made by the first.
        mailbox = db.session.scalars(select(Mailbox).where(Mailbox.partition_id == partition_id)).first() \
            or create_mailbox(partition_id, {"address": FROM, "name": "Bench"}, actor="bench-scale")
        settings = get_settings(partition_id)
        settings.smtp_host, settings.smtp_port = "127.0.0.1", port
        settings.batch_size, settings.sleep_minutes = DRAIN_BATCH, 0
        settings.origination_from_mailbox_id = mailbox.id
        settings.version += 1  # a save that leaves the bytes as they are
        db.session.commit()

    def queued() -> int:
        with app.app_context():
            try:
                return db.session.scalar(select(func.count()).select_from(OutgoingMessage).where(
                    OutgoingMessage.partition_id == partition_id, OutgoingMessage.status == QUEUED))
            finally:
                db.session.remove()

    def sent_since(mark: int) -> int:
        """Messages sent now that have an attempt newer than `mark`: those that became sent since."""
        with app.app_context():
            try:
                return db.session.scalar(select(func.count()).select_from(OutgoingMessage).where(
                    OutgoingMessage.status == SENT,
                    OutgoingMessage.id.in_(select(DeliveryAttempt.message_id).where(DeliveryAttempt.id > mark))))
            finally:
                db.session.remove()

    def last_attempt() -> int:
        with app.app_context():
            try:
                return db.session.scalar(select(func.coalesce(func.max(DeliveryAttempt.id), 0)))
            finally:
                db.session.remove()

    clients = Clients.of(app) if load == LOAD_THREADS else None
    apart = None
    node = Node(app)
    node.start()
    peak_rss = 0.0

    def note_rss() -> float:
        nonlocal peak_rss
        both = rss_mb(os.getpid()) + rss_mb(node.bookkeeper.child_pid)
        peak_rss = max(peak_rss, both)
        return both

    try:
        with app.app_context():
            set_wanted(partition_id, WANTED_RUNNING, "bench-scale")
            db.session.commit()
        asked = time.monotonic()
        while node.first_claim is None:
            if time.monotonic() - asked > 300:
                raise SystemExit("the node claimed nothing in 300 s")
            note_rss()
            time.sleep(0.05)
        first_claim = node.first_claim - asked
        if clients:
            clients.start()
        if load == LOAD_PROCESS:
            apart = subprocess.Popen([sys.executable, "-m", "tools.bench_scale", "--clients", database_url, instance],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert apart.stdout.readline().strip() == "started"
        warm_until = time.monotonic() + WARM_UP_SECONDS
        while time.monotonic() < warm_until:
            note_rss()
            time.sleep(0.2)
        queued_before = queued()
        mark = last_attempt()
        started = time.monotonic()
        samples = []  # (seconds since the window began, messages sent since)
        for second in range(1, WINDOW_SECONDS + 1):
            time.sleep(max(0.0, started + second - time.monotonic()))
            note_rss()
            samples.append((time.monotonic() - started, sent_since(mark)))
            if queued_before - samples[-1][1] < BASELINE_FLOOR:
                break
        queued_after = queued()
    finally:
        if clients:
            clients.stop()
        node.stop()
        # Read before the clients' process is waited for, so that it is not counted among the children.
        rusage_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                     + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        if apart:
            answered, _ = apart.communicate("stop\n", timeout=120)
            clients_apart_figures = json.loads(answered.strip().splitlines()[-1])
    elapsed, sent = samples[-1]
    steps = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip([(0.0, 0)] + samples, samples)]
    figures = {
        "rate": sent / elapsed, "sent": sent, "seconds": elapsed, "first_claim": first_claim,
        "per_second": [min(steps), statistics.median(steps), max(steps)],
        "queued": [queued_before, queued_after],
        # Each process's peak over its life, summed (the bookkeeping process has been waited for).
        "rusage_mb": rusage_mb,
        "sampled_mb": peak_rss,
        "locked_in_logs": locked_in_logs.count,
        "warnings": locked_in_logs.warnings,
        "lost_races": node.bookkeeper.lost_races,
    }
    if clients:
        figures["clients"] = clients.figures()
    if apart:
        figures["clients"] = clients_apart_figures
    print(json.dumps(figures), flush=True)


# --- the run ------------------------------------------------------------------------------


def child(*arguments: str) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "tools.bench_scale", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench-scale {arguments[0]} failed:\n{result.stderr[-4000:]}")
    figures = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if arguments[0] == "--drain":
        # The bookkeeping process logs to the stderr it shares with the node's process.
        figures[0]["locked_in_stderr"] = result.stderr.count("database is locked")
    return figures


def drain_copy(backend: str, url: str, folder: str):
    """A copy of a seeded database for the drains, so that the settings saves of the measuring
    (after a column width save every queued message is rendered again, a slice a claim) do not
    slow its drain and not the baseline's. (its URL, what drops it)"""
    if backend == "SQLite":
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        copy = os.path.join(folder, "drain-" + os.path.basename(path))
        shutil.copyfile(path, copy)
        return f"sqlite:///{copy}", None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    source = make_url(url)
    name = f"{source.database}_drain"
    admin = create_engine(source.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{source.database}"'))

    def drop():
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return source.set(database=name).render_as_string(hide_password=False), drop


def run_drain(url: str, instance: str, port: int, load: str, what: str) -> dict:
    print(f"  draining {what} …", flush=True)
    started, load_average = time.monotonic(), os.getloadavg()[0]
    [figures] = child("--drain", url, instance, str(port), load)
    figures["load_average"] = load_average
    figures["wall"] = time.monotonic() - started
    return figures


def print_drain(backend: str, rows: int, baseline: dict, at_size: dict, threads: dict, apart: dict) -> None:
    print(f"\n{backend}: drain rate, a real node ({DRAIN_SENDERS} senders, batch {DRAIN_BATCH}, sleep 0, minute "
          f"{DRAIN_MINUTE_SECONDS:g} s) into smtp-sink on loopback; messages that became sent, counted in the "
          f"database each second over {WINDOW_SECONDS} s (the baseline: until fewer than {BASELINE_FLOOR:,} are queued) "
          f"after {WARM_UP_SECONDS} s of warm-up from the first claim. load: the machine's 1-minute load average "
          f"before each drain, on {os.cpu_count()} cores shared with other work")
    runs = ((f"{BASELINE_ROWS:,} queued + {BASELINE_ROWS:,} sent", baseline),
            (f"{rows:,} queued + {rows:,} sent", at_size),
            (f"  with {CLIENTS} clients in the node's process", threads),
            (f"  with {CLIENTS} clients in a process apart", apart))
    width = max(len(name) for name, _ in runs)
    print(f"{'':{width}}  {'msg/s':>7}  {'window':>6}  {'each second min/med/max':>23}  {'queued at start → end':>23}  "
          f"{'1st claim':>9}  {'peak RSS':>8}  {'load':>5}")
    for name, figures in runs:
        low, middle, high = figures["per_second"]
        before, after = figures["queued"]
        print(f"{name:{width}}  {figures['rate']:7.0f}  {figures['seconds']:5.1f}s  "
              f"{f'{low:.0f} / {middle:.0f} / {high:.0f}':>23}  "
              f"{f'{before:,} → {after:,}':>23}  {figures['first_claim']:8.1f}s  {figures['rusage_mb']:5.0f} MB  {figures['load_average']:5.2f}")
    print(f"at {rows:,} against {BASELINE_ROWS:,}:  {at_size['rate'] / baseline['rate']:.2f}  (goal ≥ 0.9)")
    print(f"loaded against unloaded:  {threads['rate'] / at_size['rate']:.2f} with the clients in the node's process "
          f"(as `flask serve` runs them), {apart['rate'] / at_size['rate']:.2f} with them apart  (goal ≥ 0.5)")
    for where, figures in (("in the node's process", threads), ("apart", apart)):
        clients = figures["clients"]
        answers = ", ".join(f"{name} {count}" for name, count in clients["answers"].items())
        latency = f"; p50 / p95 {clients['ms'][0]:.0f} / {clients['ms'][1]:.0f} ms" if clients["ms"] else ""
        print(f"clients {where} ({CLIENTS} threads, test client, bearer token): {answers}{latency}")
        print(f"  5xx answers: {clients['server_errors']}; 4xx: {clients['failed'] - clients['server_errors']}; "
              f"\"database is locked\": {clients['locked']} in answers")
        for failure in clients["failures"]:
            print(f"    {failure}")
    print("\"database is locked\" in the node's log records + in the stderr of its bookkeeping process (and of the "
          "clients' process): " + ", ".join(f"{f['locked_in_logs']} + {f['locked_in_stderr']}" for _, f in runs))
    for name, figures in runs:
        if figures["warnings"]:
            print(f"  warnings logged ({name.strip()}): " + " | ".join(figures["warnings"]))
    print("peak RSS: resource.getrusage maxrss of the node's process (RUSAGE_SELF) plus its bookkeeping process "
          "(RUSAGE_CHILDREN, read after the stop; psutil is not installed); the highest sum of their VmRSS in /proc, "
          "sampled each second while draining: " + ", ".join(f"{f['sampled_mb']:.0f} MB" for _, f in runs))

def print_table(backend: str, rounds: list[dict]) -> None:
    names = [key for key in rounds[0] if key != "label"]
    width = max(map(len, names))
    print(f"\n{backend}: p50 / p95 in ms")
    print(f"{'':{width}}  " + "  ".join(f"{r['label']:>{CELL}}" for r in rounds))
    for name in names:
        print(f"{name:{width}}  " + "  ".join(f"{f'{r[name][0]:.1f} / {r[name][1]:.1f}':>{CELL}}" for r in rounds))


def postgres_database(server_url: str):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"mailsender_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help=f"messages queued, and as many sent (default {ROWS:,})")
    parser.add_argument("--samples", type=int, default=SAMPLES, help=f"requests per answer (default {SAMPLES})")
    parser.add_argument("--sqlite-only", action="store_true", help="leave PostgreSQL out even when TEST_DATABASE_URL is set")
    parser.add_argument("--seed", nargs=3, metavar=("URL", "INSTANCE", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, metavar=("URL", "INSTANCE", "SAMPLES"), help=argparse.SUPPRESS)
    parser.add_argument("--drain", nargs=4, metavar=("URL", "INSTANCE", "PORT", "LOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--clients", nargs=2, metavar=("URL", "INSTANCE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.seed:
        seed(arguments.seed[0], arguments.seed[1], int(arguments.seed[2]))
        return
    if arguments.measure:
        measure(arguments.measure[0], arguments.measure[1], int(arguments.measure[2]))
        return
    if arguments.drain:
        url, instance, port, load = arguments.drain
        drain(url, instance, int(port), load)
        return
    if arguments.clients:
        clients_apart(*arguments.clients)
        return

    from cryptography.fernet import Fernet

    from tools.bench import free_port, start_sink

    os.environ.setdefault("MAILSENDER_SECRET_KEY", Fernet.generate_key().decode())
    folder = tempfile.mkdtemp(prefix="mailsender-bench-scale-")
    drops = []
    # Each backend's database at --rows, and the baseline's at BASELINE_ROWS.
    backends = [("SQLite", f"sqlite:///{os.path.join(folder, 'scale.sqlite')}",
                 f"sqlite:///{os.path.join(folder, 'baseline.sqlite')}")]
    port = free_port()
    sink = start_sink(port)
    try:
        if os.environ.get("TEST_DATABASE_URL") and not arguments.sqlite_only:
            url, drop = postgres_database(os.environ["TEST_DATABASE_URL"])
            drops.append(drop)
            baseline_url, drop = postgres_database(os.environ["TEST_DATABASE_URL"])
            drops.append(drop)
            backends.append(("PostgreSQL", url, baseline_url))
        for backend, url, baseline_url in backends:
            instance = os.path.join(folder, f"instance-{backend.lower()}")
            started = time.monotonic()
            print(f"{backend}: seeding {arguments.rows:,} queued and {arguments.rows:,} sent …", flush=True)
            [seeded] = child("--seed", url, instance, str(arguments.rows))
            print(f"  multiplied in {seeded['seconds']} s ({time.monotonic() - started:.0f} s in all): "
                  f"{seeded['counts']}", flush=True)
            drain_url, drop = drain_copy(backend, url, folder)
            if drop:
                drops.append(drop)
            print(f"{backend}: measuring ({arguments.samples} requests per answer) …", flush=True)
            measured = time.monotonic()
            print_table(f"{backend}, {arguments.rows:,} queued + {arguments.rows:,} sent",
                        child("--measure", url, instance, str(arguments.samples)))
            print(f"  measured in {time.monotonic() - measured:.0f} s", flush=True)
            print(f"{backend}: draining into smtp-sink …", flush=True)
            baseline_instance = instance + "-baseline"
            [seeded] = child("--seed", baseline_url, baseline_instance, str(BASELINE_ROWS))
            baseline = run_drain(baseline_url, baseline_instance, port, LOAD_NONE, f"{BASELINE_ROWS:,} queued")
            at_size = run_drain(drain_url, instance, port, LOAD_NONE, f"{arguments.rows:,} queued")
            threads = run_drain(drain_url, instance, port, LOAD_THREADS,
                                f"{arguments.rows:,} queued, {CLIENTS} client threads in the node's process")
            apart = run_drain(drain_url, instance, port, LOAD_PROCESS,
                              f"{arguments.rows:,} queued, {CLIENTS} client threads in a process of their own")
            print_drain(backend, arguments.rows, baseline, at_size, threads, apart)
            print(f"\n{backend}: {time.monotonic() - started:.0f} s in all", flush=True)
    finally:
        sink.terminate()
        sink.wait(5)
        for drop in drops:
            drop()
        shutil.rmtree(folder, ignore_errors=True)

if __name__ == "__main__":
    main()
