"""Fixtures for the engine: a real SMTP server, queued messages, and a running node.

The node here is the real one (scheduler.node.Node) in this process, with a minute of 0.2 s.

Waits are for events, with generous deadlines: a busy CI machine may make anything slow, and a
deadline only bounds a test that fails anyway. A test that asserts that something did not happen
first waits for the engine to have looked again (`wakes`), not for a stretch of time.
"""
from __future__ import annotations

import collections
import threading
import time

import pytest
from sqlalchemy import func, select

from scheduler.node import Node
from scheduler.sender import Sender
from scheduler.status import set_wanted
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.outbox import enqueue
from webapp.core.settings.store import get_settings
from webapp.core.states import ORIGINATION, WANTED_RUNNING, WANTED_STOPPED

FROM = "info@acme.test"


@pytest.fixture
def app_config(app_config):
    # The monitor's notifications would arrive at these servers too; tests/monitor runs it.
    # A command timeout far above what a loopback server takes even on a busy machine: a test of
    # stalls sets its own.
    return {**app_config, "MAILSENDER_SENDERS": 1, "MAILSENDER_SMTP_COMMAND_TIMEOUT": 30.0,
            "MAILSENDER_MONITOR": False}


@pytest.fixture
def smtp_server():
    with SmtpServer() as server:
        yield server


def configure(app, partition_id: int, server=None, **fields) -> None:
    """Saves settings the way an administrator would (a new version); `server` sets host and port."""
    with app.app_context():
        settings = get_settings(partition_id)
        if server is not None:
            settings.smtp_host, settings.smtp_port = server.host, server.port
        for name, value in fields.items():
            setattr(settings, name, value)
        settings.version += 1
        settings.render_version = settings.version  # as a save of a field the bytes depend on
        db.session.commit()


def queue_messages(app, partition_id: int, count: int, *, to=("customer@example.test",), priority: int = 5,
                   subject: str = "Hello") -> list[int]:
    """Queues `count` messages as the compose path does (enqueue), one queue time apart each."""
    ids = []
    with app.app_context():
        settings = get_settings(partition_id)
        for number in range(count):
            message = OutgoingMessage(partition_id=partition_id, kind=ORIGINATION, from_address=FROM,
                                      envelope_from=FROM, to_addresses=list(to), subject=f"{subject} {number}",
                                      body_text=f"Message number {number}.\n", priority=priority)
            enqueue(message, settings)
            ids.append(message.id)
        db.session.commit()
    return ids


def wanted(app, partition_id: int, state: str) -> None:
    with app.app_context():
        set_wanted(partition_id, state, "test")
        db.session.commit()


def start(app, partition_id: int) -> None:
    wanted(app, partition_id, WANTED_RUNNING)


def stop(app, partition_id: int) -> None:
    wanted(app, partition_id, WANTED_STOPPED)


def running(app, partition_id: int, server, make_node, count: int, node_config: dict | None = None,
            **settings) -> list[int]:
    """An engine test's start: the partition sends to `server` (with `settings`), `count` messages
    are queued, a node runs (with `node_config`) and the senders are started. The messages' ids."""
    configure(app, partition_id, server, **settings)
    ids = queue_messages(app, partition_id, count)
    make_node(**(node_config or {}))
    start(app, partition_id)
    return ids


def statuses(app, ids=None) -> dict[str, int]:
    with app.app_context():
        query = select(OutgoingMessage.status, func.count()).group_by(OutgoingMessage.status)
        if ids is not None:
            query = query.where(OutgoingMessage.id.in_(ids))
        return dict(db.session.execute(query).all())


def wait_until(condition, timeout: float = 60.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Wakes:
    """Counts each sender's wakes (Sender.wake returning), so that a test waits for the engine to
    have looked at the queue again before it asserts that nothing more was sent."""

    def __init__(self):
        self.ended: collections.Counter[str] = collections.Counter()
        self._condition = threading.Condition()

    def note(self, sender: Sender) -> None:
        with self._condition:
            self.ended[sender.owner] += 1
            self._condition.notify_all()

    def wait(self, count: int = 2, timeout: float = 60.0) -> None:
        """Blocks until every sender that has woken so far has ended `count` more wakes (at least
        one sender, if none has yet). Two is the least that proves a whole wake began after the
        call: the first may have been under way already."""
        with self._condition:
            since = dict(self.ended)

            def done():
                if not since:
                    return any(n >= count for n in self.ended.values())
                return all(self.ended[owner] - seen >= count for owner, seen in since.items())

            if not self._condition.wait_for(done, timeout):
                raise AssertionError(f"the senders did not wake {count} more times in {timeout} s")


def _counting_wakes(monkeypatch) -> Wakes:
    counted = Wakes()
    real_wake = Sender.wake

    def wake(self):
        try:
            return real_wake(self)
        finally:
            counted.note(self)

    monkeypatch.setattr(Sender, "wake", wake)
    return counted


@pytest.fixture
def make_node(app, seed, monkeypatch):
    """Starts a real node on this app (after the test has set app.config); all stop at the end.
    `make_node.wakes` counts the senders' wakes of every node it makes (the `wakes` fixture)."""
    started = []
    counted = _counting_wakes(monkeypatch)

    def make(**config):
        app.config.update(config)
        running = Node(app)
        running.start()
        started.append(running)
        return running

    make.wakes = counted
    yield make
    for running in started:
        if not running.stopping:
            running.stop(timeout=10)


@pytest.fixture
def wakes(make_node) -> Wakes:
    """The senders' wakes, counted from before any node starts (see Wakes)."""
    return make_node.wakes


@pytest.fixture
def node(make_node):
    """This process's node for the test, stopped (cleanly) at the end."""
    return make_node()
