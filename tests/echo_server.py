"""A hostile SMTP relay for tests: a scripted asyncio server on loopback that repeats, in its
replies, the credentials it was sent (the AUTH line as it came, and the password in plain and
URL-encoded), as a server that wants them read back where agents look would.

    with EchoingSmtpServer(echo_at="auth") as server:   # AUTH answered 535 with the echo
    with EchoingSmtpServer(echo_at="rcpt", rcpt_code=550):  # AUTH taken, each RCPT refused with it

server.auth_lines lists the AUTH arguments received; server.echoes the reply texts it sent with
credentials in them (what a test then looks for everywhere the product keeps text).
"""
from __future__ import annotations

import asyncio
import base64
import threading
from urllib.parse import quote, quote_plus


class EchoingSmtpServer:
    def __init__(self, *, echo_at: str = "auth", rcpt_code: int = 550):
        assert echo_at in ("auth", "rcpt")
        self.echo_at, self.rcpt_code = echo_at, rcpt_code
        self.auth_lines: list[str] = []
        self.echoes: list[str] = []
        self.host, self.port = "127.0.0.1", 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task] = set()

    def __enter__(self) -> "EchoingSmtpServer":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, self.host, 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            for session in list(self._sessions):
                session.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _echo(self) -> str:
        """The credentials as they came: the AUTH argument, and the password plain and URL-encoded."""
        said = self.auth_lines[-1] if self.auth_lines else ""
        try:
            password = base64.b64decode(said).split(b"\0")[2].decode("utf-8")
        except (ValueError, IndexError):
            password = ""
        text = f"you said {said} so your password is {password} ({quote(password, safe='')} {quote_plus(password)})"
        self.echoes.append(text)
        return text

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._sessions.add(asyncio.current_task())

        def say(line: str) -> None:
            writer.write(line.encode("utf-8") + b"\r\n")

        say("220 echo.test ESMTP")
        try:
            while line := await reader.readline():
                command, _, argument = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
                verb = command.upper()
                if verb == "EHLO":
                    say("250-echo.test\r\n250-AUTH PLAIN\r\n250 8BITMIME")
                elif verb == "AUTH":
                    self.auth_lines.append(argument.partition(" ")[2])
                    say(f"535 5.7.8 Authentication failed: {self._echo()}" if self.echo_at == "auth"
                        else "235 2.7.0 Authentication successful")
                elif verb == "RCPT" and self.echo_at == "rcpt":
                    say(f"{self.rcpt_code} 5.7.1 Refused: {self._echo()}" if self.rcpt_code >= 500
                        else f"{self.rcpt_code} 4.7.1 Try later: {self._echo()}")
                elif verb == "QUIT":
                    say("221 Bye")
                    break
                else:  # MAIL, RSET, NOOP, HELO
                    say("250 OK")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._sessions.discard(asyncio.current_task())
            writer.close()
