"""Compose and Preferences answer where the agent is looking: the message just queued, a field's
error by the field, a missing From before anything is typed, and an empty message before it goes."""
import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from tests.browser.conftest import keep_screenshot
from tests.conftest import AGENT_PASSWORD, add_support_and_sales, browser_login
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser

# Short enough that the Send button of the whole form sits below the first screen.
VIEWPORT = {"width": 1280, "height": 700}


@pytest.fixture
def mailboxes(app, seed):
    """support@ in the agent's department is the system default for new messages."""
    with app.app_context():
        support, sales = add_support_and_sales(seed["partition_id"], ("support@acme.test", "Acme Support"),
                                               ("sales@acme.test", "Acme Sales"))
        get_settings(seed["partition_id"]).origination_from_mailbox_id = support.id
        db.session.commit()
        return {"support_id": support.id, "sales_id": sales.id}


def _queued(app) -> int:
    with app.app_context():
        count = db.session.scalar(select(func.count()).select_from(OutgoingMessage))
        db.session.rollback()
        return count


def _open_compose(page, live_server, width: int = 1280) -> None:
    page.set_viewport_size({**VIEWPORT, "width": width})
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/compose?kind=origination")


def _press_send(page) -> None:
    send = page.get_by_role("button", name="Send", exact=True)
    send.scroll_into_view_if_needed()
    send.click()


@pytest.mark.parametrize("width", (1280, 390))
def test_after_send_the_queued_message_is_in_view_with_its_subject_to_and_a_link_to_it(
        page, live_server, app, mailboxes, width):
    _open_compose(page, live_server, width)
    page.get_by_label("To", exact=True).fill("customer@example.org, Other One <other@example.org>")
    page.get_by_label("Subject", exact=True).fill("Your order 1042")
    page.get_by_label("Text", exact=True).fill("Hello,\n\nyour order is on its way.\n")
    _press_send(page)

    queued = page.locator("#queued-message")
    expect(queued).to_contain_text("Queued")
    expect(queued).to_be_in_viewport()
    expect(queued).to_be_focused()
    expect(queued.locator(".sent-subject")).to_have_text("Your order 1042")
    expect(queued.locator(".sent-to")).to_have_text("customer@example.org, other@example.org")
    keep_screenshot(page, f"compose-after-send-{width}", full_page=False)

    queued.get_by_role("link", name="See it in the Outbox").click()
    row = page.locator("#outbox-list tbody tr[data-status]").filter(has_text="Your order 1042")
    expect(row).to_be_in_viewport()
    assert page.url.endswith(f"#{row.get_attribute('id')}")


def test_with_no_default_from_and_no_choice_compose_says_so_before_anything_is_typed(page, live_server, app, seed):
    with app.app_context():  # no system default, and changing the From of new messages is not allowed
        add_support_and_sales(seed["partition_id"], ("support@acme.test", "Acme Support"),
                              ("sales@acme.test", "Acme Sales"))
        db.session.commit()
    _open_compose(page, live_server)

    notice = page.locator("#compose-no-from")
    expect(notice).to_be_in_viewport()
    expect(notice).to_contain_text("no default From address")
    expect(notice).to_contain_text("An administrator can set one in the Mail Sender parameters")
    expect(notice).to_contain_text("Default From address")
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    keep_screenshot(page, "compose-no-default-from")

    # A reply goes out from the mailbox the customer wrote to: for it, Send is on again.
    page.get_by_label("Kind", exact=True).select_option("reply")
    expect(page.locator("#compose-no-from")).to_have_count(0)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()


def test_each_bad_field_says_what_is_wrong_by_the_field_and_the_box_is_in_view(page, live_server, app, mailboxes):
    _open_compose(page, live_server)
    page.get_by_label("To", exact=True).fill("bob@")
    page.get_by_label("Cc", exact=True).fill("not an address")
    page.get_by_label("Subject", exact=True).fill("Kept subject")
    page.get_by_label("Text", exact=True).fill("Kept text")
    _press_send(page)

    box = page.locator("#compose-errors")
    expect(box).to_be_in_viewport()
    expect(box).to_be_focused()
    expect(box).to_contain_text("2 fields need attention")
    expect(page.locator("#compose-to-error")).to_have_text("'bob@' has no domain after the @.")
    expect(page.locator("#compose-cc-error")).to_contain_text("'not an address' is not an e-mail address")
    expect(page.get_by_label("To", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Subject", exact=True)).to_have_value("Kept subject")
    keep_screenshot(page, "compose-field-errors", full_page=False)

    box.get_by_role("link", name="To").click()
    expect(page.get_by_label("To", exact=True)).to_be_in_viewport()
    assert _queued(app) == 0

    page.get_by_label("To", exact=True).fill("")
    page.get_by_label("Cc", exact=True).fill("")
    _press_send(page)
    expect(page.locator("#compose-to-error")).to_contain_text("Empty, as are Cc and Bcc")
    assert _queued(app) == 0


def test_an_empty_subject_and_text_is_queued_only_once_the_agent_confirms(page, live_server, app, mailboxes):
    _open_compose(page, live_server)
    page.get_by_label("To", exact=True).fill("customer@example.org")
    _press_send(page)

    warning = page.locator("#compose-empty-warning")
    expect(warning).to_be_in_viewport()
    expect(warning).to_contain_text("no subject and no text")
    expect(page.get_by_label("To", exact=True)).to_have_value("customer@example.org")
    keep_screenshot(page, "compose-empty-warning", full_page=False)
    assert _queued(app) == 0

    warning.get_by_role("button", name="Send anyway").click()
    expect(page.locator("#queued-message")).to_contain_text("Queued")
    expect(page.locator("#queued-message .sent-subject")).to_have_text("(no subject)")
    assert _queued(app) == 1


def test_two_forged_preferences_are_both_named(page, live_server, app, seed, mailboxes):
    with app.app_context():
        settings = get_settings(seed["partition_id"])
        settings.allow_change_reply_from = True
        settings.allow_change_origination_from = True
        db.session.commit()
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/preferences")
    # Forged in the page: another department's mailbox, and no id at all.
    page.locator("select[name=reply_from_mailbox_id] option").nth(1).evaluate(
        f"option => {{ option.value = '{mailboxes['sales_id']}'; option.selected = true; }}")
    page.locator("select[name=origination_from_mailbox_id] option").nth(1).evaluate(
        "option => { option.value = 'abc'; option.selected = true; }")
    page.get_by_role("button", name="Save").click()

    box = page.locator("#preferences-errors")
    expect(box).to_be_focused()
    expect(box).to_contain_text("2 fields need attention")
    expect(box.locator("li")).to_have_count(2)
    expect(page.locator("#reply_from_mailbox_id-error")).to_have_text("That mailbox is not one of your mailboxes.")
    expect(page.locator("#origination_from_mailbox_id-error")).to_have_text("The From mailbox must be a mailbox id.")
    keep_screenshot(page, "preferences-two-errors")

