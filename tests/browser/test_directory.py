"""The directory window in real Chromium: a department, a mailbox moved into it, an agent added
to it — and that agent's From choices are that mailbox, and only that one."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import ADMIN_PASSWORD, browser_login
from webapp.core.database import db
from webapp.core.directory.mailboxes import create_mailbox

pytestmark = pytest.mark.browser


@pytest.fixture
def mailboxes(app, seed):
    with app.app_context():
        for address in ("info@acme.test", "billing@acme.test"):
            create_mailbox(seed["partition_id"], {"address": address}, actor="test")
        db.session.commit()


def test_an_agent_added_to_a_new_department_sends_only_from_its_mailbox(page, browser, live_server, mailboxes):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/directory")

    add_department = page.get_by_role("form", name="Add a department")
    add_department.get_by_label("Name").fill("Billing")
    add_department.get_by_role("button", name="Add department").click()
    expect(page.locator("#departments")).to_contain_text("Department Billing added.")
    # The other sections refresh themselves and offer the new department.
    for section in ("#mailboxes", "#users"):
        expect(page.locator(f"{section} option", has_text="Acme / Billing").first).to_be_attached()

    page.get_by_role("button", name="Edit mailbox billing@acme.test").click()
    edit_mailbox = page.get_by_role("form", name="Edit mailbox billing@acme.test")
    edit_mailbox.get_by_label("Department").select_option(label="Acme / Billing")
    edit_mailbox.get_by_role("button", name="Save").click()
    expect(page.locator("#mailboxes")).to_contain_text("Mailbox billing@acme.test saved.")
    expect(page.locator("#mailboxes tr", has_text="billing@acme.test")).to_contain_text("Billing")

    add_user = page.get_by_role("form", name="Add a user")
    add_user.get_by_label("Username").fill("carol")
    add_user.get_by_label("Email").fill("carol@acme.test")
    add_user.get_by_label("Role").select_option("agent")
    add_user.get_by_label("Departments").select_option(label="Acme / Billing")
    add_user.get_by_label("Password").fill("carol-pass-1")
    add_user.get_by_role("button", name="Add user").click()
    expect(page.locator("#users")).to_contain_text("User carol added.")
    expect(page.locator("#users tr", has_text="carol@acme.test")).to_contain_text("Billing")

    agent_context = browser.new_context()
    try:
        agent_page = agent_context.new_page()
        browser_login(agent_page, live_server, "carol", "carol-pass-1")
        response = agent_page.request.get(f"{live_server.url}/api/v1/mailboxes?for=from")
        assert response.status == 200
        assert [item["address"] for item in response.json()["items"]] == ["billing@acme.test"]
    finally:
        agent_context.close()
