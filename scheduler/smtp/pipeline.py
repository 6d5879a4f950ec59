"""A sender's kept-open connection and its transactions: the bytes on the wire.

aiosmtplib opens the session (smtp/session.py); the transactions then run on this module's own
protocol, which pipelines MAIL, RCPT and DATA where the server offers PIPELINING (RFC 2920) and
sends a message with its end-of-data line in one write: two round trips a message, where
aiosmtplib makes four.

Nothing here raises at the caller for something an SMTP server or a network can do: every send
answers a Delivery, whose transactions say per recipient accepted, deferred or failed with the
server's code and text. Connection-level trouble (refused, timed out, dropped, TLS, EHLO or AUTH
refused) defers. A recipient fails only on a server's 5xx reply to MAIL, RCPT or DATA, a message
above the server's SIZE, or an address that no SMTP command can carry.
"""
from __future__ import annotations

import asyncio
import collections
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiosmtplib import SMTPException, SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected

from webapp.core.security import Scrubber
from webapp.core.states import (
    ANSWER_CONFIGURATION,
    ANSWER_MESSAGE_PERMANENT,
    ANSWER_QUOTA,
    ANSWER_RECIPIENT_PERMANENT,
    ANSWER_THROTTLED,
    ANSWER_TRANSIENT,
    ANSWER_UNCLEAR,
    ATTEMPT_DEFERRED,
    ATTEMPT_FAILED,
    RCPT_ACCEPTED,
    RCPT_DEFERRED,
    RCPT_FAILED,
    RCPT_UNCLEAR,
)

from ..outcomes import STAGE_HANDSHAKE, STAGE_TOKEN, Answer, RecipientReply, Transaction, classify, hinted_seconds
from .replies import (
    COMPLETED,
    START_INPUT,
    MalformedReply,
    Reply,
    TransactionReplies,
    accepts_recipient,
    holds_over,
    take_reply,
    transaction_outcome,
)
from .session import BUSY, HANDSHAKE, SETTING, SessionError, SmtpConfig, TokenSource, describe_error, open_session

# A reused connection idle for longer than this is checked with NOOP before a transaction:
# servers drop idle clients on their own schedule.
NOOP_AFTER_IDLE_SECONDS = 5.0
# What one read of a connection takes at most: many replies, where the server pipelines them.
READ_BYTES = 16 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")


# After this many messages in a row whose every recipient was refused, the connection is
# closed and the next message opens a fresh one: a server such as Postfix slows a session down
# with each error (about 4 s a message) and at last hangs up ("too many errors").
FRESH_CONNECTION_AFTER_REFUSALS = 3


@dataclass
class Delivery:
    """What one send did: its transactions, and whether the server could not be reached at all."""

    transactions: list[Transaction]
    unreachable: bool = False
    # The server turned the connection away at once (421 greeting, or closed): too many
    # connections, maybe; the sender lets its other connections take the batch.
    turned_away: bool = False

    @property
    def answer(self) -> str:
        """The class that decides for the route: a configuration fault or quota over the rest."""
        kinds = [t.answer for t in self.transactions]
        return next((k for k in (ANSWER_CONFIGURATION, ANSWER_QUOTA, ANSWER_THROTTLED) if k in kinds),
                    kinds[0] if kinds else ANSWER_TRANSIENT)


class LostAfterEndOfData(Exception):
    """The end-of-data line went out and no reply came: the server may have taken the message."""

    def __init__(self, error: BaseException, replies: TransactionReplies, recipients: list[str]):
        super().__init__(describe_error(error))
        self.replies, self.recipients = replies, recipients


def session_answer(error: SessionError) -> Answer:
    """The class of a failure to open the session."""
    if error.cause == HANDSHAKE:
        return classify(STAGE_HANDSHAKE, None, error.message)
    if error.cause == SETTING:
        return classify(STAGE_TOKEN, None, error.message)
    if error.cause == BUSY:
        return Answer(ANSWER_THROTTLED, hinted_seconds(error.message))
    return classify(error.stage, error.code, error.message)


class SmtpConnection:
    """One sender's connection: opened on demand, reused while inside the idle time, reopened after
    errors or when the settings change. Used only from the node's asyncio loop.

    aiosmtplib opens the session (connect, TLS, EHLO, AUTH); the transactions then run on a
    _Replies protocol of this module, which can read the replies to pipelined commands.
    """

    def __init__(self):
        self._wire: _Replies | None = None
        self._extensions: dict[str, str] = {}
        self._timeout = 60.0
        self._identity: tuple | None = None
        self._last_used = 0.0
        self._idle_close: asyncio.TimerHandle | None = None
        self._tokens: tuple[str, ...] = ()  # the XOAUTH2 tokens lately logged in with
        self._scrubber_for: tuple | None = None
        self._scrubber: Scrubber | None = None
        self._opened_ms: int | None = None  # how long opening the session took, for its first transaction
        self._refused_in_a_row = 0  # messages whose every recipient was refused, one after another
        # While the reply to an end of data is awaited: the recipients the server had accepted
        # (the sender marks them unclear if it gives the batch up then: the server may have it).
        self.unanswered_end: list[str] | None = None

    @property
    def is_open(self) -> bool:
        return self._wire is not None and self._wire.is_open

    async def send(self, config: SmtpConfig, envelope_from: str, recipients: list[str], data: bytes,
                   token_source: TokenSource | None = None,
                   before_end_of_data: Callable[[], Awaitable[None]] | None = None) -> Delivery:
        """Delivers `data` to `recipients`, splitting the list where the server answers 452.

        `before_end_of_data` is awaited once the server has answered DATA, before the message
        and the end-of-data line that asks the server to take it: the sender waits there for
        the previous message's outcome to be committed, so that the commit overlaps MAIL, RCPT
        and DATA, and yet no second accepted message is ever uncommitted. Never raises for
        what a server or the network does; see the module's docstring (an exception from
        `before_end_of_data` propagates).

        Every text of the answer is scrubbed of the configuration's secrets and tokens first: a
        server may echo what it was sent, and these texts are stored and shown to agents.
        """
        delivery = await self._send(config, envelope_from, recipients, data, token_source, before_end_of_data)
        scrub = self._scrubber_of(config)
        for transaction in delivery.transactions:
            transaction.detail = scrub(transaction.detail)
            for reply in transaction.recipients:
                reply.text = scrub(reply.text)
        return delivery

    def _scrubber_of(self, config: SmtpConfig) -> Scrubber:
        key = (config.username, config.password, config.hidden, self._tokens)
        if key != self._scrubber_for:
            self._scrubber_for, self._scrubber = key, config.scrubber(self._tokens)
        return self._scrubber

    async def _send(self, config: SmtpConfig, envelope_from: str, recipients: list[str], data: bytes,
                    token_source: TokenSource | None,
                    before_end_of_data: Callable[[], Awaitable[None]] | None) -> Delivery:
        self._cancel_idle_close()
        self.unanswered_end = None
        if self._refused_in_a_row >= FRESH_CONNECTION_AFTER_REFUSALS:
            self._refused_in_a_row = 0
            await self.close()
        started = time.monotonic()
        try:
            wire = await self._ensure(config, token_source)
        except SessionError as error:
            answer = session_answer(error)
            reply = [RecipientReply(a, RCPT_DEFERRED, error.code, str(error)) for a in recipients]
            return Delivery([Transaction(ATTEMPT_DEFERRED, error.code, str(error), reply, answer.kind,
                                         answer.hint_seconds, timings={"connect": _ms_since(started)})],
                            unreachable=True, turned_away=error.cause == BUSY)
        transactions: list[Transaction] = []
        size_limit = _size_limit(self._extensions)
        if size_limit and len(data) > size_limit:
            text = f"the message is {len(data)} bytes, more than the server's SIZE limit of {size_limit}"
            return Delivery([Transaction(ATTEMPT_FAILED, None, text, [RecipientReply(a, RCPT_FAILED, None, text)
                                                              for a in recipients], ANSWER_MESSAGE_PERMANENT)])
        utf8 = "smtputf8" in self._extensions
        unsendable = {a: reason for a in [envelope_from, *recipients] if (reason := _unsendable(a, utf8))}
        if envelope_from in unsendable:
            text = f"the envelope sender {unsendable[envelope_from]}"
            return Delivery([Transaction(ATTEMPT_FAILED, None, text, [RecipientReply(a, RCPT_FAILED, None, text)
                                                              for a in recipients], ANSWER_MESSAGE_PERMANENT)])
        if unsendable:
            transactions.append(Transaction(ATTEMPT_FAILED, None, "recipients that cannot be sent to",
                                            [RecipientReply(a, RCPT_FAILED, None, f"the address {unsendable[a]}")
                                             for a in recipients if a in unsendable], ANSWER_RECIPIENT_PERMANENT))
        pending = [a for a in recipients if a not in unsendable]
        opened_ms, self._opened_ms = self._opened_ms, None
        try:
            while pending:
                transaction, pending = await self._transaction(wire, envelope_from, pending, data,
                                                                before_end_of_data)
                if opened_ms is not None:
                    transaction.timings["connect"], opened_ms = opened_ms, None
                transactions.append(transaction)
            refused = transactions and all(r.status != RCPT_ACCEPTED for t in transactions for r in t.recipients)
            self._refused_in_a_row = self._refused_in_a_row + 1 if refused else 0
        except LostAfterEndOfData as lost:
            # The server may have taken it: the recipients it had accepted are unclear, not deferred.
            self.abort()
            text = f"connection lost after the end of data, before the server's reply: {lost}"
            transaction, _ = transaction_outcome(lost.recipients, lost.replies)
            for reply in transaction.recipients:
                if reply.status == RCPT_ACCEPTED:
                    reply.status, reply.code, reply.text = RCPT_UNCLEAR, None, text
            transactions.append(Transaction(ATTEMPT_DEFERRED, None, text, transaction.recipients, ANSWER_UNCLEAR))
        except (SMTPException, OSError, asyncio.TimeoutError) as error:
            # A timeout or a drop in the middle: whatever was not answered waits for a retry.
            self.abort()
            text = f"connection lost: {describe_error(error)}"
            answered = {r.address for t in transactions for r in t.recipients}
            late = [a for a in recipients if a not in answered]
            transactions.append(Transaction(ATTEMPT_DEFERRED, None, text,
                                            [RecipientReply(a, RCPT_DEFERRED, None, text) for a in late],
                                            ANSWER_TRANSIENT))
        except BaseException as error:
            # `before_end_of_data` failed, or the task was cancelled, inside a transaction: the
            # server must never see this message's end, nor would it take the next MAIL. The
            # transactions already done (a 452 split's first) travel with the error, scrubbed:
            # their recipients have the message, and must not get it again.
            self.abort()
            if isinstance(error, Exception):
                scrub = self._scrubber_of(config)
                for transaction in transactions:
                    transaction.detail = scrub(transaction.detail)
                    for reply in transaction.recipients:
                        reply.text = scrub(reply.text)
                error.done_transactions = transactions
            raise
        finally:
            self._last_used = time.monotonic()
        return Delivery(transactions)

    async def _ensure(self, config: SmtpConfig, token_source: TokenSource | None) -> "_Replies":
        now = time.monotonic()
        # A connection on which the server said something unasked (a 421 before it hangs up, as
        # an idle one may get) is not reused: that reply would be read as the next command's.
        if (self.is_open and self._wire.quiet and self._identity == config.identity
                and now - self._last_used < config.idle_seconds):
            if now - self._last_used < NOOP_AFTER_IDLE_SECONDS:
                return self._wire
            try:
                if (await self._wire.command(b"NOOP", self._timeout)).code == COMPLETED:
                    return self._wire
            except (SMTPException, OSError, asyncio.TimeoutError):
                pass
        await self.close()
        if token_source is not None:
            token_source = self._remembering(token_source)
        opening = time.monotonic()
        smtp, _ = await open_session(config, token_source)
        self._opened_ms = _ms_since(opening)
        self._extensions = dict(smtp.esmtp_extensions)
        self._timeout = config.command_timeout
        self._wire = _Replies(smtp.transport)
        self._identity = config.identity
        self._last_used = time.monotonic()
        return self._wire

    def _remembering(self, token_source: TokenSource) -> TokenSource:
        async def token() -> str:
            fetched = await token_source()
            self._tokens = (*self._tokens[-1:], fetched)  # the one before may still be echoed back
            return fetched

        return token

    async def _transaction(self, wire: "_Replies", envelope_from: str, recipients: list[str], data: bytes,
                           before_end_of_data=None) -> tuple[Transaction, list[str]]:
        """One MAIL/RCPT/DATA transaction; returns it and the recipients held over by a 452.

        Where the server offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA go out in one
        write and their replies are read in order: two round trips a message instead of four.
        """
        timeout = self._timeout
        started = time.monotonic()
        options = []
        if "size" in self._extensions:
            options.append(f"SIZE={len(data)}")
        if "8bitmime" in self._extensions and not data.isascii():
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if not all(address.isascii() for address in [envelope_from, *recipients]):
            options.append("SMTPUTF8")
            encoding = "utf-8"
        pipelined = "pipelining" in self._extensions
        mail = " ".join([f"MAIL FROM:<{envelope_from}>", *options]).encode(encoding)
        rcpts = [f"RCPT TO:<{address}>".encode(encoding) for address in recipients]
        if pipelined:
            wire.write(b"\r\n".join([mail, *rcpts, b"DATA"]) + b"\r\n")
            got = TransactionReplies(await wire.reply(timeout))
        else:
            got = TransactionReplies(await wire.command(mail, timeout))
        if got.mail.code != COMPLETED:
            await self._abandon(wire, unread=len(rcpts) + 1 if pipelined else 0)
            return _timed(transaction_outcome(recipients, got), started)
        accepted = held = 0
        for rcpt in rcpts:
            if held and not pipelined:
                got.rcpts.append(None)  # not offered: the next transaction takes it
                continue
            reply = await wire.reply(timeout) if pipelined else await wire.command(rcpt, timeout)
            got.rcpts.append(reply)
            if accepts_recipient(reply.code):
                accepted += 1
            elif holds_over(reply.code, accepted):
                held += 1
        if pipelined:
            got.data = await wire.reply(timeout)
        elif accepted:
            got.data = await wire.command(b"DATA", timeout)
        if not accepted:
            await self._abandon(wire, data_reply=got.data)
            return _timed(transaction_outcome(recipients, got), started)
        commands_ms = _ms_since(started)
        if got.data.code == START_INPUT:
            if before_end_of_data is not None:
                await before_end_of_data()
            ending = time.monotonic()
            wire.write(_wire_body(data) + b".\r\n")
            self.unanswered_end = [address for address, reply in zip(recipients, got.rcpts)
                                   if reply is not None and accepts_recipient(reply.code)]
            try:
                got.end = await wire.reply(timeout)
            except (SMTPException, OSError, asyncio.TimeoutError) as error:
                self.unanswered_end = None
                raise LostAfterEndOfData(error, got, recipients) from error
            # Left set when the wait is cancelled (a stop whose grace ran out): see Sender.deliver.
            self.unanswered_end = None
            timings = {"commands": commands_ms, "end": _ms_since(ending)}
        else:
            timings = {"commands": commands_ms}
        if got.final.code != COMPLETED:
            await self._abandon(wire)
        transaction, held_over = transaction_outcome(recipients, got)
        transaction.timings = timings
        return transaction, held_over

    async def _abandon(self, wire: "_Replies", unread: int = 0, data_reply: Reply | None = None) -> None:
        """Ends a refused transaction so that the connection can carry the next one: reads the
        `unread` replies still due to pipelined commands; ends with an empty message a DATA that
        the server took although no recipient was accepted (RFC 2920 allows a server that); then
        RSET. A connection that fails in this is dropped, and the next message opens another.
        """
        try:
            for _ in range(unread):
                data_reply = await wire.reply(self._timeout)
            if data_reply is not None and data_reply.code == START_INPUT:
                await wire.command(b".", self._timeout)
            if (await wire.command(b"RSET", self._timeout)).code != COMPLETED:
                self.abort()
        except (SMTPException, OSError, asyncio.TimeoutError):
            self.abort()

    def close_when_idle(self, idle_seconds: float) -> None:
        """Closes the connection if nothing uses it within `idle_seconds` (the SMTP timeout)."""
        self._cancel_idle_close()
        if self.is_open:
            loop = asyncio.get_running_loop()
            self._idle_close = loop.call_later(idle_seconds, lambda: loop.create_task(self.close()))

    def _cancel_idle_close(self) -> None:
        if self._idle_close is not None:
            self._idle_close.cancel()
            self._idle_close = None

    def abort(self) -> None:
        """Drops the connection at once; whatever was not sent yet never is."""
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.transport.abort()

    async def close(self) -> None:
        """QUIT politely; a server that is gone already is just forgotten."""
        self._cancel_idle_close()
        wire, self._wire = self._wire, None
        if wire is None:
            return
        try:
            if wire.is_open:
                await wire.command(b"QUIT", min(self._timeout, 5.0))
        except (SMTPException, OSError, asyncio.TimeoutError):
            pass
        finally:
            wire.transport.close()


class _Replies(asyncio.BufferedProtocol):
    """An open session's transport: writes commands, and queues every complete reply in order.

    aiosmtplib's own protocol keeps one reply at a time and drops data that arrives while one
    waits to be picked up, so it cannot read the replies to pipelined commands. A buffered
    protocol: the transport reads into one buffer kept for the connection, where a plain one
    has a new 256 KB allocated for every read, only to keep a few dozen bytes of it.
    """

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self._incoming = memoryview(bytearray(READ_BYTES))
        self._buffer = bytearray()
        self._replies: collections.deque[Reply] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._lost: SMTPException | None = None
        transport.set_protocol(self)

    @property
    def is_open(self) -> bool:
        return self._lost is None and not self.transport.is_closing()

    @property
    def quiet(self) -> bool:
        """Nothing has arrived that no command asked for."""
        return not self._replies and not self._buffer

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise self._lost or SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def command(self, line: bytes, timeout: float) -> Reply:
        self.write(line + b"\r\n")
        return await self.reply(timeout)

    async def reply(self, timeout: float) -> Reply:
        """The next reply; SMTPServerDisconnected, or SMTPReadTimeoutError after `timeout` seconds."""
        while not self._replies:
            if self._lost is not None:
                raise self._lost
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._replies.popleft()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._incoming

    def buffer_updated(self, nbytes: int) -> None:
        self._buffer += self._incoming[:nbytes]
        try:
            while (reply := take_reply(self._buffer)) is not None:
                self._replies.append(reply)
        except MalformedReply as error:  # not SMTP: nothing more on it can be trusted
            self._lose(SMTPResponseException(-1, str(error)))
            self.transport.abort()
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        return False  # the transport closes, and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(SMTPServerDisconnected("Connection lost"))

    def _lose(self, error: SMTPException) -> None:
        if self._lost is None:
            self._lost = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)



def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _timed(outcome: tuple[Transaction, list[str]], started: float) -> tuple[Transaction, list[str]]:
    outcome[0].timings = {"commands": _ms_since(started)}
    return outcome


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))


def _unsendable(address: str, utf8: bool) -> str | None:
    """Why `address` cannot go in MAIL FROM or RCPT TO as it is, or None.

    Addresses are parsed strictly when a message is queued; this holds the line anyway, since
    a CR or LF here would let an address inject SMTP commands.
    """
    if any(character in address for character in "\r\n\0<>") or not address:
        return "contains characters an SMTP command cannot carry"
    if not address.isascii() and not utf8:
        return "is not ASCII, and the server does not offer SMTPUTF8"
    return None


def _wire_body(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, ending in one, and a leading dot doubled."""
    data = _LINE_END.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data)


def _size_limit(extensions: dict[str, str]) -> int:
    value = extensions.get("size", "")
    try:
        return int(value.split()[0]) if value else 0
    except ValueError:
        return 0
