"""Claims: a sender takes a batch of due messages in one short transaction, and reads them.

The drain path stays off the ORM: a claim is a select and an update, and no message is rebuilt
or re-parsed unless the settings changed since it was rendered.
"""
from __future__ import annotations

import functools
import logging
from datetime import datetime, timezone

from flask import current_app
from sqlalchemy import (
    Integer,
    String,
    and_,
    bindparam,
    cast,
    exists,
    func,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import selectinload

from webapp.core.clock import db_now, utcnow
from webapp.core.compose import TRAINING_TEXT, ComposeError, is_withheld, render, training_domains
from webapp.core.database import READ_ONLY, db
from webapp.core.models import MailSenderSettings, MessageRecipient, Node, OutgoingMessage, from_sqlite_time
from webapp.core.states import DEFERRED, FAILED, QUEUED, RCPT_FAILED, RCPT_TRAINING, SENDING

from .outcomes import UNSETTLED, Claimed, Recipient
from .store import DriverStatement, DriverWriter, claim_statement, driver_transaction, owner_context

log = logging.getLogger("mailsender.claims")
failed_log = logging.getLogger("mailsender.delivery")  # the bookkeeper's, for the messages it settles

_MESSAGES = OutgoingMessage.__table__
_RECIPIENTS = MessageRecipient.__table__
_NODES = Node.__table__


def node_gone(now=None):
    """A message claimed (sending) by a node whose lease on its name has run out: that node
    stopped answering (it died, or is paused or cut off), whatever its claim's own lease says.

    A claim's owner begins with its node's name and lease token (sender.claim_owner), so this
    is one life of one node: a node that lost its lease and took it again has a new token, and
    gives back the claims of its previous life itself.
    """
    return and_(_MESSAGES.c.status == SENDING, _holder_gone(db_now() if now is None else now))


def _holder_gone(now):
    holder = _NODES.c.name.concat("/").concat(_NODES.c.lease_owner).concat("/")
    return exists().where(
        _NODES.c.lease_owner.is_not(None),
        or_(_NODES.c.lease_until.is_(None), _NODES.c.lease_until < now),
        func.substr(_MESSAGES.c.claim_owner, 1, func.length(holder)) == holder)


def lease_ran_out(now=None):
    """A message claimed (sending) whose sender is gone: its lease has run out, it has none, or
    its node stopped answering (node_gone). Claimed again, counted stuck by the monitor, and
    removable by an administrator.

    Taking a claim from a node that is only paused is safe: a sender sends nothing once it can
    no longer be sure of its node's lease and its claims' (scheduler/sender.py), and an outcome
    is written only while its claim is held (scheduler/store.py).
    """
    now = db_now() if now is None else now
    return and_(_MESSAGES.c.status == SENDING,
                or_(_MESSAGES.c.lease_until.is_(None), _MESSAGES.c.lease_until < now, _holder_gone(now)))


# A queued message joins the queue (queued_at) at its "not before" (webapp/core/send_later.py),
# so the claim's range of queued messages ends there, and the messages scheduled further ahead
# are not read at each claim (100,000 of them cost an empty claim 42 ms on SQLite). queued_at is
# the writing node's clock, the bound the database's: this much of a node's clock ahead of the
# database's delays no message.
QUEUED_CLOCK_MARGIN_SECONDS = 60.0


def _queued_until(dialect_name: str):
    """The end of the claim's range of queued messages: the database's now plus the margin."""
    if dialect_name == "postgresql":
        # PostgreSQL bounds an index range only by a stable value, and clock_timestamp() is
        # volatile: the statement's start is stable, and the margin dwarfs their difference.
        return literal_column(f"(statement_timestamp() + make_interval(secs => {QUEUED_CLOCK_MARGIN_SECONDS:.6f}))")
    return db_now(QUEUED_CLOCK_MARGIN_SECONDS, dialect_name=dialect_name)


def _due_branches(now, queued_until):
    """The three ways a message is due, each one index range of ix_outgoing_claim."""
    return (
        # A queued message's retry_at is its "not before": the undo hold or its send_at. The
        # index holds it, so the claim still reads the index alone.
        and_(_MESSAGES.c.status == QUEUED, _MESSAGES.c.queued_at <= queued_until,
             or_(_MESSAGES.c.retry_at.is_(None), _MESSAGES.c.retry_at <= now)),
        and_(_MESSAGES.c.status == DEFERRED, _MESSAGES.c.retry_at <= now),
        # A claim whose lease ran out goes back to the queue.
        lease_ran_out(now),
    )


def claim_ids(connection, partition_id: int, owner: str, limit: int, *, priority_enabled: bool,
              lease_seconds: float) -> list[int]:
    """Claims up to `limit` due messages of the partition for `owner`; their ids, in no order.

    Due: queued with its time come (no undo hold or send_at ahead); deferred with its retry time
    passed; or sending under a lease that ran out.
    The claim is ONE transaction, a selection and an UPDATE, so no row is ever claimed twice at
    once: on PostgreSQL the selection locks its rows with FOR UPDATE SKIP LOCKED (a concurrent
    claim skips them instead of waiting for them and then claiming them again); on SQLite the
    write transaction begins IMMEDIATE, so claims run one after the other. That transaction
    holds only these two statements: the claimed messages' bytes and recipients are read
    afterwards (read_claimed), without the write lock. `connection` must not be inside a
    SQLAlchemy transaction.
    """
    if limit <= 0:
        return []
    selection = _claim_selection(connection.dialect, priority_enabled)
    claim = claim_statement(connection.dialect, float(lease_seconds))
    # Run on the driver, with the ids in one value: the write lock is held for the two
    # statements and nothing else.
    with driver_transaction(connection) as writer:
        [(listed,)] = writer.run(selection, {"claim_partition": partition_id, "claim_limit": limit})
        ids = [int(value) for value in listed.split(",")] if listed else []
        if ids:
            writer.run(claim, {"b_owner": owner, "b_ids": writer.ids(ids)})
    return ids


def log_claimed(owner: str, ids: list[int]) -> None:
    """One line a message claim_ids claimed: the bookkeeper's, once it has answered the sender,
    which waits for its batch meanwhile."""
    if ids and log.isEnabledFor(logging.INFO):
        context = owner_context(owner)
        for message_id in ids:
            log.info("message claimed", extra={"message_id": message_id, **context})


@functools.lru_cache(maxsize=16)  # a node has one database; tests make many
def _claim_selection(dialect, priority_enabled: bool) -> DriverStatement:
    """The ids of the partition's first due messages, in claim order, as one text value;
    compiled once per database and order (building and compiling it cost more than running it).
    """
    now = db_now(dialect_name=dialect.name)
    queued_until = _queued_until(dialect.name)
    columns = ([_MESSAGES.c.priority] if priority_enabled else []) + [_MESSAGES.c.queued_at, _MESSAGES.c.id]
    limit = bindparam("claim_limit", type_=Integer)
    # One ordered, limited selection per way of being due, then the first `limit` of their
    # union: each reads at most `limit` entries of the index, where a single selection with OR
    # read and sorted every due message of the partition while holding the write lock.
    due = union_all(*(
        select(*columns)
        .where(_MESSAGES.c.partition_id == bindparam("claim_partition", type_=Integer), condition)
        .order_by(*columns)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .subquery()
        .select()
        for condition in _due_branches(now, queued_until)
    )).subquery()
    picked = select(due.c.id).order_by(*(due.c[column.name] for column in columns)).limit(limit).subquery()
    # The separator in the SQL itself: as a bound value, SQLAlchemy would render it per execution.
    separator = literal_column("','")
    return DriverStatement.of(select(func.aggregate_strings(cast(picked.c.id, String), separator)), dialect)


def read_claimed(ids: list[int], owner: str, priority_enabled: bool) -> list[Claimed]:
    """What the SMTP path needs of messages this owner has just claimed, in claim order.

    Read on the driver's cursor, like the outcomes are written: building result rows through
    SQLAlchemy cost a claim more than the statements themselves, in a thread that competes with
    the SMTP loop for the GIL.
    """
    if not ids:
        return []
    claimed: dict[int, Claimed] = {}
    # Claim order. queued_at as the driver gives it, unparsed: SQLite's text sorts as the time.
    order: dict[int, tuple] = {}
    with db.engine.connect().execution_options(**READ_ONLY) as connection:
        connection.exec_driver_sql("SELECT 1")  # begins the (read-only) transaction
        reader = DriverWriter(connection)
        asked = {"b_owner": owner, "b_ids": reader.ids(ids)}
        for (id_, envelope_from, from_address, rendered, rendered_version, expires_at, attempt_count,
             priority, queued_at, unclear_count) in reader.run(reader.statements.claimed_messages, asked):
            claimed[id_] = Claimed(
                id=id_, envelope_from=envelope_from or from_address, data=_as_bytes(rendered),
                rendered_version=rendered_version, expires_at=_as_utc(expires_at),
                attempt_count=attempt_count or 0, unclear_count=unclear_count or 0,
                queued_at=_timestamp(queued_at))
            order[id_] = (priority, queued_at, id_) if priority_enabled else (queued_at, id_)
        for id_, message_id, address, role, status, code, text in reader.run(reader.statements.claimed_recipients,
                                                                              asked):
            message = claimed.get(message_id)
            if message is not None:
                message.recipients.append(Recipient(id_, address, role, status, code, text))
        connection.rollback()
    return sorted(claimed.values(), key=lambda message: order[message.id])


def _as_utc(value) -> datetime | None:
    """A timestamp as the driver gives it (SQLite: TZDateTime's UTC text) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)
    return from_sqlite_time(value)


def _timestamp(value) -> float | None:
    moment = _as_utc(value)
    return moment.timestamp() if moment is not None else None


def _as_bytes(value) -> bytes | None:
    # psycopg gives bytea as memoryview.
    return bytes(value) if isinstance(value, memoryview) else value


# The most messages one claim renders again (see refresh_rendering): about 2 ms each through the
# ORM and the MIME builder, so a claim after a byte-changing save waits some 0.1 s, not seconds.
RENDER_SLICE = 50


def refresh_rendering(batch: list[Claimed], settings: MailSenderSettings, slice_size: int | None = None) -> list[int]:
    """Makes the claimed batch fit the current settings, and commits; answers the ids it took out
    of `batch` unsent, for the caller to give back.

    Messages whose bytes were built under other settings are rendered again (bytes, envelope
    sender, training decision); only these go through the MIME builder, the rest keep the bytes
    made at enqueue. At most `slice_size` (RENDER_SLICE) are rendered at one claim: after a save
    that changes every queued message's bytes, the batch is cut before the next stale one, and
    the rest go back to the queue in their order, for the next claims to render a slice each,
    so that no claim waits for a whole batch to be rendered. While training mode is on, every
    claimed message's open recipients outside the company domains are withheld, whatever version
    it was rendered under (a requeued message must not slip out). A message that can no longer
    be composed safely is failed with the reason and taken out of `batch`, never sent.
    """
    version = settings.render_version
    slice_size = RENDER_SLICE if slice_size is None else slice_size
    stale = [m for m in batch if m.data is None or m.rendered_version != version]
    later: list[int] = []
    if len(stale) > slice_size:
        cut = batch.index(stale[slice_size])
        later = [m.id for m in batch[cut:]]
        del batch[cut:]
        stale = stale[:slice_size]
    if not stale and not settings.training_enabled:
        return later
    domains = training_domains(settings)
    connection = db.session.connection()
    failed: dict[int, str] = {}
    if stale:
        by_id = {m.id: m for m in stale}
        for message in db.session.scalars(select(OutgoingMessage).where(OutgoingMessage.id.in_(list(by_id)))
                                          .options(selectinload(OutgoingMessage.content))):
            claimed = by_id[message.id]
            try:
                render(message, settings, domains)
            except (ValueError, LookupError, TypeError) as error:  # ComposeError is a ValueError
                failed[message.id] = str(error) if isinstance(error, ComposeError) else \
                    f"{type(error).__name__}: {error}"
                continue
            claimed.data, claimed.rendered_version = message.rendered, message.rendered_version
            claimed.envelope_from = message.envelope_from
            decided = {r.id: r for r in message.recipients}
            for recipient in claimed.recipients:
                if recipient.id in decided:
                    recipient.status, recipient.text = decided[recipient.id].status, decided[recipient.id].text
        db.session.flush()
    withheld = []
    if domains is not None:
        for message in batch:
            if message.id in failed:
                continue
            for recipient in message.recipients:
                if recipient.status in UNSETTLED and is_withheld(recipient.address, domains):
                    recipient.status, recipient.text = RCPT_TRAINING, TRAINING_TEXT
                    withheld.append((message.id, recipient.id))
    if withheld:
        connection.execute(update(_RECIPIENTS).where(_RECIPIENTS.c.id.in_([r for _, r in withheld]))
                           .values(status=RCPT_TRAINING, text=TRAINING_TEXT))
        connection.execute(update(_MESSAGES).where(_MESSAGES.c.id.in_({m for m, _ in withheld}))
                           .values(training=True))
    for message_id, reason in failed.items():
        _fail_uncomposable(connection, message_id, reason)
    if failed:
        batch[:] = [m for m in batch if m.id not in failed]
    # Read before the commit expires it: reading it after would begin a write transaction.
    context = {"node": current_app.config.get("NODE_NAME"), "partition": settings.partition_id}
    db.session.commit()
    for message_id, reason in failed.items():
        failed_log.info("message failed", extra={"message_id": message_id, **context, "status": FAILED,
                                                 "code": None, "error": reason})
    return later


def _fail_uncomposable(connection, message_id: int, reason: str) -> None:
    text = f"not sent: the message cannot be composed safely: {reason}"
    connection.execute(update(_RECIPIENTS).where(_RECIPIENTS.c.message_id == message_id,
                                                 _RECIPIENTS.c.status.in_(UNSETTLED))
                       .values(status=RCPT_FAILED, text=text))
    connection.execute(update(_MESSAGES).where(_MESSAGES.c.id == message_id, _MESSAGES.c.status == SENDING)
                       .values(status=FAILED, finished_at=utcnow(), retry_at=None, claim_owner=None,
                               lease_until=None, last_error=text))

