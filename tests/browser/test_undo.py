"""Undo in the browser: the line about a message just sent offers Undo while the hold lasts, Undo
cancels it, and the offer goes by itself once the hold is over (htmx asks the server again)."""
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from tests.conftest import AGENT_PASSWORD, add_support_and_sales, browser_login
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser


@pytest.fixture
def from_support(app, seed):
    with app.app_context():
        support, _ = add_support_and_sales(seed["partition_id"], ("support@acme.test", "Acme Support"),
                                           ("sales@acme.test", "Acme Sales"))
        get_settings(seed["partition_id"]).origination_from_mailbox_id = support.id
        db.session.commit()


def _compose(page, live_server, subject: str) -> None:
    page.goto(f"{live_server.url}/compose?kind=origination")
    page.get_by_label("To", exact=True).fill("customer@example.org")
    page.get_by_label("Subject", exact=True).fill(subject)
    page.get_by_label("Text", exact=True).fill("Hello")
    page.get_by_role("button", name="Send").click()


def _status(app, subject: str) -> str:
    with app.app_context():
        status = db.session.scalar(select(OutgoingMessage.status).where(OutgoingMessage.subject == subject))
        db.session.rollback()
        return status


def test_undo_cancels_the_message_just_sent(page, live_server, app, from_support):
    app.config["MAILSENDER_UNDO_SECONDS"] = 600
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    _compose(page, live_server, "Oops, wrong customer")

    line = page.locator("#queued-message")
    expect(line).to_have_attribute("data-state", "scheduled")
    line.get_by_role("button", name="Undo").click()
    expect(line).to_contain_text("Cancelled")
    expect(line.get_by_role("button", name="Undo")).to_have_count(0)
    assert _status(app, "Oops, wrong customer") == "cancelled"

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Outbox").click()
    row = page.locator("#outbox-list tbody tr[data-status]").filter(has_text="Oops, wrong customer")
    expect(row.locator(".state")).to_have_text("cancelled")
    expect(page.locator("#outbox-list")).to_contain_text("Cancelled by its author before it was sent.")


def test_the_undo_goes_by_itself_once_the_hold_is_over(page, live_server, app, from_support):
    app.config["MAILSENDER_UNDO_SECONDS"] = 5  # long enough to see the offer on a busy machine
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    _compose(page, live_server, "On its way")

    line = page.locator("#queued-message")
    expect(line.get_by_role("button", name="Undo")).to_have_count(1)
    expect(line).to_have_attribute("data-state", "queued")
    expect(line.get_by_role("button", name="Undo")).to_have_count(0)
    assert _status(app, "On its way") == "queued"
