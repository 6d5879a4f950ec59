"""A stop gives up a batch stalled on the wire once its grace has run out (MAILSENDER_STOP_GRACE_SECONDS),
instead of waiting out the command timeout past a service manager's SIGKILL."""
from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import select

from scheduler.sender import ABANDONED
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, MessageRecipient, SenderInstance


class StallingServer:
    """Greets, takes EHLO and MAIL, and never answers RCPT; with after_payload, takes the
    recipients and the message, and never answers its end of data."""

    def __init__(self, after_payload: bool = False):
        self.host, self.port = "127.0.0.1", 0
        self.after_payload = after_payload
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
                if verb == b"RCPT" and not self.after_payload:
                    self.stalled.set()
                    await asyncio.sleep(3600)
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    await reader.readuntil(b"\r\n.\r\n")
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


@pytest.mark.parametrize("after_unclear, ends", [("retry_once", "deferred"), ("hold", "held")])
def test_a_batch_given_up_after_its_end_of_data_leaves_the_message_unclear_not_queued(
        app, seed, make_node, after_unclear, ends):
    # The server has the whole message and has not answered: sent again at once from the queue,
    # it would very likely arrive twice. It is unclear, and follows "After an unclear outcome".
    pid = seed["partition_id"]
    with StallingServer(after_payload=True) as server:
        configure(app, pid, server, sleep_minutes=0, after_unclear=after_unclear)
        ids = queue_messages(app, pid, 1)
        node = make_node(MAILSENDER_SMTP_COMMAND_TIMEOUT=600.0, MAILSENDER_STOP_GRACE_SECONDS=0.5)
        start(app, pid)
        assert server.stalled.wait(30), "the sender never sent the end of data"
        node.stop(timeout=10)
    assert statuses(app, ids) == {ends: 1}
    with app.app_context():
        assert db.session.scalars(select(MessageRecipient.status)).all() == ["unclear"]
        [attempt] = db.session.scalars(select(DeliveryAttempt)).all()
        assert attempt.answer == "unclear" and "stopped" in attempt.detail
