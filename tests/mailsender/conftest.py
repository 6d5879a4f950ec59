"""Fixtures for the Mail Sender window and its API: mailboxes in two departments, nodes with senders."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import add_support_and_sales
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import Node, SenderInstance


@pytest.fixture
def mailboxes(app, seed):
    """support@ in the root department, sales@ in a "Sales" department no user belongs to."""
    with app.app_context():
        support, sales_box = add_support_and_sales(seed["partition_id"], ("support@acme.test", "Support"),
                                                   ("sales@acme-sales.test", "Sales desk"))
        db.session.commit()
        return {"support": support.id, "sales": sales_box.id}


def add_node(name: str, *, lease_seconds: float = 30, last_seen_ago: float = 1) -> int:
    """A node row as the engine keeps it: a lease on its name and a last-seen time."""
    now = utcnow()
    node = Node(name=name, lease_owner="test", lease_until=now + timedelta(seconds=lease_seconds),
                started_at=now - timedelta(minutes=5), last_seen=now - timedelta(seconds=last_seen_ago))
    db.session.add(node)
    db.session.flush()
    return node.id


def add_sender(node_id: int, partition_id: int, slot: int, *, running: bool, heartbeat_ago: float | None = 1) -> None:
    """A sender row with its heartbeat `heartbeat_ago` seconds old (None: never beat)."""
    db.session.add(SenderInstance(
        node_id=node_id, partition_id=partition_id, slot=slot, running=running,
        heartbeat_at=None if heartbeat_ago is None else utcnow() - timedelta(seconds=heartbeat_ago),
    ))
