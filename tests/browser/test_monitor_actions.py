"""An administrator acts on messages from the Monitor section in Chromium: Select all, Remove
after its confirmation, a result that stays until dismissed, and Requeue of failed and removed
messages; the section's polls leave no error in the console."""
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from tests.browser.conftest import keep_screenshot
from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.monitor.conftest import audit_actions, later, queued
from tests.scheduler.conftest import configure
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import DEFERRED, FAILED, QUEUED, REMOVED

pytestmark = pytest.mark.browser

SECTION_PATH = "/admin/mail-sender/monitor"


def statuses(app, ids):
    with app.app_context():
        return dict(db.session.execute(select(OutgoingMessage.id, OutgoingMessage.status)
                                       .where(OutgoingMessage.id.in_(ids))).all())


def is_poll(response) -> bool:
    return response.request.method == "GET" and urlparse(response.url).path == SECTION_PATH


def wait_for_polls(page, count: int = 2) -> None:
    """Waits until the section has polled `count` more times (every 5 s)."""
    for _ in range(count):
        with page.expect_response(is_poll, timeout=20_000):
            pass


def open_monitor(page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/admin/mail-sender")
    monitor = page.locator("#monitor")
    monitor.scroll_into_view_if_needed()
    return monitor


def test_select_all_then_remove_asks_how_many_and_the_result_stays_until_dismissed(page, app, live_server, seed):
    pid = seed["partition_id"]
    ids = queued(app, pid, 3, status=DEFERRED, attempt_count=3, retry_at=later(3600),
                 last_error="451 4.3.0 Mailbox busy")
    monitor = open_monitor(page, live_server)

    monitor.get_by_role("button", name="Select all 3").click()
    for message_id in ids:
        expect(page.get_by_label(f"Select message {message_id}", exact=True)).to_be_checked()
    monitor.locator("#stuck-select-all, #stuck-clear").scroll_into_view_if_needed()
    keep_screenshot(page, "monitor-stuck-selected", full_page=False)

    # Remove is not in the accent colour of the primary button; Requeue is.
    remove = monitor.get_by_role("button", name="Remove…")
    requeue = monitor.locator("#monitor-selection").get_by_role("button", name="Requeue", exact=True)
    accent = requeue.evaluate("b => getComputedStyle(b).backgroundColor")
    assert remove.evaluate("b => getComputedStyle(b).backgroundColor") != accent
    remove.click()

    question = page.locator("#monitor-confirm")
    expect(question).to_contain_text("Remove 3 messages? They will not be sent.")
    expect(page.get_by_role("button", name="Keep them")).to_be_focused()
    keep_screenshot(page, "monitor-remove-confirmation", full_page=False)
    wait_for_polls(page, 1)  # the question stays open across a poll
    expect(question).to_contain_text("Remove 3 messages?")
    assert statuses(app, ids) == {i: DEFERRED for i in ids}  # nothing removed yet

    page.get_by_role("button", name="Keep them").click()
    expect(question).to_have_count(0)
    assert statuses(app, ids) == {i: DEFERRED for i in ids}

    remove.click()
    page.get_by_role("button", name="Remove 3 messages").click()
    done = page.locator("#monitor-done")
    for message_id in ids:
        expect(done).to_contain_text(f"Message {message_id} is removed now.")
    assert statuses(app, ids) == {i: REMOVED for i in ids}
    assert all(audit_actions(app, i) == ["message.remove"] for i in ids)

    wait_for_polls(page, 2)  # polls leave the result where it is
    expect(done).to_contain_text(f"Message {ids[0]} is removed now.")
    page.locator("#monitor-result").scroll_into_view_if_needed()
    keep_screenshot(page, "monitor-remove-result", full_page=False)

    page.get_by_role("button", name="Dismiss").click()
    expect(page.locator("#monitor-outcome")).to_have_count(0)


def test_failed_and_removed_messages_are_requeued_from_the_monitor(page, app, live_server, seed):
    pid = seed["partition_id"]
    [failed] = queued(app, pid, 1, status=FAILED, subject="Your invoice",
                      last_error="connect: Error connecting to 127.0.0.1 on port 8499: [Errno 111] "
                                 "Connect call failed ('127.0.0.1', 8499)")
    [removed, also_removed] = queued(app, pid, 2, status=REMOVED)
    monitor = open_monitor(page, live_server)

    row = monitor.locator(f"#ended-{failed}")
    expect(row).to_contain_text("Nothing is listening on 127.0.0.1 port 8499 (connection refused)")
    expect(monitor.locator("table.ended th").filter(has_text="Last error")).to_have_count(1)
    page.locator("#monitor-ended-title").scroll_into_view_if_needed()
    keep_screenshot(page, "monitor-failed-and-removed", full_page=False)

    page.set_viewport_size({"width": 390, "height": 900})  # on a phone, nothing scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") == 0
    page.locator("#monitor-ended-title").scroll_into_view_if_needed()
    keep_screenshot(page, "monitor-failed-and-removed-390", full_page=False)
    page.set_viewport_size({"width": 1280, "height": 900})

    row.get_by_role("button", name=f"Requeue message {failed}").click()
    expect(page.locator("#monitor-done")).to_contain_text(f"Message {failed} is {QUEUED} now.")
    expect(monitor.locator(f"#ended-{failed}")).to_have_count(0)

    page.get_by_label(f"Select message {removed}", exact=True).check()
    page.get_by_label(f"Select message {also_removed}", exact=True).check()
    monitor.get_by_role("button", name="Requeue selected").click()
    expect(page.locator("#monitor-done")).to_contain_text(f"Message {also_removed} is {QUEUED} now.")
    assert statuses(app, [failed, removed, also_removed]) == {failed: QUEUED, removed: QUEUED, also_removed: QUEUED}
    assert audit_actions(app, removed) == ["message.requeue"]
    expect(page.locator("#monitor-no-ended")).to_be_visible()
    keep_screenshot(page, "monitor-requeue-result", full_page=False)


def test_polls_with_nothing_stuck_leave_no_error_in_the_console(page, app, live_server, seed):
    seen = []

    def heard(message):
        # The favicon is the window's own matter (its request is not the section's).
        if not message.location.get("url", "").endswith("/favicon.ico"):
            seen.append(f"{message.type}: {message.text}")

    page.on("console", heard)
    open_monitor(page, live_server)
    expect(page.locator("#monitor-no-stuck")).to_be_visible()
    wait_for_polls(page, 2)
    assert [line for line in seen if line.startswith(("error", "warning"))] == []


def test_the_stuck_list_names_its_column_last_error_and_says_a_connection_error_in_words(page, app, live_server,
                                                                                         seed):
    [one] = queued(app, seed["partition_id"], 1, status=DEFERRED, attempt_count=3, retry_at=later(3600),
                   last_error="connect: Error connecting to 127.0.0.1 on port 8499: [Errno 111] Connect call "
                              "failed ('127.0.0.1', 8499)")
    monitor = open_monitor(page, live_server)
    stuck = monitor.locator("table.stuck")
    expect(stuck.get_by_role("columnheader", name="Last error")).to_have_count(1)
    expect(stuck.get_by_role("columnheader", name="Last SMTP reply")).to_have_count(0)
    expect(stuck.locator(f"#stuck-{one}")).to_contain_text(
        "Nothing is listening on 127.0.0.1 port 8499 (connection refused)")


def test_the_banner_says_the_threshold_without_a_space_before_its_full_stop(page, app, live_server, seed):
    configure(app, seed["partition_id"], monitor_pending_threshold=2)
    queued(app, seed["partition_id"], 3)
    open_monitor(page, live_server)
    alert = page.locator("#monitor-alert")
    expect(alert).to_contain_text("3 messages pending, more than the threshold of 2. See the Monitor section.")
    assert " ." not in " ".join(alert.inner_text().split())
