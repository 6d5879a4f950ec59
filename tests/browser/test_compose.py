"""An agent composes a message in the browser and finds it queued in the Outbox."""
import re

import pytest
from playwright.sync_api import expect

from tests.conftest import AGENT_PASSWORD, add_support_and_sales, browser_login
from webapp.core.database import db
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser


@pytest.fixture
def mailboxes(app, seed):
    """support@ in the agent's (root) department, sales@ in Sales; changing From is allowed."""
    with app.app_context():
        support, sales_box = add_support_and_sales(seed["partition_id"], ("support@acme.test", "Acme Support"),
                                                   ("sales@acme.test", "Acme Sales"))
        settings = get_settings(seed["partition_id"])
        settings.origination_from_mailbox_id = sales_box.id
        settings.allow_change_origination_from = True
        db.session.commit()
        return {"support_id": support.id, "sales_id": sales_box.id}


def test_an_agent_composes_from_their_own_mailbox_and_sees_it_queued_in_the_outbox(page, live_server, mailboxes):
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Compose").click()
    expect(page.get_by_label("Kind", exact=True)).to_have_value("origination")

    from_select = page.get_by_label("From", exact=True)
    options = from_select.locator("option").all_inner_texts()
    assert any("support@acme.test" in option for option in options)
    # sales@ is only named as the system default, never offered as one of the agent's mailboxes.
    assert [option for option in options if "sales@acme.test" in option] == [options[0]]
    assert options[0].startswith("Default:")
    from_select.select_option(str(mailboxes["support_id"]))

    page.get_by_label("To", exact=True).fill("customer@example.org")
    page.get_by_label("Subject", exact=True).fill("Your order from the browser")
    page.get_by_label("Text", exact=True).fill("It is on its way.")
    page.get_by_role("button", name="Send").click()

    queued = page.locator("#queued-message")
    expect(queued).to_contain_text("Queued")
    tracking_id = queued.locator(".tracking-id").inner_text()
    assert re.fullmatch(r"ACME-\d{6}", tracking_id)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Outbox").click()
    row = page.locator("#outbox-list tbody tr[data-status]").filter(has_text="Your order from the browser")
    expect(row).to_have_count(1)
    expect(row.locator(".state")).to_have_text("queued")
    expect(row).to_contain_text(tracking_id)
    expect(row).to_contain_text("Acme Support <support@acme.test>")
    # A queued message is pending, so the list polls.
    expect(page.locator("#outbox-list")).to_have_attribute("data-polling", "on")


def test_a_refused_compose_shows_the_fields_and_keeps_what_was_typed(page, live_server, mailboxes):
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/compose?kind=origination")
    page.get_by_label("To", exact=True).fill("a@b.c)<x@y.z>")
    page.get_by_label("Text", exact=True).fill("typed text")
    page.get_by_role("button", name="Send").click()
    errors = page.locator("#compose-errors")
    expect(errors).to_contain_text("To")
    expect(page.get_by_label("To", exact=True)).to_have_value("a@b.c)<x@y.z>")
    expect(page.get_by_label("Text", exact=True)).to_have_value("typed text")
