"""Fixtures for the directory's tests: bearer headers, a second partition, htmx posts."""
from __future__ import annotations

import pytest

from tests.conftest import csrf_from
from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.directory.lookups import root_department
from webapp.core.directory.users import create_user
from webapp.core.models import Department, Mailbox

OTHER_PASSWORD = "globex-pass-1"




@pytest.fixture
def other_partition(app, seed):
    """A second partition, Globex, with its own admin, department, mailbox and agent."""
    with app.app_context():
        partition = create_partition("Globex")
        admin = create_user(partition, "globex-admin", OTHER_PASSWORD, "admin")
        root = root_department(partition.id)
        department = Department(partition_id=partition.id, name="Globex Sales", parent_id=root.id)
        db.session.add(department)
        db.session.flush()
        mailbox = Mailbox(partition_id=partition.id, address="sales@globex.test", name="Globex",
                          department_id=department.id)
        db.session.add(mailbox)
        agent = create_user(partition, "globex-agent", OTHER_PASSWORD, "agent", departments=[department])
        db.session.commit()
        return {"partition_id": partition.id, "admin_id": admin.id, "agent_id": agent.id,
                "root_id": root.id, "department_id": department.id, "mailbox_id": mailbox.id}


class Htmx:
    """Posts and gets as htmx does from the window: the CSRF header and HX-Request."""

    def __init__(self, client, page="/admin/directory"):
        self.client = client
        self.headers = {"HX-Request": "true", "X-CSRFToken": csrf_from(client.get(page).text)}

    def get(self, url):
        return self.client.get(url, headers={"HX-Request": "true"})

    def post(self, url, data=None):
        return self.client.post(url, data=data or {}, headers=self.headers)


@pytest.fixture
def admin_htmx(admin_client):
    return Htmx(admin_client)
