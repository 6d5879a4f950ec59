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

Runs on SQLite, and on PostgreSQL when TEST_DATABASE_URL is set (in a database of its own,
created and dropped). Not a test: the figures depend on the machine. Goal: p95 ≤ 30 ms for
each answer, ≤ 50 ms for a claim. The drain rate at this size is not measured yet.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
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

ANSWERS = (
    ("/admin/mail-sender page", "page", "/admin/mail-sender"),
    ("Status fragment (HX-Request)", "htmx", "/admin/mail-sender/status"),
    ("Monitor banner (HX-Request)", "htmx", "/admin/mail-sender/monitor/banner"),
    ("GET /api/v1/monitor", "api", "/api/v1/monitor"),
    ("GET /api/v1/mail-sender/status", "api", "/api/v1/mail-sender/status"),
    ("/outbox", "page", "/outbox"),
    ("GET /api/v1/messages?status=queued&limit=50", "api", "/api/v1/messages?status=queued&limit=50"),
)


def make_app(database_url: str, instance: str):
    os.environ["MAILSENDER_INSTANCE"] = instance
    from webapp import create_app

    return create_app({
        "SQLALCHEMY_DATABASE_URI": database_url,
        "MAILSENDER_SECRET_KEY": os.environ["MAILSENDER_SECRET_KEY"],
        "SECRET_KEY": "bench-scale",
        "NODE_NAME": "bench-scale",
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
    from webapp.core.models import (
        DeliveryAttempt,
        MessageContent,
        MessageRecipient,
        OutgoingMessage,
        TZDateTime,
    )
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


# --- the run ------------------------------------------------------------------------------


def child(*arguments: str) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "tools.bench_scale", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench-scale {arguments[0]} failed:\n{result.stderr[-4000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


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
    arguments = parser.parse_args()
    if arguments.seed:
        seed(arguments.seed[0], arguments.seed[1], int(arguments.seed[2]))
        return
    if arguments.measure:
        measure(arguments.measure[0], arguments.measure[1], int(arguments.measure[2]))
        return

    from cryptography.fernet import Fernet

    os.environ.setdefault("MAILSENDER_SECRET_KEY", Fernet.generate_key().decode())
    folder = tempfile.mkdtemp(prefix="mailsender-bench-scale-")
    backends = [("SQLite", f"sqlite:///{os.path.join(folder, 'scale.sqlite')}", None)]
    if os.environ.get("TEST_DATABASE_URL") and not arguments.sqlite_only:
        url, drop = postgres_database(os.environ["TEST_DATABASE_URL"])
        backends.append(("PostgreSQL", url, drop))
    try:
        for backend, url, _ in backends:
            instance = os.path.join(folder, f"instance-{backend.lower()}")
            print(f"{backend}: seeding {arguments.rows:,} queued and {arguments.rows:,} sent …", flush=True)
            [seeded] = child("--seed", url, instance, str(arguments.rows))
            print(f"  multiplied in {seeded['seconds']} s: {seeded['counts']}", flush=True)
            print(f"{backend}: measuring ({arguments.samples} requests per answer) …", flush=True)
            print_table(f"{backend}, {arguments.rows:,} queued + {arguments.rows:,} sent",
                        child("--measure", url, instance, str(arguments.samples)))
    finally:
        for _, _, drop in backends:
            if drop:
                drop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
