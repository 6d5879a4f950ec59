"""The SQL the engine writes for claimed messages: claims, outcomes, lease extensions, releases.

The drain path's statements are SQLAlchemy Core, compiled once per database (`statements`),
and run on the driver's cursor with plain rows: binding each row through SQLAlchemy cost ten
times the driver's executemany, in the process whose commits every sender waits for. Values go
by bind name, as the driver takes them: timestamps as TZDateTime stores them (DriverWriter.when),
JSON as its text, a list of ids as one parameter (DriverWriter.ids, read by `id_set`).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, bindparam, case, cast, column, func, null, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from webapp.core.clock import db_now, utcnow
from webapp.core.database import db
from webapp.core.models import (
    DeliveryAttempt,
    MessageContent,
    MessageRecipient,
    OutgoingMessage,
    Partition,
    sqlite_time,
)
from webapp.core.states import DEFERRED, FAILED, HELD, QUEUED, SENDING, SENT, TRAINING

if TYPE_CHECKING:
    from .outcomes import Settled


log = logging.getLogger("mailsender.claims")

_MESSAGES = OutgoingMessage.__table__
_RECIPIENTS = MessageRecipient.__table__
_ATTEMPTS = DeliveryAttempt.__table__
_CONTENT = MessageContent.__table__


def id_set(dialect_name: str):
    """The ids given as one parameter, `b_ids`, as a selection a statement can take IN: on SQLite
    a JSON array read with json_each, on PostgreSQL an array unnested. One parameter whatever the
    count, where SQLite limits how many a statement may have."""
    if dialect_name == "sqlite":
        return select(column("value")).select_from(func.json_each(bindparam("b_ids")))
    return select(func.unnest(cast(bindparam("b_ids"), ARRAY(BigInteger))))


@dataclass(frozen=True)
class DriverStatement:
    """A Core statement compiled for one database, to run on the driver's cursor.

    `fixed` holds the values the statement itself carries (`status == SENDING` binds "sending");
    the caller gives the rest by bind name.
    """

    sql: str
    order: tuple[str, ...] | None  # the bind names in the order of SQLite's `?` marks; None: named
    fixed: dict

    @classmethod
    def of(cls, statement, dialect) -> "DriverStatement":
        compiled = statement.compile(dialect=dialect)
        # What the statement binds of its own; the callers' binds (bindparam without a value) are None here.
        fixed = {name: value for name, value in compiled.params.items() if value is not None}
        return cls(compiled.string, tuple(compiled.positiontup) if compiled.positional else None, fixed)

    def parameters(self, values: dict) -> tuple | dict:
        if self.fixed:
            values = {**self.fixed, **values}
        return values if self.order is None else tuple(values[name] for name in self.order)


@dataclass(frozen=True)
class Statements:
    """The drain path's statements for one database."""

    recipient: DriverStatement  # a recipient's status, code and text
    attempt: DriverStatement  # a DeliveryAttempt
    finish: DriverStatement  # sent, training or failed: finished, and the claim given up
    defer: DriverStatement  # deferred until its retry, and the claim given up
    hold: DriverStatement  # held for review (unclear), and the claim given up
    claimed_messages: DriverStatement  # what the SMTP path needs of claimed messages
    claimed_recipients: DriverStatement
    held: DriverStatement  # which of these messages are claimed under a lease still running, by whom


def _while_held(dialect_name: str):
    """A message moves only while the owner named still holds its claim, under a lease that has
    not run out: once it has, another sender may have claimed the message and be sending it."""
    return (_MESSAGES.c.id == bindparam("b_id"), _MESSAGES.c.status == SENDING,
            _MESSAGES.c.claim_owner == bindparam("b_owner"),
            _MESSAGES.c.lease_until > db_now(dialect_name=dialect_name))


@functools.lru_cache(maxsize=16)  # a node has one database; tests make many
def statements(dialect) -> Statements:
    given_up = {"claim_owner": null(), "lease_until": null(), "last_error": bindparam("b_error"),
                "attempt_count": _MESSAGES.c.attempt_count + bindparam("b_attempts"),
                "unclear_count": _MESSAGES.c.unclear_count + bindparam("b_unclear")}
    ids = id_set(dialect.name)
    return Statements(
        recipient=DriverStatement.of(
            update(_RECIPIENTS).where(_RECIPIENTS.c.id == bindparam("b_id"))
            .values(status=bindparam("b_status"), code=bindparam("b_code"), text=bindparam("b_text")), dialect),
        attempt=DriverStatement.of(
            _ATTEMPTS.insert().inline().values(
                message_id=bindparam("b_message"), at=bindparam("b_at"), node=bindparam("b_node"),
                outcome=bindparam("b_outcome"), code=bindparam("b_code"), detail=bindparam("b_detail"),
                recipients=bindparam("b_recipients"), answer=bindparam("b_answer"),
                queue_id=bindparam("b_queue_id"), timings=bindparam("b_timings"),
                lease_owner=bindparam("b_owner"), route=bindparam("b_route")), dialect),
        finish=DriverStatement.of(
            update(_MESSAGES).where(*_while_held(dialect.name))
            .values(status=bindparam("b_status"), finished_at=bindparam("b_at"), retry_at=null(), **given_up),
            dialect),
        defer=DriverStatement.of(
            update(_MESSAGES).where(*_while_held(dialect.name))
            .values(status=DEFERRED, retry_at=bindparam("b_retry_at"), expires_at=bindparam("b_expires_at"),
                    **given_up), dialect),
        hold=DriverStatement.of(
            update(_MESSAGES).where(*_while_held(dialect.name))
            .values(status=HELD, retry_at=null(), **given_up), dialect),
        claimed_messages=DriverStatement.of(
            select(_MESSAGES.c.id, _MESSAGES.c.envelope_from, _MESSAGES.c.from_address, _CONTENT.c.rendered,
                   _MESSAGES.c.rendered_version, _MESSAGES.c.expires_at, _MESSAGES.c.attempt_count,
                   _MESSAGES.c.priority, _MESSAGES.c.queued_at, _MESSAGES.c.unclear_count)
            .select_from(_MESSAGES.outerjoin(_CONTENT, _CONTENT.c.message_id == _MESSAGES.c.id))
            .where(_MESSAGES.c.claim_owner == bindparam("b_owner"), _MESSAGES.c.id.in_(ids)), dialect),
        claimed_recipients=DriverStatement.of(
            select(_RECIPIENTS.c.id, _RECIPIENTS.c.message_id, _RECIPIENTS.c.address, _RECIPIENTS.c.role,
                   _RECIPIENTS.c.status, _RECIPIENTS.c.code, _RECIPIENTS.c.text)
            .where(_RECIPIENTS.c.message_id.in_(ids)).order_by(_RECIPIENTS.c.id), dialect),
        # Locked until the outcomes are written: a claim that ran out meanwhile is not taken
        # by another sender between this check and the writes (SQLite's writer is alone anyway).
        held=DriverStatement.of(
            select(_MESSAGES.c.id, _MESSAGES.c.claim_owner)
            .where(_MESSAGES.c.id.in_(ids), _MESSAGES.c.status == SENDING,
                   _MESSAGES.c.lease_until > db_now(dialect_name=dialect.name))
            .with_for_update(), dialect),
    )


@functools.lru_cache(maxsize=16)
def claim_statement(dialect, lease_seconds: float) -> DriverStatement:
    """Claims the messages `b_ids` for `b_owner`, under a lease timed by the database's clock.

    A queued message's retry_at (its not-before: the undo hold, send_at) has passed once it is
    claimed: it is cleared, so that a release gives the message back as queued, not deferred."""
    return DriverStatement.of(
        update(_MESSAGES).where(_MESSAGES.c.id.in_(id_set(dialect.name)))
        .values(status=SENDING, claim_owner=bindparam("b_owner"),
                lease_until=db_now(lease_seconds, dialect_name=dialect.name),
                retry_at=case((_MESSAGES.c.status == QUEUED, null()), else_=_MESSAGES.c.retry_at)), dialect)


def extend_lease(owner: str, message_ids: list[int], lease_seconds: float, connection=None) -> int:
    """Pushes the lease of `owner`'s claims on these messages to the database's now + lease.

    The caller commits. Returns how many claims are still held. `connection`: as in record_outcomes.
    """
    return len(renew_leases(owner, message_ids, lease_seconds, connection))


def renew_leases(owner: str, message_ids: list[int], lease_seconds: float, connection=None) -> list[int]:
    """extend_lease, answering which of these claims are still `owner`'s: the others are lost,
    and their messages must not be sent. The caller commits.

    A claim whose lease ran out is renewed too while nobody took it: whoever claims it
    changes its owner, and a claim in progress holds the row until it commits.
    """
    if not message_ids:
        return []
    result = (connection if connection is not None else db.session.connection()).execute(
        update(_MESSAGES)
        .where(_MESSAGES.c.id.in_(message_ids), _MESSAGES.c.status == SENDING,
               _MESSAGES.c.claim_owner == owner)
        .values(lease_until=db_now(lease_seconds))
        .returning(_MESSAGES.c.id)
    )
    return [row[0] for row in result]


def keep_held(settled: list[Settled], owner: str | None = None, connection=None, *,
              writer: "DriverWriter | None" = None) -> tuple[list[Settled], list[Settled]]:
    """Splits a group's outcomes into those whose claim its owner still holds under a running
    lease, and the races it lost (another sender may have claimed the message, or sent it),
    which must not be written over what that sender writes. One statement for the group; on
    PostgreSQL it locks the held rows until the caller's commit. `connection`, `writer`: as in
    record_outcomes (`owner` for items without their own); the caller commits.
    """
    if not settled:
        return [], []
    if writer is None:
        writer = DriverWriter(connection if connection is not None else db.session.connection())
    owners = dict(writer.run(writer.statements.held, {"b_ids": writer.ids([item.message.id for item in settled])}))
    held, lost = [], []
    for item in settled:
        expected = item.owner or owner
        (held if expected is not None and owners.get(item.message.id) == expected else lost).append(item)
    return held, lost


def release(owner: str | None = None, message_ids: list[int] | None = None, *,
            owner_prefix: str | None = None, keep: list[int] | None = None, connection=None) -> int:
    """Gives claims back to the queue: to `deferred` if the message was waiting for a retry, else
    `queued`. Either `owner`'s claims (on `message_ids` if given), or every claim whose owner
    starts with `owner_prefix` (a node taking back its own claims from a previous life); never
    those on `keep`.

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
    if keep:
        condition.append(_MESSAGES.c.id.not_in(keep))
    if message_ids is not None:
        condition.append(_MESSAGES.c.id.in_(message_ids))
    else:
        # Partition by partition, so that the claim index (partition, status) finds the claims:
        # no index leads with the status, since every mark would have to update it too.
        condition.append(_MESSAGES.c.partition_id.in_(select(Partition.id)))
    released = (connection if connection is not None else db.session.connection()).execute(
        update(_MESSAGES).where(*condition).values(
            status=case((_MESSAGES.c.retry_at.is_(None), QUEUED), else_=DEFERRED),
            claim_owner=None,
            lease_until=None,
        ).returning(_MESSAGES.c.id, _MESSAGES.c.partition_id, _MESSAGES.c.status)
    ).all()
    if released and log.isEnabledFor(logging.INFO):
        # Told as the statement ran: every caller commits at once after it.
        context = owner_context(owner) if owner is not None else {"node": owner_prefix.rstrip("/")}
        for message_id, partition_id, status in released:
            log.info("message released", extra={"message_id": message_id, **context, "partition": partition_id,
                                                "status": status})
    return len(released)


def owner_context(owner: str) -> dict:
    """A claim owner's log keys: its node, partition and sender (the owner is
    "node/lease token/partition/slot", sender.claim_owner; a node's name may hold a slash)."""
    parts = owner.rsplit("/", 3)
    if len(parts) != 4:
        return {"sender": owner}
    node, _token, partition, slot = parts
    return {"node": node, "partition": int(partition) if partition.isdigit() else partition,
            "sender": f"{partition}/{slot}"}


def record_outcomes(settled: list[Settled], owner: str | None, node_label: str, connection=None, *,
                    writer: "DriverWriter | None" = None) -> int:
    """Writes what became of a group of messages in few statements; the caller commits.

    The messages by new state, then recipients and one DeliveryAttempt per transaction. A message
    is only moved while its owner (the item's own `owner`, else `owner`) still holds its claim
    under a running lease, so one call serves the messages of several senders. Returns how many
    were not moved for that reason: their recipients and attempts are written all the same, so
    a caller that finds any rolls back, and writes again those keep_held keeps. `connection`: a
    SQLAlchemy Connection (default: the session's); or `writer`, from driver_transaction.
    """
    if not settled:
        return 0
    if writer is None:
        writer = DriverWriter(connection if connection is not None else db.session.connection())
    compiled = writer.statements
    now = utcnow()
    at = writer.when(now)
    finished, deferred, held_back = [], [], []
    for item in settled:
        held = {"b_id": item.message.id, "b_owner": item.owner or owner, "b_error": item.last_error,
                "b_attempts": 1 if item.transactions else 0, "b_unclear": 1 if item.unclear else 0}
        if item.status == DEFERRED:
            deferred.append({**held, "b_retry_at": writer.when(item.retry_at),
                             "b_expires_at": writer.when(item.expires_at)})
        elif item.status == HELD:
            held_back.append(held)
        elif item.status in (SENT, TRAINING, FAILED):
            # Sent or training: the rendered bytes, never rendered again, are the raw copy.
            finished.append({**held, "b_status": item.status, "b_at": at})
    # First, so that the count of rows moved tells at once whether every claim was held: no
    # statement more in the usual case.
    moved = (writer.executemany(compiled.finish, finished) + writer.executemany(compiled.defer, deferred)
             + (writer.executemany(compiled.hold, held_back) if held_back else 0))
    writer.executemany(compiled.recipient, [
        {"b_id": r.id, "b_status": r.status, "b_code": r.code, "b_text": r.text}
        for item in settled for r in item.changed])
    writer.executemany(compiled.attempt, [
        {"b_message": item.message.id, "b_at": at, "b_node": node_label, "b_outcome": t.outcome,
         "b_code": t.code, "b_detail": t.detail,
         "b_recipients": json.dumps([{"address": r.address, "code": r.code, "text": r.text, "status": r.status}
                                     for r in t.recipients]),
         "b_answer": t.answer, "b_queue_id": t.queue_id,
         "b_timings": json.dumps(t.timings) if t.timings is not None else None,
         "b_owner": item.owner or owner, "b_route": ""}
        for item in settled for t in item.transactions])
    return len(finished) + len(deferred) + len(held_back) - moved


@contextlib.contextmanager
def driver_transaction(connection):
    """A write transaction straight on the driver under a SQLAlchemy Connection: commits on
    success, rolls back on an exception. Yields a DriverWriter.

    The connection must not be inside a SQLAlchemy transaction. On SQLite it begins IMMEDIATE,
    as every write transaction here does (webapp/core/database.py). It skips SQLAlchemy's
    transaction machinery, whose begin event and commit cost most of a group's bookkeeping.
    """
    writer = DriverWriter(connection)
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


class DriverWriter:
    """Runs DriverStatements on the driver's cursor, inside the SQLAlchemy connection's transaction
    (or driver_transaction's), with values as that database's driver takes them."""

    def __init__(self, connection):
        self.dialect = connection.dialect
        self.sqlite = self.dialect.name == "sqlite"
        self.cursor = connection.connection.cursor()
        self.statements = statements(self.dialect)

    def executemany(self, statement: DriverStatement, rows: list[dict]) -> int:
        """Runs the statement once per row; how many rows it changed in all."""
        if not rows:
            return 0
        self.cursor.executemany(statement.sql, [statement.parameters(row) for row in rows])
        return self.cursor.rowcount

    def run(self, statement: DriverStatement, values: dict) -> list[tuple]:
        """One statement; its rows, as tuples."""
        self.cursor.execute(statement.sql, statement.parameters(values))
        return self.cursor.fetchall() if self.cursor.description else []

    def ids(self, ids: list[int]):
        """A list of ids as `id_set`'s one parameter reads it."""
        return json.dumps(ids) if self.sqlite else list(ids)

    def when(self, moment: datetime | None):
        """A timestamp as TZDateTime stores it: on SQLite, UTC text that sorts as the time."""
        if moment is None or not self.sqlite:
            return moment
        return sqlite_time(moment)
