"""The SQL the engine writes for claimed messages: outcomes, lease extensions, releases."""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import case, select, update

from webapp.core.clock import db_now, utcnow
from webapp.core.database import db
from webapp.core.models import MessageRecipient, OutgoingMessage, Partition
from webapp.core.states import DEFERRED, FAILED, QUEUED, SENDING, SENT, TRAINING

if TYPE_CHECKING:
    from .outcomes import Settled


_MESSAGES = OutgoingMessage.__table__
_RECIPIENTS = MessageRecipient.__table__


def extend_lease(owner: str, message_ids: list[int], lease_seconds: float, connection=None) -> int:
    """Pushes the lease of `owner`'s claims on these messages to the database's now + lease.

    The caller commits. Returns how many claims are still held. `connection`: as in record_outcomes.
    """
    if not message_ids:
        return 0
    result = (connection if connection is not None else db.session.connection()).execute(
        update(_MESSAGES)
        .where(_MESSAGES.c.id.in_(message_ids), _MESSAGES.c.status == SENDING,
               _MESSAGES.c.claim_owner == owner)
        .values(lease_until=db_now(lease_seconds))
    )
    return result.rowcount


def release(owner: str | None = None, message_ids: list[int] | None = None, *,
            owner_prefix: str | None = None, connection=None) -> int:
    """Gives claims back to the queue: to `deferred` if the message was waiting for a retry, else
    `queued`. Either `owner`'s claims (on `message_ids` if given), or every claim whose owner
    starts with `owner_prefix` (a node taking back its own claims from a previous life).

    The caller commits. Returns how many were released.
    """
    if owner is None and owner_prefix is None:
        raise ValueError("release needs an owner or an owner prefix")
    if message_ids is not None and not message_ids:
        return 0
    condition = [_MESSAGES.c.status == SENDING]
    if owner is not None:
        condition.append(_MESSAGES.c.claim_owner == owner)
    else:
        condition.append(_MESSAGES.c.claim_owner.startswith(owner_prefix, autoescape=True))
    if message_ids is not None:
        condition.append(_MESSAGES.c.id.in_(message_ids))
    else:
        # Partition by partition, so that the claim index (partition, status) finds the claims:
        # no index leads with the status, since every mark would have to update it too.
        condition.append(_MESSAGES.c.partition_id.in_(select(Partition.id)))
    result = (connection if connection is not None else db.session.connection()).execute(
        update(_MESSAGES).where(*condition).values(
            status=case((_MESSAGES.c.retry_at.is_(None), QUEUED), else_=DEFERRED),
            claim_owner=None,
            lease_until=None,
        )
    )
    return result.rowcount


def record_outcomes(settled: list[Settled], owner: str | None, node_label: str, connection=None, *,
                    writer: "_DriverWriter | None" = None) -> None:
    """Writes what became of a group of messages in few statements; the caller commits.

    Recipients, one DeliveryAttempt per transaction, then the messages by new state
    (mark_sent / mark_deferred / mark_failed). A message is only moved while its owner (the
    item's own `owner`, else `owner`) still holds its claim, so one call serves the messages
    of several senders. `connection`: a SQLAlchemy Connection (default: the session's); or
    `writer`, from driver_transaction.

    This is the drain path's hottest code, so it hands plain rows to the driver's executemany
    (a tenth of the cost of building and binding the same statements through SQLAlchemy).
    """
    if not settled:
        return
    if writer is None:
        writer = _DriverWriter(connection if connection is not None else db.session.connection())
    now = utcnow()
    at = writer.when(now)
    writer.executemany(
        "UPDATE message_recipient SET status = ?, code = ?, text = ? WHERE id = ?",
        [(r.status, r.code, r.text, r.id) for item in settled for r in item.changed],
    )
    writer.executemany(
        "INSERT INTO delivery_attempt (message_id, at, node, outcome, code, detail, recipients) "
        "VALUES (?, ?, ?, ?, ?, ?, {json})",
        [(item.message.id, at, node_label, t.outcome, t.code, t.detail,
          json.dumps([{"address": r.address, "code": r.code, "text": r.text} for r in t.recipients]))
         for item in settled for t in item.transactions],
    )
    by_status: dict[str, list[Settled]] = {}
    for item in settled:
        by_status.setdefault(item.status, []).append(item)
    mark_sent(writer, by_status.get(SENT, []) + by_status.get(TRAINING, []), owner, now)
    mark_deferred(writer, by_status.get(DEFERRED, []), owner)
    mark_failed(writer, by_status.get(FAILED, []), owner, now)


@contextlib.contextmanager
def driver_transaction(connection):
    """A write transaction straight on the driver under a SQLAlchemy Connection: commits on
    success, rolls back on an exception. Yields a writer for record_outcomes.

    The connection must not be inside a SQLAlchemy transaction. On SQLite it begins IMMEDIATE,
    as every write transaction here does (webapp/core/database.py). It skips SQLAlchemy's
    transaction machinery, whose begin event and commit cost most of a group's bookkeeping.
    """
    writer = _DriverWriter(connection)
    dbapi_connection = connection.connection.driver_connection
    if writer.sqlite:
        writer.cursor.execute("BEGIN IMMEDIATE")
    try:
        yield writer
    except BaseException:
        if writer.sqlite:
            if dbapi_connection.in_transaction:
                writer.cursor.execute("ROLLBACK")
        else:
            dbapi_connection.rollback()
        raise
    if writer.sqlite:
        writer.cursor.execute("COMMIT")
    else:
        dbapi_connection.commit()


def driver_statement(compiled, connection, **values) -> tuple[str, list | dict]:
    """A compiled SQLAlchemy Core statement for the driver's cursor, with `values` for its named
    bind parameters: (SQL, parameters)."""
    expanded = compiled.construct_expanded_state(values)
    if connection.dialect.name == "sqlite":
        return expanded.statement, [expanded.parameters[name] for name in expanded.positiontup]
    return expanded.statement, expanded.parameters


class _DriverWriter:
    """executemany on the driver's cursor, inside the SQLAlchemy connection's transaction
    (or driver_transaction's).

    SQL is written with `?`, `{json}` (a JSON parameter) and `{ids}` (a list of ids in one
    parameter, from id_list); timestamps are bound as TZDateTime stores them.
    """

    def __init__(self, connection):
        self.sqlite = connection.dialect.name == "sqlite"
        self.cursor = connection.connection.cursor()

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self.cursor.executemany(self._for_driver(sql), rows)

    def query(self, sql: str, params) -> list[tuple]:
        """One statement, written like executemany's SQL; its rows, as tuples."""
        return self.run((self._for_driver(sql), params))

    def run(self, statement: tuple[str, list | dict]) -> list[tuple]:
        """One statement from driver_statement; its rows, as tuples."""
        self.cursor.execute(*statement)
        return self.cursor.fetchall() if self.cursor.description else []

    def id_list(self, ids: list[int]):
        """The one parameter that `{ids}` in the SQL reads as a list of ids."""
        return json.dumps(ids) if self.sqlite else ids

    def _for_driver(self, sql: str) -> str:
        if self.sqlite:
            return sql.format(json="?", ids="SELECT value FROM json_each(?)")
        return sql.replace("?", "%s").format(json="%s::json", ids="SELECT unnest(%s::bigint[])")

    def when(self, moment: datetime | None):
        if moment is None or not self.sqlite:
            return moment
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


_HELD = " WHERE id = ? AND status = ? AND claim_owner = ?"


def mark_sent(writer: _DriverWriter, items: list[Settled], owner: str, now: datetime) -> None:
    """Sent (or training): the rendered bytes, never rendered again from now on, are the raw copy."""
    at = writer.when(now)
    writer.executemany(
        "UPDATE outgoing_message SET status = ?, finished_at = ?, retry_at = NULL, "
        "claim_owner = NULL, lease_until = NULL, last_error = ?, attempt_count = attempt_count + ?" + _HELD,
        [(i.status, at, i.last_error, len(i.transactions), i.message.id, SENDING, i.owner or owner)
         for i in items],
    )


def mark_deferred(writer: _DriverWriter, items: list[Settled], owner: str) -> None:
    """Deferred until `retry_at`; only the deferred recipients go in the retry."""
    writer.executemany(
        "UPDATE outgoing_message SET status = ?, retry_at = ?, claim_owner = NULL, lease_until = NULL, "
        "last_error = ?, attempt_count = attempt_count + ?" + _HELD,
        [(DEFERRED, writer.when(i.retry_at), i.last_error, len(i.transactions), i.message.id, SENDING, i.owner or owner)
         for i in items],
    )


def mark_failed(writer: _DriverWriter, items: list[Settled], owner: str, now: datetime) -> None:
    """Failed: every recipient settled and none accepted, or the lifetime ended."""
    at = writer.when(now)
    writer.executemany(
        "UPDATE outgoing_message SET status = ?, finished_at = ?, retry_at = NULL, claim_owner = NULL, "
        "lease_until = NULL, last_error = ?, attempt_count = attempt_count + ?" + _HELD,
        [(FAILED, at, i.last_error, len(i.transactions), i.message.id, SENDING, i.owner or owner)
         for i in items],
    )
