"""The database: SQLAlchemy's handle (`db`), and the engine set-up it leaves to us.

That set-up is SQLite's pragmas and its write locking.
"""

import logging

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

log = logging.getLogger("mailsender.database")


class Base(DeclarativeBase):
    pass


# Created once here and bound to an app in create_app() (and in the bookkeeping process).
db = SQLAlchemy(model_class=Base)


SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option for a transaction that only reads: on SQLite it then takes no write lock,
# so it never holds up a writer (in WAL mode readers and the one writer do not block each other).
READ_ONLY = {"mailsender_read_only": True}


def engine_options(database_uri: str) -> dict:
    if database_uri.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}}
    return {"pool_pre_ping": True}


class WriteInsideRead(RuntimeError):
    """A write inside a transaction begun to read only (strict reads, in tests): see end_read."""


def configure_engine(engine: Engine, *, strict_reads: bool = False) -> None:
    """On SQLite: WAL, a busy timeout, foreign keys, and transactions that begin IMMEDIATE.

    pysqlite would otherwise begin a deferred transaction and take the write lock only at the
    first write, where two writers deadlock and one fails at once with "database is locked".
    Beginning IMMEDIATE makes the second writer wait for the first instead. A transaction
    opened with the READ_ONLY execution option begins deferred: it must not write.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Hand transaction control to the "begin" hook below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        read_only = connection.get_execution_options().get("mailsender_read_only")
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    if strict_reads:
        @event.listens_for(engine, "before_cursor_execute")
        def _no_write_inside_read(connection, _cursor, statement, _parameters, _context, _many):
            if connection.get_execution_options().get("mailsender_read_only") and \
                    statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
                raise WriteInsideRead(f"a write inside a read-only transaction: {statement[:80]}")


def begin_read() -> None:
    """Begins the session's transaction as one that only reads (READ_ONLY): on SQLite it then
    waits for no writer, nor holds one up. For a request that only reads (a GET)."""
    if db.engine.dialect.name == "sqlite" and not db.session().in_transaction():
        db.session.connection(execution_options=READ_ONLY)


def reading() -> bool:
    """Whether the session is inside a transaction begun with begin_read (only on SQLite)."""
    return db.session().in_transaction() and \
        bool(db.session.connection().get_execution_options().get("mailsender_read_only"))


def end_read() -> None:
    """Ends a transaction begun with begin_read, so that what follows may write: a deferred one
    would have to upgrade its lock, and fails at once where a writer committed meanwhile."""
    if reading():
        db.session.commit()


def write_apart(statement) -> None:
    """Runs one write and commits it. Inside a read (begin_read), on a connection and in a
    transaction of its own, so that the read goes on undisturbed; else in the session's."""
    if reading():
        with db.engine.begin() as connection:
            connection.execute(statement)
    else:
        db.session.execute(statement)
        db.session.commit()


def checkpoint_wal(engine: Engine) -> None:
    """On SQLite: copies what the WAL holds into the database file, without waiting for anyone.

    The node's bookkeeping process commits with automatic checkpoints off (a checkpoint inside
    a commit that senders wait for would stall them all), so the node's other threads run them.
    """
    if engine.dialect.name != "sqlite":
        return
    try:
        connection = engine.raw_connection()  # outside any transaction, which a checkpoint needs
        try:
            connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        finally:
            connection.close()
    except Exception as error:  # upkeep: the next one catches up, and the caller's work stands
        log.warning("WAL checkpoint failed: %s: %s", type(error).__name__, error)



def newest_first(query, id_column, *, limit: int, before_id: int | None) -> tuple[list, int | None]:
    """One page of the query's rows, newest (highest id) first, and the id to continue before
    (or None on the last page). Keyset paging: a page never repeats or skips rows while new ones
    arrive, and costs the same however many rows lie behind it, given an index ending in the id."""
    if before_id is not None:
        query = query.where(id_column < before_id)
    rows = list(db.session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (getattr(rows[-1], id_column.key) if more else None)
