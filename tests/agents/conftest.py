"""Fixtures for the agents' side: departments and mailboxes made with the models directly, API
headers, incoming messages, settings changes, and a count of what was queued."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.conftest import add_other_partition, api_token
from webapp.core.database import db
from webapp.core.directory.lookups import root_department
from webapp.core.directory.users import create_user
from webapp.core.models import Department, IncomingMessage, Mailbox, OutgoingMessage, User
from webapp.core.settings.store import get_settings

OTHER_AGENT_PASSWORD = "sales-pass-1"


@pytest.fixture
def world(app, seed):
    """Acme's root department holds support@ (the agent's), Sales holds sales@ (not the agent's),
    and the partition Beta has its own mailbox. `sales_agent` is in Sales only."""
    with app.app_context():
        partition_id = seed["partition_id"]
        root = root_department(partition_id)
        sales = Department(partition_id=partition_id, name="Sales", parent_id=root.id)
        db.session.add(sales)
        db.session.flush()
        support = Mailbox(partition_id=partition_id, address="support@acme.test", name="Acme Support",
                          department_id=root.id, priority=3)
        help_box = Mailbox(partition_id=partition_id, address="help@acme.test", name="",
                           department_id=root.id)
        sales_box = Mailbox(partition_id=partition_id, address="sales@acme.test", name="Acme Sales",
                            department_id=sales.id, priority=7)
        db.session.add_all([support, help_box, sales_box])
        partition = db.session.get(User, seed["agent_id"]).partition
        sales_agent = create_user(partition, "salesagent", OTHER_AGENT_PASSWORD, "agent", departments=[sales])
        beta, beta_box = add_other_partition("Beta", "info@beta.test")
        db.session.commit()
        return {**seed, "support_id": support.id, "help_id": help_box.id, "sales_id": sales_box.id,
                "sales_department_id": sales.id, "sales_agent_id": sales_agent.id,
                "beta_partition_id": beta.id, "beta_mailbox_id": beta_box.id}


@pytest.fixture
def settings_of(app, world):
    """set(**values): changes the Acme settings row."""

    def change(**values):
        with app.app_context():
            settings = get_settings(world["partition_id"])
            for name, value in values.items():
                setattr(settings, name, value)
            db.session.commit()

    return change


@pytest.fixture
def agent_api(agent_api, world):
    """The seeded agent's bearer headers (tests/conftest.py), in the world."""
    return agent_api


@pytest.fixture
def admin_api(admin_api, world):
    """The seeded administrator's bearer headers (tests/conftest.py), in the world."""
    return admin_api


@pytest.fixture
def sales_api(client, world):
    return api_token(client, "salesagent", OTHER_AGENT_PASSWORD)


@pytest.fixture
def incoming(app, admin_api, world):
    """record(**fields): a customer's message on support@, the agent's (unless mailbox_id says otherwise).

    Sent from a client of its own: a cookie session on the test's client would take precedence."""
    client = app.test_client()

    def record(**fields):
        body = {"mailbox_id": world["support_id"], "from": "Customer <customer@example.org>",
                "subject": "Where is my order?", "body_text": "Hello"}
        body.update(fields)
        response = client.post("/api/v1/incoming", json=body, headers=admin_api)
        assert response.status_code == 201, response.text
        return response.json

    return record


@pytest.fixture
def queued_count(app):
    """How many outgoing messages exist at all: what 'nothing was queued' is checked against."""

    def count() -> int:
        with app.app_context():
            return db.session.scalar(select(func.count()).select_from(OutgoingMessage))

    return count


@pytest.fixture
def user_row(app):
    def fetch(user_id: int) -> User:
        with app.app_context():
            user = db.session.get(User, user_id)
            db.session.expunge(user)
            return user

    return fetch


@pytest.fixture
def incoming_row(app):
    def fetch(incoming_id: int) -> IncomingMessage:
        with app.app_context():
            row = db.session.get(IncomingMessage, incoming_id)
            db.session.expunge(row)
            return row

    return fetch


@pytest.fixture
def origination(client, agent_api, world, settings_of):
    """send(**fields): an origination from the system default, support@."""
    settings_of(origination_from_mailbox_id=world["support_id"])

    def send(headers=agent_api, extra_headers=None, **fields):
        body = {"kind": "origination", "to": ["customer@example.org"], "subject": "Hello", "body_text": "Text"}
        body.update(fields)
        return client.post("/api/v1/messages", json=body, headers={**headers, **(extra_headers or {})})

    return send
