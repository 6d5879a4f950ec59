"""An administrator removes a stuck message from the Monitor section in Chromium; the banner clears."""
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.monitor.conftest import audit_actions, later, queued
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import DEFERRED, REMOVED

pytestmark = pytest.mark.browser


def test_an_administrator_removes_a_stuck_message_and_the_banner_clears(page, app, live_server, seed):
    pid = seed["partition_id"]
    [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(3600),
                     last_error="451 4.3.0 Mailbox busy")
    [moving] = queued(app, pid, 1)
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")

    monitor = page.locator("#monitor")
    expect(page.locator("#monitor-alert")).to_contain_text("1 stuck message")
    row = monitor.locator(f"#stuck-{stuck}")
    expect(row).to_contain_text("deferred after 3 or more attempts")
    expect(row).to_contain_text("451 4.3.0 Mailbox busy")
    expect(monitor.locator(f"#stuck-{moving}")).to_have_count(0)  # waiting, but not stuck

    page.get_by_label(f"Select message {stuck}").check()
    monitor.get_by_role("button", name="Remove…").click()
    monitor.get_by_role("button", name="Remove 1 message").click()

    expect(page.locator("#monitor-done")).to_contain_text(f"Message {stuck} is removed now.")
    expect(monitor.locator(f"#stuck-{stuck}")).to_have_count(0)
    expect(page.locator("#monitor-no-stuck")).to_be_visible()
    # The action refreshes it at once: well before the section's poll, every 5 s.
    expect(page.locator("#monitor-alert")).to_have_count(0, timeout=4000)
    with app.app_context():
        statuses = dict(db.session.execute(select(OutgoingMessage.id, OutgoingMessage.status)).all())
    assert statuses == {stuck: REMOVED, moving: "queued"}  # kept in the database, as removed
    assert audit_actions(app, stuck) == ["message.remove"]
