"""Polled sections never fight the user (Chromium): a refresh keeps keyboard focus and an open
<details>, polls stop while the tab is hidden and come at once when it is shown again, and Start
says "Starting…" at once, until the heartbeats agree."""
from datetime import timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from scheduler.status import set_wanted
from tests.browser.conftest import keep_screenshot
from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.mailsender.conftest import add_node, add_sender
from tests.scheduler.conftest import queue_messages, start
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import WANTED_RUNNING

pytestmark = pytest.mark.browser

POLLED_PATHS = ("/admin/mail-sender/status", "/admin/mail-sender/monitor")

# Counts, in the page, each poll htmx is about to send (or that the hidden tab drops), per path.
COUNT_POLLS = """() => {
  window.polls = {};
  document.addEventListener("htmx:beforeRequest", (event) => {
    const path = new URL(event.detail.requestConfig.path, location.href).pathname;
    window.polls[path] = (window.polls[path] || 0) + 1;
  });
}"""
SET_HIDDEN = """(hidden) => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => hidden ? "hidden" : "visible"});
  document.dispatchEvent(new Event("visibilitychange"));
}"""



def test_focus_on_stop_survives_a_status_refresh_that_changes_the_light(page, app, live_server, seed, node):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    status = page.locator("#status")
    expect(status.locator("[data-node='test-node']")).to_contain_text("0 running")
    stop = status.get_by_role("button", name="Stop")
    stop.focus()
    expect(stop).to_be_focused()
    start(app, seed["partition_id"])  # elsewhere: another administrator, or the API
    expect(status.locator(".light.green.on")).to_have_text("All senders run")
    expect(stop).to_be_focused()


def test_an_open_details_in_the_outbox_stays_open_across_a_poll_that_changes_the_list(page, app, live_server, seed):
    [first, second] = queue_messages(app, seed["partition_id"], 2)
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/outbox")
    row = page.locator(f"#message-{first}")
    expect(row).to_have_attribute("data-status", "queued")
    details = page.locator(f"#message-{first} + tr.details details")
    details.locator("summary").click()
    expect(details).to_have_attribute("open", "")
    with app.app_context():
        db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == second)
                           .values(status="deferred", attempt_count=1, last_error="451 try again later",
                                   retry_at=utcnow() + timedelta(hours=1)))
        db.session.commit()
    expect(page.locator(f"#message-{second}")).to_have_attribute("data-status", "deferred")
    expect(details).to_have_attribute("open", "")
    keep_screenshot(page, "outbox-details-open-across-a-poll")


def test_polls_stop_while_the_tab_is_hidden_and_come_at_once_when_it_is_shown(page, app, live_server, seed):
    sent = []
    page.on("request", lambda request: sent.append(request.url))
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    page.evaluate(COUNT_POLLS)
    page.wait_for_function("() => (window.polls['/admin/mail-sender/status'] || 0) >= 1")
    assert any(POLLED_PATHS[0] in url for url in sent), "the status did not poll while shown"

    page.evaluate(SET_HIDDEN, True)
    hidden_since = len(sent)
    # Two rounds of polls fall due while hidden; none of them reaches the server.
    page.wait_for_function("() => window.polls['/admin/mail-sender/status'] >= 3"
                           " && (window.polls['/admin/mail-sender/monitor'] || 0) >= 2", timeout=30_000)
    assert [url for url in sent[hidden_since:] if any(path in url for path in POLLED_PATHS)] == []

    # Shown right after a dropped poll: the next is 5 s away, yet the status asks at once.
    dropped = page.evaluate("() => window.polls['/admin/mail-sender/status']")
    page.wait_for_function(f"() => window.polls['/admin/mail-sender/status'] > {dropped}", timeout=30_000)
    with page.expect_request(lambda request: POLLED_PATHS[0] in request.url, timeout=2_000):
        page.evaluate(SET_HIDDEN, False)


def test_start_says_starting_at_once_until_the_senders_run(page, app, live_server, seed):
    with app.app_context():
        # A node whose sender has not followed yet: its heartbeat is fresh and says "not running".
        add_sender(add_node("node-a"), seed["partition_id"], 0, running=False)
        db.session.commit()
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    status = page.locator("#status")
    expect(status.locator("[data-change]")).to_have_count(0)
    status.get_by_role("button", name="Start").click()
    expect(status.locator("[data-change='starting']")).to_have_text("Starting…", timeout=3_000)
    expect(status.get_by_role("button", name="Start")).to_be_focused()
    keep_screenshot(page, "status-starting", full_page=False)


def test_stop_says_stopping_at_once_until_the_senders_stop(page, app, live_server, seed):
    with app.app_context():
        set_wanted(seed["partition_id"], WANTED_RUNNING, "tester")
        # A node whose sender has not followed the Stop yet: its heartbeat is fresh and says "running".
        add_sender(add_node("node-a"), seed["partition_id"], 0, running=True)
        db.session.commit()
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    status = page.locator("#status")
    expect(status.locator(".light.green.on")).to_have_text("All senders run")
    expect(status.locator("[data-change]")).to_have_count(0)
    status.get_by_role("button", name="Stop").click()
    expect(status.locator("[data-change='stopping']")).to_have_text("Stopping…", timeout=3_000)
    keep_screenshot(page, "status-stopping", full_page=False)


def test_start_and_stop_show_their_change_until_the_heartbeats_agree(page, app, live_server, seed, node):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    status = page.locator("#status")
    expect(status.locator("[data-node='test-node']")).to_contain_text("0 running")
    status.get_by_role("button", name="Start").click()
    expect(status.locator(".light.green.on")).to_have_text("All senders run")
    expect(status.locator("[data-change]")).to_have_count(0)
    status.get_by_role("button", name="Stop").click()
    expect(status.locator(".light.red.on")).to_have_text("No sender runs")
    expect(status.locator("[data-change]")).to_have_count(0)
