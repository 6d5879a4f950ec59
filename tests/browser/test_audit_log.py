"""The audit log in the window: an administrator pages back through the events and keeps one
action's by clicking its name, at a desktop width and at a phone's (kept as screenshots)."""
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import keep_screenshot
from tests.browser.test_screenshots import sideways_overflow
from tests.conftest import ADMIN_PASSWORD, browser_login
from webapp.core import audit
from webapp.core.database import db

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", (1280, 390))
def test_an_administrator_pages_the_audit_log_and_keeps_one_action(page, app, live_server, seed, width):
    app.config["PAGE_SIZE"] = 4
    with app.app_context():
        for n in range(5):
            audit.record("tester", "settings.save", partition_id=seed["partition_id"], fields=["batch_size"], n=n)
            audit.record("tester", "mailsender.start", partition_id=seed["partition_id"])
        db.session.commit()
    page.set_viewport_size({"width": width, "height": 900})
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.get_by_role("link", name="Audit log").click()
    events = page.locator("#audit-events tbody tr")
    expect(events).to_have_count(4)
    expect(events.first).to_contain_text("user.login")  # the newest: this login
    expect(events.nth(1)).to_contain_text("mailsender.start")
    keep_screenshot(page, f"audit-log-{width}")
    assert sideways_overflow(page) == 0

    page.locator("#audit-events").get_by_role("link", name="settings.save").first.click()
    expect(page.locator("#audit-events h2")).to_contain_text("Events of settings.save")
    expect(events).to_have_count(4)
    expect(events.first).to_contain_text("n: 4")
    assert "action=settings.save" in page.url  # the filtered view can be bookmarked
    expect(page.get_by_label("Action")).to_have_value("settings.save")
    expect(events.first).to_contain_text("fields: batch_size")

    page.locator("#audit-older").click()
    expect(events).to_have_count(1)
    expect(events.first).to_contain_text("n: 0")
    expect(page.locator("#audit-older")).to_have_count(0)
    keep_screenshot(page, f"audit-log-older-{width}")
