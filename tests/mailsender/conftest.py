"""Fixtures for the Mail Sender window and its API: mailboxes in two departments, nodes with senders."""
from __future__ import annotations

from datetime import timedelta

import pytest

from webapp.directory import root_department
from webapp.extensions import db
from webapp.models import Department, Mailbox, Node, SenderInstance, utcnow





@pytest.fixture
def mailboxes(app, seed):
    """support@ in the root department, sales@ in a "Sales" department no user belongs to."""
    with app.app_context():
        root = root_department(seed["partition_id"])
        sales = Department(partition_id=seed["partition_id"], name="Sales", parent_id=root.id)
        db.session.add(sales)
        db.session.flush()
        support = Mailbox(partition_id=seed["partition_id"], address="support@acme.test", name="Support",
                          department_id=root.id)
        sales_box = Mailbox(partition_id=seed["partition_id"], address="sales@acme-sales.test", name="Sales desk",
                            department_id=sales.id)
        db.session.add_all([support, sales_box])
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
