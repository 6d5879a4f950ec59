"""Fixtures for the monitor: messages put in a chosen state, a real SMTP server, and real nodes.

The minute is 0.2 s (tests/conftest.py), so the stuck age (60 min) is 12 s and a monitor
sleep of 1 minute is 0.2 s.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.scheduler.conftest import make_node, node, queue_messages, smtp_server  # noqa: F401  (fixtures)
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import AuditEvent, MonitorState, Notification, OutgoingMessage


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MAILSENDER_SENDERS": 1, "MAILSENDER_SMTP_COMMAND_TIMEOUT": 5.0}


def put(app, message_id: int, **values) -> None:
    """Sets columns of a message directly: the states the engine would reach the slow way."""
    with app.app_context():
        db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == message_id).values(**values))
        db.session.commit()


def queued(app, partition_id: int, count: int = 1, **values) -> list[int]:
    """`count` messages queued the way compose queues them, then given `values` in one commit: a
    monitor round running meanwhile sees all of them in their state, or none."""
    ids = queue_messages(app, partition_id, count)
    if values:
        with app.app_context():
            db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id.in_(ids)).values(**values))
            db.session.commit()
    return ids


def ago(seconds: float):
    return utcnow() - timedelta(seconds=seconds)


def later(seconds: float):
    return utcnow() + timedelta(seconds=seconds)


def notifications(app, kind: str | None = None) -> list[Notification]:
    with app.app_context():
        query = select(Notification).order_by(Notification.id)
        if kind:
            query = query.where(Notification.kind == kind)
        rows = db.session.scalars(query).all()
        db.session.expunge_all()
        return rows


def state(app, partition_id: int) -> MonitorState:
    with app.app_context():
        row = db.session.scalars(select(MonitorState).where(MonitorState.partition_id == partition_id)).one()
        db.session.expunge(row)
        return row


def audit_actions(app, message_id: int) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent.action).where(
            AuditEvent.target_type == "OutgoingMessage", AuditEvent.target_id == message_id)
            .order_by(AuditEvent.id)))
