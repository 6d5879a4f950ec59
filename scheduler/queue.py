"""The queue: enqueue, and (in the engine) claim, record outcomes, extend and release claims.

The drain path stays off the ORM: a claim is one short transaction (a select and an update),
the bookkeeping for a group of delivered messages is three executemany statements, and no
message is rebuilt or re-parsed unless the settings changed since it was rendered.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
import json
from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import Integer, String, and_, bindparam, case, cast, func, literal_column, select, union_all, update
from sqlalchemy.orm import selectinload

from webapp.database import READ_ONLY
from webapp.extensions import db
from webapp.models import (
    DEFERRED,
    FAILED,
    QUEUED,
    RCPT_ACCEPTED,
    RCPT_DEFERRED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_TRAINING,
    SENDING,
    SENT,
    TRAINING,
    Mailbox,
    MailSenderSettings,
    MessageRecipient,
    OutgoingMessage,
    Partition,
    utcnow,
)

from .compose import TRAINING_TEXT, ComposeError, is_withheld, make_message_id, render, training_domains

LOG_ROLE = "log"
_MESSAGES = OutgoingMessage.__table__
_RECIPIENTS = MessageRecipient.__table__
# Recipients a (re)try goes to; the others are settled.
_UNSETTLED = (RCPT_PENDING, RCPT_DEFERRED)


def minutes(count: float) -> timedelta:
    """`count` of the product's minutes (MAILSENDER_MINUTE_SECONDS each)."""
    return timedelta(seconds=count * current_app.config["MAILSENDER_MINUTE_SECONDS"])


def enqueue(message: OutgoingMessage, settings: MailSenderSettings) -> OutgoingMessage:
    """Queues a message that the caller has validated: its Message-ID, recipients and bytes.

    Adds to the session without committing, so the caller commits the message together with
    whatever else the request changed (an answered flag, an idempotency key).
    """
    now = utcnow()
    message.status = QUEUED
    message.queued_at = now
    message.expires_at = now + minutes(current_app.config["MAILSENDER_LIFETIME_MINUTES"])
    # A redirect's Resent-Message-ID is ours: in the mailbox's domain, not the original sender's.
    mailbox = db.session.get(Mailbox, message.from_mailbox_id) if message.from_mailbox_id else None
    message.message_id = message.message_id or make_message_id(
        mailbox.address if mailbox is not None else (message.envelope_from or message.from_address))
    seen: set[str] = set()
    for role, addresses in (("to", message.to_addresses), ("cc", message.cc_addresses),
                            ("bcc", message.bcc_addresses), ("log", [settings.log_email_address])):
        for address in addresses or []:
            if address and address.lower() not in seen:
                seen.add(address.lower())
                message.recipients.append(MessageRecipient(address=address, role=role))
    # ComposeError (a ValueError) when the message cannot be composed safely: nothing is queued.
    render(message, settings)
    db.session.add(message)
    db.session.flush()
    return message


# --- the database's clock -----------------------------------------------------------------


def db_now(offset_seconds: float = 0.0, dialect_name: str | None = None):
    """The database's current time plus `offset_seconds`, as an SQL expression (for the app's
    database, or for a `dialect_name` given).

    Leases are timed by the database so that nodes with skewed clocks agree on when one ends.
    On SQLite the text has the same shape SQLAlchemy stores (microseconds), so that text
    comparison orders it correctly against stored timestamps.
    """
    seconds = float(offset_seconds)
    if (dialect_name or db.engine.dialect.name) == "sqlite":
        return literal_column(
            f"(strftime('%Y-%m-%d %H:%M:%f', 'now', '{seconds:+.6f} seconds') || '000')"
        )
    return literal_column(f"(clock_timestamp() + make_interval(secs => {seconds:.6f}))")


# --- claims -------------------------------------------------------------------------------


@dataclass
class Recipient:
    id: int
    address: str
    role: str
    status: str
    code: int | None = None
    text: str | None = None


@dataclass
class Claimed:
    """A claimed message, with what the SMTP path needs and nothing it does not."""

    id: int
    envelope_from: str
    data: bytes
    rendered_version: int | None
    expires_at: datetime | None
    attempt_count: int
    recipients: list[Recipient] = field(default_factory=list)

    @property
    def to_send(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status in _UNSETTLED]


def _due_branches(now):
    """The three ways a message is due, each one index range of ix_outgoing_claim."""
    return (
        _MESSAGES.c.status == QUEUED,
        and_(_MESSAGES.c.status == DEFERRED, _MESSAGES.c.retry_at <= now),
        # A claim whose lease ran out goes back to the queue.
        and_(_MESSAGES.c.status == SENDING, _MESSAGES.c.lease_until < now),
    )


def claim_batch(partition_id: int, owner: str, limit: int, *, priority_enabled: bool,
                lease_seconds: float) -> list[Claimed]:
    """Claims up to `limit` due messages of the partition for `owner`: claim_ids, then read_claimed."""
    with db.engine.connect() as connection:
        ids = claim_ids(connection, partition_id, owner, limit, priority_enabled=priority_enabled,
                        lease_seconds=lease_seconds)
    return read_claimed(ids, owner, priority_enabled)


def claim_ids(connection, partition_id: int, owner: str, limit: int, *, priority_enabled: bool,
              lease_seconds: float) -> list[int]:
    """Claims up to `limit` due messages of the partition for `owner`; their ids, in no order.

    Due: queued; deferred with its retry time passed; or sending under a lease that ran out.
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
    selection = driver_statement(_claim_selection(connection.dialect, priority_enabled), connection,
                                 claim_partition=partition_id, claim_limit=limit)
    # Run on the driver, with the ids in one value: the write lock is held for the two
    # statements and nothing else.
    with driver_transaction(connection) as writer:
        [(listed,)] = writer.run(selection)
        ids = [int(value) for value in listed.split(",")] if listed else []
        if ids:
            writer.query(f"UPDATE outgoing_message SET status = ?, claim_owner = ?, "
                         f"lease_until = {db_now(lease_seconds)} WHERE id IN ({{ids}})",
                         [SENDING, owner, writer.id_list(ids)])
    return ids


@functools.lru_cache(maxsize=16)  # a node has one database; tests make many
def _claim_selection(dialect, priority_enabled: bool):
    """The ids of the partition's first due messages, in claim order, as one text value;
    compiled once per database and order (building and compiling it cost more than running it).
    """
    now = db_now(dialect_name=dialect.name)
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
        for condition in _due_branches(now)
    )).subquery()
    picked = select(due.c.id).order_by(*(due.c[column.name] for column in columns)).limit(limit).subquery()
    return select(func.aggregate_strings(cast(picked.c.id, String), ",")).compile(dialect=dialect)


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
        cursor = connection.connection.cursor()
        mark = "?" if connection.dialect.name == "sqlite" else "%s"
        for chunk in _chunks(ids):
            marks = ", ".join([mark] * len(chunk))
            cursor.execute(
                "SELECT m.id, m.envelope_from, m.from_address, c.rendered, m.rendered_version, m.expires_at, "
                "m.attempt_count, m.priority, m.queued_at FROM outgoing_message m "
                "LEFT JOIN message_content c ON c.message_id = m.id "
                f"WHERE m.claim_owner = {mark} AND m.id IN ({marks})",
                [owner, *chunk])
            for (id_, envelope_from, from_address, rendered, rendered_version, expires_at, attempt_count,
                 priority, queued_at) in cursor.fetchall():
                claimed[id_] = Claimed(
                    id=id_, envelope_from=envelope_from or from_address, data=_as_bytes(rendered),
                    rendered_version=rendered_version, expires_at=_as_utc(expires_at),
                    attempt_count=attempt_count or 0)
                order[id_] = (priority, queued_at, id_) if priority_enabled else (queued_at, id_)
            cursor.execute(
                "SELECT id, message_id, address, role, status, code, text FROM message_recipient "
                f"WHERE message_id IN ({marks}) ORDER BY id", chunk)
            for id_, message_id, address, role, status, code, text in cursor.fetchall():
                message = claimed.get(message_id)
                if message is not None:
                    message.recipients.append(Recipient(id_, address, role, status, code, text))
        connection.rollback()
    return sorted(claimed.values(), key=lambda message: order[message.id])


def _as_utc(value) -> datetime | None:
    """A timestamp as the driver gives it (SQLite: TZDateTime's UTC text) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def _as_bytes(value) -> bytes | None:
    # psycopg gives bytea as memoryview.
    return bytes(value) if isinstance(value, memoryview) else value


def _chunks(ids: list[int], size: int = 500):
    # SQLite limits the number of bound parameters in one statement.
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def refresh_rendering(batch: list[Claimed], settings: MailSenderSettings) -> None:
    """Makes the claimed batch fit the current settings, and commits.

    Messages whose bytes were built under other settings are rendered again (bytes, envelope
    sender, training decision); only these few go through the MIME builder, the rest keep the
    bytes made at enqueue. While training mode is on, every claimed message's open recipients
    outside the company domains are withheld, whatever version it was rendered under (a
    requeued message must not slip out). A message that can no longer be composed safely is
    failed with the reason and taken out of `batch`, never sent.
    """
    version = settings.version
    stale = [m for m in batch if m.data is None or m.rendered_version != version]
    if not stale and not settings.training_enabled:
        return
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
                if recipient.status in _UNSETTLED and is_withheld(recipient.address, domains):
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
    db.session.commit()


def _fail_uncomposable(connection, message_id: int, reason: str) -> None:
    text = f"not sent: the message cannot be composed safely: {reason}"
    connection.execute(update(_RECIPIENTS).where(_RECIPIENTS.c.message_id == message_id,
                                                 _RECIPIENTS.c.status.in_(_UNSETTLED))
                       .values(status=RCPT_FAILED, text=text))
    connection.execute(update(_MESSAGES).where(_MESSAGES.c.id == message_id, _MESSAGES.c.status == SENDING)
                       .values(status=FAILED, finished_at=utcnow(), retry_at=None, claim_owner=None,
                               lease_until=None, last_error=text))


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


# --- outcomes -----------------------------------------------------------------------------


@dataclass
class RecipientReply:
    """One recipient's answer in one SMTP transaction."""

    address: str
    status: str  # RCPT_ACCEPTED, RCPT_DEFERRED or RCPT_FAILED
    code: int | None
    text: str


@dataclass
class Transaction:
    """One SMTP transaction (or the attempt at one) for one message: a DeliveryAttempt row."""

    outcome: str  # accepted, deferred, failed
    code: int | None
    detail: str
    recipients: list[RecipientReply]


@dataclass
class Settled:
    """What became of a claimed message: its new state and the rows to write."""

    message: Claimed
    status: str
    transactions: list[Transaction]
    # Whose claim it is: moved only while this owner still holds it (default: record_outcomes' owner).
    owner: str | None = None
    retry_at: datetime | None = None
    last_error: str | None = None
    changed: list[Recipient] = field(default_factory=list)


def backoff(deferrals: int) -> timedelta:
    """The wait before retry number `deferrals`: first, doubling, capped (product minutes)."""
    config = current_app.config
    first = config["MAILSENDER_BACKOFF_FIRST_MINUTES"]
    cap = config["MAILSENDER_BACKOFF_MAX_MINUTES"]
    return minutes(min(cap, first * 2 ** max(0, deferrals - 1)))


def settle(message: Claimed, transactions: list[Transaction], now: datetime) -> Settled:
    """Applies the transactions' replies to the message's recipients and decides its state.

    A message is sent once every recipient is settled and at least one was accepted; failed
    when every recipient is settled and none was; deferred while any waits for a retry (until
    its lifetime ends, then failed). The log recipient never decides: it is retried along
    with the others, but alone it holds nothing back.
    """
    by_address = {r.address.lower(): r for r in message.to_send}
    changed: dict[int, Recipient] = {}
    last_error = None
    for transaction in transactions:
        for reply in transaction.recipients:
            recipient = by_address.get(reply.address.lower())
            if recipient is None:
                continue
            recipient.status, recipient.code, recipient.text = reply.status, reply.code, reply.text
            changed[recipient.id] = recipient
            if reply.status != RCPT_ACCEPTED:
                last_error = f"{reply.code or ''} {reply.text}".strip()

    deciding = [r for r in message.recipients if r.role != LOG_ROLE] or message.recipients
    statuses = {r.status for r in deciding}
    result = Settled(message=message, status=SENT, transactions=transactions, last_error=last_error)
    if statuses & set(_UNSETTLED):
        deferrals = message.attempt_count + len(transactions)
        if message.expires_at is not None and now >= message.expires_at:
            result.status = FAILED
            for recipient in message.recipients:
                if recipient.status in _UNSETTLED:
                    recipient.status = RCPT_FAILED
                    recipient.text = f"lifetime ended; last reply: {recipient.text or 'none'}"
                    changed[recipient.id] = recipient
            result.last_error = f"lifetime ended; last reply: {last_error or 'none'}"
        else:
            result.status = DEFERRED
            result.retry_at = now + backoff(deferrals)
            if message.expires_at is not None:
                result.retry_at = min(result.retry_at, message.expires_at)
    elif RCPT_ACCEPTED in statuses:
        result.status = SENT
    elif RCPT_TRAINING in statuses:
        result.status = TRAINING
    else:
        result.status = FAILED
    result.changed = list(changed.values())
    return result


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
    as every write transaction here does (webapp/database.py). It skips SQLAlchemy's
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
