"""Fixtures for the engine: a real SMTP server, queued messages, and a running node.

The node here is the real one (scheduler.node.Node) in this process, with a minute of 0.2 s.
"""
from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from scheduler.node import Node
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
    return {**app_config, "MAILSENDER_SENDERS": 1, "MAILSENDER_SMTP_COMMAND_TIMEOUT": 5.0, "MAILSENDER_MONITOR": False}


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


def wait_until(condition, timeout: float = 15.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def make_node(app, seed):
    """Starts a real node on this app (after the test has set app.config); all stop at the end."""
    started = []

    def make(**config):
        app.config.update(config)
        running = Node(app)
        running.start()
        started.append(running)
        return running

    yield make
    for running in started:
        if not running.stopping:
            running.stop(timeout=10)


@pytest.fixture
def node(make_node):
    """This process's node for the test, stopped (cleanly) at the end."""
    return make_node()
