"""The Monitor section in Chromium shows the last retention purge, and its next poll shows a new one."""
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import keep_screenshot
from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.monitor.test_retention import ended, purge
from webapp.core.states import REMOVED, SENT

pytestmark = pytest.mark.browser


def test_the_monitor_section_shows_the_last_purge_and_its_poll_brings_the_next(page, app, live_server, seed):
    pid = seed["partition_id"]
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    shown = page.locator("#monitor-last-purge")
    expect(shown).to_contain_text("not yet")
    expect(page.locator("#monitor-keeping")).to_contain_text("messages 90 days, audit events 365 days")

    ended(app, pid, SENT, 100, count=2)
    ended(app, pid, REMOVED, 120)
    purge(app, pid, node="node-a")
    # The section's poll (every 5 s) brings it: its tag counts the purge's figures.
    expect(shown).to_contain_text("on node-a: removed 3 messages (with 3 delivery attempts and 3 recipients), "
                                  "0 audit events and 0 notifications", timeout=15000)
    shown.scroll_into_view_if_needed()
    keep_screenshot(page, "monitor-last-purge", full_page=False)
