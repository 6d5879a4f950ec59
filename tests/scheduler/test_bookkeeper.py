"""The bookkeeping process: outcomes are committed there, and its death loses no message."""
from __future__ import annotations

import asyncio
import collections
import threading
import time

import pytest

from scheduler.bookkeeper import Bookkeeper, BookkeepingError

from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.smtp_servers import SmtpServer


def test_a_bookkeeper_that_dies_mid_drain_is_replaced_and_every_message_is_sent(app, seed, make_node):
    pid = seed["partition_id"]
    # Each DATA takes a little while, so that the kill lands in the middle of the drain.
    with SmtpServer(data_delay=0.01) as server:
        configure(app, pid, server, batch_size=20, sleep_minutes=0)
        queue_messages(app, pid, 120)
        node = make_node(MAILSENDER_SENDERS=2, MAILSENDER_LEASE_SECONDS=4.0)
        first = node.bookkeeper._process
        start(app, pid)
        server.wait_for(30, timeout=15)
        first.kill()

        wait_until(lambda: statuses(app) == {"sent": 120}, timeout=30, what="every message sent")
        assert node.bookkeeper._process is not first and node.bookkeeper._process.poll() is None
        # An outcome lost with the process is sent again once its claim expires: at most one
        # message per connection, as after any crash.
        counts = collections.Counter(server.message_ids())
        assert set(counts) and len(counts) == 120
        assert sum(count - 1 for count in counts.values()) <= 2


def test_a_bookkeeper_that_cannot_start_says_so_at_once(app, tmp_path):
    # Its database cannot be opened: the child exits, and start() says so instead of waiting.
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/missing-folder/mailsender.sqlite"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        bookkeeper = Bookkeeper(app, loop, "test-node")
        started = time.monotonic()
        with pytest.raises(BookkeepingError, match="did not start"):
            bookkeeper.start(timeout=30)
        assert time.monotonic() - started < 15
        assert bookkeeper._process.wait(timeout=5) != 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
