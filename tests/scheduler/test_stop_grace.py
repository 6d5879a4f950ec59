"""A stop gives up a batch stalled on the wire once its grace has run out (MAILSENDER_STOP_GRACE_SECONDS),
instead of waiting out the command timeout past a service manager's SIGKILL."""
from __future__ import annotations

import asyncio
import threading

from sqlalchemy import select

from scheduler.sender import ABANDONED
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from webapp.core.database import db
from webapp.core.models import SenderInstance


class StallingServer:
    """Greets, takes EHLO and MAIL, and never answers RCPT."""

    def __init__(self):
        self.host, self.port = "127.0.0.1", 0
        self.stalled = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, self.host, 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _session(self, reader, writer):
        writer.write(b"220 stall.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"RCPT":
                    self.stalled.set()
                    await asyncio.sleep(3600)
                writer.write(b"221 Bye\r\n" if verb == b"QUIT" else b"250 stall.test\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass


def test_a_stop_gives_up_a_stalled_batch_after_the_grace_and_the_message_goes_back(app, seed, make_node):
    pid = seed["partition_id"]
    with StallingServer() as server:
        configure(app, pid, server, sleep_minutes=0)
        ids = queue_messages(app, pid, 1)
        node = make_node(MAILSENDER_SMTP_COMMAND_TIMEOUT=600.0, MAILSENDER_STOP_GRACE_SECONDS=0.5)
        start(app, pid)
        assert server.stalled.wait(30), "the sender never reached RCPT"
        stopping = threading.Thread(target=node.stop, kwargs={"timeout": 10})
        stopping.start()
        # Without the grace the stop would wait out the 600 s command timeout.
        stopping.join(120)
        assert not stopping.is_alive(), "the stop waited out the stalled command"
    wait_until(lambda: statuses(app, ids) == {"queued": 1}, what="the message back in the queue, unsent")
    with app.app_context():
        assert db.session.scalar(select(SenderInstance.last_error)) == ABANDONED
