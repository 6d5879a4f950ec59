"""In Chromium: the Monitor section shows each channel's outcome of a notification, and the
Parameters form names a webhook URL the rules refuse (tests/monitor/test_webhook.py has the rest)."""
import threading

import pytest
from playwright.sync_api import expect

from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.monitor.conftest import notifications, queued
from tests.monitor.test_webhook import HookServer, failing_smtp_and_hook, one_round, refusing_smtp  # noqa: F401

pytestmark = pytest.mark.browser


def test_in_chromium_the_window_shows_the_channels_and_names_a_bad_webhook_url(page, app, live_server, seed,
                                                                               refusing_smtp):
    pid = seed["partition_id"]
    with HookServer() as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_pending_threshold=0)
        queued(app, pid, 1)
        # Playwright runs an event loop on this thread; a round makes its SMTP loop, so on another.
        done = threading.Thread(target=one_round, args=(app, pid))
        done.start()
        done.join(timeout=120)
    [sent] = notifications(app)
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")

    row = page.locator(f"#notification-{sent.id}")
    expect(row.locator(".channel-webhook")).to_contain_text("delivered (HTTP 200), attempt 1")
    expect(row.locator(".channel-email")).to_contain_text("not delivered")
    expect(row.locator(".channel-email")).to_contain_text("535")

    settings = page.locator("#monitor-settings")
    settings.get_by_label("Monitor webhook URL").fill("http://hooks.example.test/alerts")
    settings.get_by_role("button", name="Save").click()
    expect(page.locator("#monitor-settings-errors")).to_contain_text("Monitor webhook URL")
    expect(page.locator("#error-webhook_url")).to_contain_text("must be https")
