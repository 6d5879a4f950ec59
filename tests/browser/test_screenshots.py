"""The window, Compose and the Outbox as a person sees them, at a desktop width and at a phone's:
each page is kept as a screenshot in test-results/screenshots/ to look at, and none of them makes
the phone scroll sideways."""
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import keep_screenshot
from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, add_support_and_sales, browser_login
from webapp.core.database import db
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser

WIDTHS = (1280, 390)


@pytest.fixture
def mailboxes(app, seed):
    with app.app_context():
        support, sales = add_support_and_sales(seed["partition_id"], ("support@acme.test", "Acme Support"),
                                               ("sales@acme.test", "Acme Sales"))
        settings = get_settings(seed["partition_id"])
        settings.origination_from_mailbox_id = sales.id
        settings.allow_change_origination_from = True
        db.session.commit()
        return {"support_id": support.id}


def sideways_overflow(page) -> int:
    """How many pixels the page is wider than the viewport (0 when nothing scrolls sideways)."""
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_mail_sender_window_is_kept_as_a_screenshot(page, live_server, seed, width):
    page.set_viewport_size({"width": width, "height": 900})
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    expect(page.get_by_role("heading", name="Parameters")).to_be_visible()
    keep_screenshot(page, f"mail-sender-{width}")
    assert sideways_overflow(page) == 0


@pytest.mark.parametrize("width", WIDTHS)
def test_compose_and_the_outbox_are_kept_as_screenshots(page, live_server, mailboxes, width):
    page.set_viewport_size({"width": width, "height": 900})
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/compose")
    page.get_by_label("From", exact=True).select_option(str(mailboxes["support_id"]))
    page.get_by_label("To", exact=True).fill("customer@example.org")
    page.get_by_label("Subject", exact=True).fill("Your order 1042")
    page.get_by_label("Text", exact=True).fill("Hello,\n\nyour order is on its way.\n")
    keep_screenshot(page, f"compose-{width}")
    assert sideways_overflow(page) == 0
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#queued-message")).to_contain_text("Queued")

    page.goto(f"{live_server.url}/outbox")
    expect(page.locator("#outbox-list tbody tr[data-status]").filter(has_text="Your order 1042")).to_have_count(1)
    keep_screenshot(page, f"outbox-{width}")
    assert sideways_overflow(page) == 0
