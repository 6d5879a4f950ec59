"""Fixtures for composition on the wire: messages queued through the API, delivered by the real
node to a real aiosmtpd server, and read back from the bytes that arrived.

Reuses the engine's fixtures (tests/scheduler/conftest.py) and the agents' directory
(tests/agents/conftest.py): Acme with support@acme.test (the agent's), help@ and sales@.
"""
from __future__ import annotations

import base64
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as parsing_policy

import pytest
from sqlalchemy import select

from tests.agents.conftest import admin_api, agent_api, world  # noqa: F401  (fixtures)
from tests.scheduler.conftest import app_config, configure, make_node, smtp_server, start, wait_until  # noqa: F401  (fixtures)
from webapp.core.database import db
from webapp.core.models import MessageRecipient, OutgoingMessage
from webapp.core.states import FAILED, SENT, TRAINING

FINAL = (SENT, FAILED, TRAINING)


def parse(data: bytes) -> EmailMessage:
    """The bytes as a receiving mail client reads them."""
    return BytesParser(policy=parsing_policy).parsebytes(data)


def header_block(data: bytes) -> bytes:
    """The top-level header section of a message's bytes."""
    return data.split(b"\r\n\r\n", 1)[0]


class Wire:
    """Queues messages as agents do (the API), runs the node, and hands back what arrived."""

    def __init__(self, app, client, world, server, make_node, agent_api, admin_api):
        self.app, self.client, self.world, self.server = app, client, world, server
        self.make_node, self.agent_api, self.admin_api = make_node, agent_api, admin_api
        self.pid = world["partition_id"]
        self.node = None
        # The monitor's own notifications would arrive at the same server: not under test here.
        self.settings(origination_from_mailbox_id=world["support_id"], monitor_enabled=False,
                      batch_size=100, sleep_minutes=0)

    def settings(self, **values) -> None:
        """Saves settings as an administrator would (a new version)."""
        configure(self.app, self.pid, self.server, **values)

    def incoming(self, **fields) -> dict:
        """A customer's message on support@ (fields as POST /api/v1/incoming; raw= bytes allowed)."""
        body = {"mailbox_id": self.world["support_id"], "from": "Customer <customer@example.org>",
                "subject": "Where is my order?", "body_text": "Hello"}
        if "raw" in fields:
            body = {"mailbox_id": fields.pop("mailbox_id", self.world["support_id"]),
                    "raw": base64.b64encode(fields.pop("raw")).decode("ascii")}
        body.update(fields)
        response = self.app.test_client().post("/api/v1/incoming", json=body, headers=self.admin_api)
        assert response.status_code == 201, response.text
        return response.json

    def send(self, **fields) -> int:
        """Queues a message as the agent (POST /api/v1/messages); its id."""
        body = {"kind": "origination", "to": ["customer@example.org"], "subject": "Hello", "body_text": "Hi.\n"}
        body.update(fields)
        response = self.app.test_client().post("/api/v1/messages", json=body, headers=self.agent_api)
        assert response.status_code == 201, response.text
        return response.json["id"]

    def deliver(self, *ids: int) -> dict[int, list]:
        """Runs the node until each message is settled; what arrived for each, by its Message-ID
        (a redirect's: its Resent-Message-ID)."""
        if self.node is None:
            self.node = self.make_node()
            start(self.app, self.pid)
        wait_until(lambda: all(self.row(i)["status"] in FINAL for i in ids), what=f"messages {ids} settled")
        wanted = {self.row(i)["message_id"]: i for i in ids}
        arrived: dict[int, list] = {i: [] for i in ids}
        for received in self.server.messages:
            headers = parse(header_block(received.data) + b"\r\n\r\n")
            key = headers["Resent-Message-ID"] or headers["Message-ID"]
            if key in wanted:
                arrived[wanted[key]].append(received)
        return arrived

    def one(self, message_id: int):
        """The single arrival of a message that was delivered once."""
        (received,) = self.deliver(message_id)[message_id]
        return received

    def row(self, message_id: int) -> dict:
        with self.app.app_context():
            message = db.session.get(OutgoingMessage, message_id)
            recipients = db.session.scalars(select(MessageRecipient).where(MessageRecipient.message_id == message_id)
                                            .order_by(MessageRecipient.id)).all()
            row = {
                "status": message.status, "message_id": message.message_id, "training": message.training,
                "charset": message.charset, "raw_copy": message.raw_copy, "rendered": message.rendered,
                "envelope_from": message.envelope_from, "last_error": message.last_error,
                "tracking_id": message.tracking_id,
                "recipients": {r.address: (r.role, r.status) for r in recipients},
            }
            db.session.rollback()
            return row


@pytest.fixture
def wire(app, client, world, smtp_server, make_node, agent_api, admin_api):  # noqa: F811
    return Wire(app, client, world, smtp_server, make_node, agent_api, admin_api)
