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
- data_replies=["451 4.3.0 Busy", "250 OK"]: the reply to the n-th DATA (the last repeats).
- mail_replies=[...]: the same for MAIL FROM.
- max_recipients=N: "452 4.5.3 Too many recipients" for the N+1-th RCPT of one transaction.
- size_limit=N: advertises SIZE N and refuses larger messages (aiosmtpd's own check).
- tls="starttls" | "implicit" with authority=TlsAuthority(): a trustme certificate for
  127.0.0.1/localhost; authority.ca_file is the PEM a client must trust.
- users={"user": "password"}: AUTH PLAIN/LOGIN required (over TLS unless tls is None, where
  aiosmtpd is told to allow it on loopback); xoauth2_tokens={"user": "token"} adds XOAUTH2.
- data_delay=seconds: wait that long before answering each DATA (a slow server).
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

server.commands lists the transaction commands the server saw, in order ("MAIL", "RCPT",
"RSET", "DATA" — DATA as soon as the command arrives, whatever follows), so a test can assert
that nothing was even offered for delivery. server.pipelined lists, for each MAIL, whether the
commands after it had arrived with it (in one write).

SmtpServer.free_port() gives a port nobody listens on, for "the server is down".
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
                 xoauth2_tokens, data_delay, pipelining, ehlo_delay=0.0):
        self.server = server
        self.pipelining = pipelining
        self.data_delay = data_delay
        self.ehlo_delay = ehlo_delay
        self.rcpt_scripts = {address.lower(): _Script(replies) for address, replies in (rcpt_replies or {}).items()}
        self.data_script = _Script(data_replies)
        self.mail_script = _Script(mail_replies)
        self.max_recipients = max_recipients
        self.xoauth2_tokens = xoauth2_tokens or {}

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        if self.ehlo_delay:
            await asyncio.sleep(self.ehlo_delay)
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
        reply = self.data_script.next()
        if reply and not reply.startswith("2"):
            return reply
        data = envelope.original_content or b""
        match = _MESSAGE_ID.search(data)
        self.server._arrived(Received(envelope.mail_from, list(envelope.rcpt_tos), data,
                                      match.group(1).decode("ascii", "replace").strip() if match else None,
                                      tuple(session.peer) if session.peer else None))
        if self.server.unsolicited:
            asyncio.get_running_loop().call_later(
                0.05, lambda: asyncio.ensure_future(server.push(self.server.unsolicited)))
        return "250 2.0.0 OK queued"

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
    """aiosmtpd's SMTP, noting each DATA command the moment it arrives, and whether the commands
    after a MAIL came with it."""

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
                 smtputf8: bool = True, unsolicited: str | None = None):
        self.port = port or self.free_port()
        self.messages: list[Received] = []
        self.commands: list[str] = []
        self.pipelined: list[bool] = []
        self.lax_data = lax_data
        self.unsolicited = unsolicited
        self._condition = threading.Condition()
        self.handler = _Handler(self, rcpt_replies, data_replies, mail_replies, max_recipients, xoauth2_tokens,
                                data_delay, pipelining, ehlo_delay)
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

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Blocks until at least `count` messages arrived; fails the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.messages)} of {count} messages arrived in {timeout} s")
                self._condition.wait(left)
            return list(self.messages)

    def rcpt_count(self, address: str) -> int:
        """How many RCPT TO the scripted address got (only addresses given in rcpt_replies)."""
        script = self.handler.rcpt_scripts.get(address.lower())
        return script.count if script else 0

    def message_ids(self) -> list[str | None]:
        with self._condition:
            return [m.message_id for m in self.messages]
