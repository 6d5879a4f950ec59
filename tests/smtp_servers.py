"""Real SMTP servers on loopback for tests: aiosmtpd in a thread, scripted per recipient and attempt.

Import from any test; nothing here is a mock. Each server records what really arrived.

    from tests.smtp_servers import SmtpServer, TlsAuthority

    with SmtpServer() as server:                  # plain SMTP on 127.0.0.1, a free port
        ... point the settings at server.host, server.port ...
        server.wait_for(3)                        # blocks until 3 messages arrived (or fails)
        server.messages                           # [Received(mail_from, rcpt_tos, data, message_id)]
        server.message_ids()                      # Message-ID of each arrival, in order

Options (keywords of SmtpServer):
- rcpt_replies={"a@x.test": ["451 4.3.0 Try later", "451 4.3.0 Try later", "250 OK"]}: the reply
  to the n-th RCPT TO for that address (the last one repeats); "250 …" accepts.
- data_replies=["451 4.3.0 Busy", "250 OK"]: the reply to the n-th DATA (the last repeats); a
  2xx one is said as written once the message is taken ("250 2.0.0 Ok: queued as ABC123").
- mail_replies=[...]: the same for MAIL FROM.
- max_recipients=N: "452 4.5.3 Too many recipients" for the N+1-th RCPT of one transaction.
- size_limit=N: advertises SIZE N and refuses larger messages (aiosmtpd's own check).
- tls="starttls" | "implicit" with authority=TlsAuthority(): a trustme certificate for
  127.0.0.1/localhost; authority.ca_file is the PEM a client must trust.
- users={"user": "password"}: AUTH PLAIN/LOGIN required (over TLS unless tls is None, where
  aiosmtpd is told to allow it on loopback); xoauth2_tokens={"user": "token"} adds XOAUTH2.
- data_delay=seconds: wait that long before answering each DATA (a slow server).
- data_gate=threading.Event(): answer no DATA until the test sets it (a server that stalls for
  exactly as long as the test needs, however slow the machine); with hold_after=N, only once N
  messages have arrived (so that a test can act in the middle of a drain, knowing where).
- ehlo_delay=seconds: the same for each EHLO.
- port=N: listen on a chosen port (start the server later to play "the server comes back").
- auth_mechanisms=["LOGIN"]: offer only these AUTH mechanisms (of PLAIN, LOGIN and XOAUTH2).
- pipelining=False: do not offer PIPELINING (RFC 2920), which is offered by default, as the
  servers a support team relays through do; the client then waits for each reply in turn.
- smtputf8=False: do not offer SMTPUTF8 (RFC 6531), which aiosmtpd offers by default.
- unsolicited="421 4.4.2 Idle too long": said, unasked, a moment after each message is taken
  (as a server that is about to drop an idle client does), the connection left open.
- lax_data=True: answer DATA with 354 even when no recipient was accepted (RFC 2920 lets a
  server do so), then refuse the empty message that must follow.
- max_connections=N: a relay's connection limit: a connection beyond N open ones gets "421 4.7.0
  Too many connections" at the greeting and is closed (server.counts["turned_away"]).
- ehlo_requires_fqdn=True: EHLO with a name without a dot is refused with 504 5.5.2, as Postfix's
  reject_non_fqdn_helo_hostname does; server.ehlo_names lists every name given.

server.wait_for_ended(n) blocks until the server has seen n connections end, so that a test can
assert what never arrived once the connection that could have carried it is gone.

server.commands lists the transaction commands the server saw, in order ("MAIL", "RCPT",
"RSET", "DATA" — DATA as soon as the command arrives, whatever follows), so a test can assert
that nothing was even offered for delivery. server.pipelined lists, for each MAIL, whether the
commands after it had arrived with it (in one write).

SmtpServer.free_port() gives a port nobody listens on, for "the server is down".

ScriptedSmtpServer(faults=[...]) is a plain SMTP server written out here, for what aiosmtpd
will not do: the n-th connection meets the n-th fault, and later ones are served normally.
Faults: "421 at greeting" (said, then the connection closed), "stall at greeting", "stall at
RCPT", "stall after the payload" (nothing said until the client gives up), and "drop after the
payload" (closed unanswered). A payload read in full counts as arrived, as a real server may
have queued it: `messages` is what the server could deliver, duplicates included.
"""
from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(.+?)\r?$", re.IGNORECASE | re.MULTILINE)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message_id: str | None
    peer: tuple | None = None  # the client's (host, port): one per connection
    at: float = field(default_factory=time.monotonic)


class TlsAuthority:
    """A throw-away certificate authority (trustme) and a server certificate for loopback."""

    def __init__(self, directory=None):
        import tempfile

        import trustme

        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self._dir = directory or tempfile.mkdtemp(prefix="smtp-ca-")
        self.ca_file = f"{self._dir}/ca.pem"
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


class _Script:
    """Replies by position: the n-th call gets the n-th reply, and the last one repeats."""

    def __init__(self, replies):
        self.replies = list(replies or [])
        self.count = 0

    def next(self) -> str | None:
        if not self.replies:
            return None
        reply = self.replies[min(self.count, len(self.replies) - 1)]
        self.count += 1
        return reply


class _Handler:
    def __init__(self, server: "SmtpServer", rcpt_replies, data_replies, mail_replies, max_recipients,
                 xoauth2_tokens, data_delay, pipelining, ehlo_delay=0.0, data_gate=None, hold_after=0):
        self.server = server
        self.pipelining = pipelining
        self.data_delay = data_delay
        self.data_gate = data_gate
        self.hold_after = hold_after
        self.ehlo_delay = ehlo_delay
        self.rcpt_scripts = {address.lower(): _Script(replies) for address, replies in (rcpt_replies or {}).items()}
        self.data_script = _Script(data_replies)
        self.mail_script = _Script(mail_replies)
        self.max_recipients = max_recipients
        self.xoauth2_tokens = xoauth2_tokens or {}

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        if self.ehlo_delay:
            await asyncio.sleep(self.ehlo_delay)
        self.server.ehlo_names.append(hostname)
        if self.server.ehlo_requires_fqdn and "." not in hostname.strip("[]"):
            # As Postfix's reject_non_fqdn_helo_hostname answers.
            return [f"504 5.5.2 <{hostname}>: Helo command rejected: need fully-qualified hostname"]
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.server.commands.append("MAIL")
        reply = self.mail_script.next()
        if reply and not reply.startswith("2"):
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.server.commands.append("RCPT")
        if self.max_recipients is not None and len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        script = self.rcpt_scripts.get(address.lower())
        reply = script.next() if script else None
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        self.server.commands.append("RSET")
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_gate is not None and len(self.server.messages) >= self.hold_after:
            while not self.data_gate.is_set():
                await asyncio.sleep(0.02)
        reply = self.data_script.next()
        if reply and not reply.startswith("2"):
            return reply
        data = envelope.original_content or b""
        match = _MESSAGE_ID.search(data)
        self.server._arrived(Received(envelope.mail_from, list(envelope.rcpt_tos), data,
                                      match.group(1).decode("ascii", "replace").strip() if match else None,
                                      tuple(session.peer) if session.peer else None))
        if self.server.unsolicited:
            async def say_unasked():
                await server.push(self.server.unsolicited)
                self.server._note("unsolicited")

            asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(say_unasked()))
        return reply or "250 2.0.0 OK queued"

    async def auth_XOAUTH2(self, server, args):
        try:
            decoded = base64.b64decode(args[1]).decode("utf-8")
            fields = dict(part.split("=", 1) for part in decoded.split("\x01") if "=" in part)
            user, token = fields.get("user"), fields.get("auth", "").removeprefix("Bearer ")
        except Exception:
            return AuthResult(success=False, handled=False)
        ok = user in self.xoauth2_tokens and self.xoauth2_tokens[user] == token
        return AuthResult(success=ok, handled=False, auth_data=user)


class _Authenticator:
    def __init__(self, users):
        self.users = users

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8")
            ok = self.users.get(user) == auth_data.password.decode("utf-8")
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, noting each DATA command the moment it arrives, whether the commands
    after a MAIL came with it, and each connection's end."""

    def connection_made(self, transport):
        server = self.event_handler.server
        with server._condition:
            server.open_connections += 1
            self._turned_away = server.max_connections is not None and \
                server.open_connections > server.max_connections
        super().connection_made(transport)

    async def _handle_client(self):
        if self._turned_away:
            # A relay at its connection limit: 421 at the greeting, and the connection closed.
            self.event_handler.server._note("turned_away")
            await self.push("421 4.7.0 Too many connections, try again later")
            self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error):
        super().connection_lost(error)
        if not getattr(self, "_ended", False):  # aiosmtpd may call it twice for one connection
            self._ended = True
            server = self.event_handler.server
            with server._condition:
                server.open_connections -= 1
            server._note("ended")

    async def smtp_MAIL(self, arg):
        # What the client wrote after MAIL and the server has not read yet (asyncio's buffer).
        self.event_handler.server.pipelined.append(b"RCPT TO:" in bytes(self._reader._buffer))
        return await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg):
        server = self.event_handler.server
        server.commands.append("DATA")
        if server.lax_data and self.envelope is not None and not self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            while (await self._reader.readuntil(b"\r\n")) != b".\r\n":
                pass
            await self.push("554 5.5.1 No valid recipients")
            return
        return await super().smtp_DATA(arg)


class _RecordingController(Controller):
    def factory(self):
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1; a context manager that starts and stops it."""

    host = "127.0.0.1"

    def __init__(self, *, port: int | None = None, rcpt_replies=None, data_replies=None, mail_replies=None,
                 max_recipients: int | None = None, size_limit: int | None = None, tls: str | None = None,
                 authority: TlsAuthority | None = None, users: dict | None = None,
                 xoauth2_tokens: dict | None = None, data_delay: float = 0.0, ehlo_delay: float = 0.0,
                 auth_mechanisms: list[str] | None = None, pipelining: bool = True, lax_data: bool = False,
                 smtputf8: bool = True, unsolicited: str | None = None,
                 data_gate: threading.Event | None = None, hold_after: int = 0,
                 max_connections: int | None = None, ehlo_requires_fqdn: bool = False):
        self.port = port or self.free_port()
        self.max_connections = max_connections  # more at once are turned away with 421
        self.open_connections = 0
        self.ehlo_requires_fqdn = ehlo_requires_fqdn  # EHLO of a name without a dot: 504
        self.ehlo_names: list[str] = []
        self.messages: list[Received] = []
        self.commands: list[str] = []
        self.pipelined: list[bool] = []
        self.lax_data = lax_data
        self.unsolicited = unsolicited
        self._condition = threading.Condition()
        # connections ended; unasked replies said; connections turned away (max_connections)
        self.counts = {"ended": 0, "unsolicited": 0, "turned_away": 0}
        self.handler = _Handler(self, rcpt_replies, data_replies, mail_replies, max_recipients, xoauth2_tokens,
                                data_delay, pipelining, ehlo_delay, data_gate, hold_after)
        kwargs = {"hostname": self.host, "port": self.port, "enable_SMTPUTF8": smtputf8}
        if size_limit is not None:
            kwargs["data_size_limit"] = size_limit
        if tls is not None and authority is None:
            raise ValueError("tls needs an authority")
        if tls == "starttls":
            kwargs["tls_context"] = authority.server_context()
        elif tls == "implicit":
            kwargs["ssl_context"] = authority.server_context()
        if users or xoauth2_tokens:
            kwargs["authenticator"] = _Authenticator(users or {})
            kwargs["auth_required"] = True
            # Over plain SMTP the test server allows AUTH: the client's rule is under test.
            kwargs["auth_require_tls"] = tls is not None
            if tls == "implicit":
                kwargs["auth_require_tls"] = False  # aiosmtpd sees no STARTTLS on an implicit session
            if auth_mechanisms is not None:
                offered = {"PLAIN", "LOGIN"} | ({"XOAUTH2"} if xoauth2_tokens else set())
                kwargs["auth_exclude_mechanism"] = sorted(offered - {m.upper() for m in auth_mechanisms})
        self.controller = _RecordingController(self.handler, **kwargs)

    @staticmethod
    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def start(self) -> "SmtpServer":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> "SmtpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _arrived(self, received: Received) -> None:
        with self._condition:
            self.messages.append(received)
            self._condition.notify_all()

    def _note(self, what: str) -> None:
        with self._condition:
            self.counts[what] += 1
            self._condition.notify_all()

    def _wait(self, done, timeout: float, failure) -> None:
        deadline = time.monotonic() + timeout
        with self._condition:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(failure())
                self._condition.wait(left)

    # The deadlines are generous on purpose: they only bound a failing test, and a busy CI
    # machine must not turn a slow arrival into a failure.
    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Blocks until at least `count` messages arrived; fails the test after `timeout` seconds."""
        self._wait(lambda: len(self.messages) >= count, timeout,
                   lambda: f"{len(self.messages)} of {count} messages arrived in {timeout} s")
        with self._condition:
            return list(self.messages)

    def wait_for_ended(self, count: int, timeout: float = 60.0) -> None:
        """Blocks until the server has seen `count` connections end."""
        self._wait(lambda: self.counts["ended"] >= count, timeout,
                   lambda: f"{self.counts['ended']} of {count} connections ended in {timeout} s")

    def wait_for_unsolicited(self, count: int = 1, timeout: float = 60.0) -> None:
        """Blocks until the server has said its unsolicited reply `count` times."""
        self._wait(lambda: self.counts["unsolicited"] >= count, timeout,
                   lambda: f"the unsolicited reply was said {self.counts['unsolicited']} of {count} times")

    def rcpt_count(self, address: str) -> int:
        """How many RCPT TO the scripted address got (only addresses given in rcpt_replies)."""
        script = self.handler.rcpt_scripts.get(address.lower())
        return script.count if script else 0

    def message_ids(self) -> list[str | None]:
        with self._condition:
            return [m.message_id for m in self.messages]


FAULTS = ("421 at greeting", "stall at greeting", "stall at RCPT", "stall after the payload",
          "drop after the payload")


class ScriptedSmtpServer:
    """A scripted asyncio SMTP server on loopback (see the module's docstring); no PIPELINING."""

    host = "127.0.0.1"

    def __init__(self, faults=()):
        unknown = set(faults) - set(FAULTS) - {None}
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.faults = list(faults)
        self.port = 0
        self.messages: list[Received] = []
        self.connected: list[float] = []  # when each connection came (monotonic)
        self._condition = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None
        self._sessions: set[asyncio.Task] = set()

    def __enter__(self) -> "ScriptedSmtpServer":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, self.host, 0), self._loop).result(30)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            for session in list(self._sessions):
                session.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Blocks until at least `count` messages arrived; fails the test after `timeout` seconds."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{len(self.messages)} of {count} messages arrived in {timeout} s")
            return list(self.messages)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._sessions.add(asyncio.current_task())
        with self._condition:
            number = len(self.connected)
            self.connected.append(time.monotonic())
        fault = self.faults[number] if number < len(self.faults) else None

        async def say(line: str) -> None:
            writer.write(line.encode("ascii") + b"\r\n")
            await writer.drain()

        async def until_the_client_leaves() -> None:
            while await reader.read(4096):
                pass

        try:
            if fault == "stall at greeting":
                return await until_the_client_leaves()
            if fault == "421 at greeting":
                return await say("421 4.3.2 Too busy, try again later")
            await say("220 scripted.test ESMTP")
            mail_from, rcpt_tos = "", []
            while line := await reader.readline():
                command, _, argument = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
                verb = command.upper()
                if verb in ("EHLO", "HELO"):
                    await say("250-scripted.test\r\n250 8BITMIME" if verb == "EHLO" else "250 scripted.test")
                elif verb == "MAIL":
                    mail_from, rcpt_tos = argument.partition(":")[2].split(">")[0].strip("<"), []
                    await say("250 OK")
                elif verb == "RCPT":
                    if fault == "stall at RCPT":
                        return await until_the_client_leaves()
                    rcpt_tos.append(argument.partition(":")[2].split(">")[0].strip("<"))
                    await say("250 OK")
                elif verb == "DATA":
                    await say("354 End data with <CR><LF>.<CR><LF>")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    match = _MESSAGE_ID.search(data)
                    with self._condition:
                        self.messages.append(Received(mail_from, rcpt_tos, data[:-3],
                                                      match.group(1).decode("ascii", "replace").strip()
                                                      if match else None, writer.get_extra_info("peername")))
                        self._condition.notify_all()
                    if fault == "drop after the payload":
                        return
                    if fault == "stall after the payload":
                        return await until_the_client_leaves()
                    await say("250 2.0.0 OK queued")
                elif verb == "QUIT":
                    return await say("221 Bye")
                else:  # RSET, NOOP
                    await say("250 OK")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._sessions.discard(asyncio.current_task())
            writer.close()
