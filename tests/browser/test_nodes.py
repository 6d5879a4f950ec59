"""Nodes in the Status section (Chromium, real node processes): a node killed with SIGKILL stays
listed as not running, and the light yellow, long after; "Forget node" removes it and the light
turns green. A node ended with SIGTERM is listed as stopped, with its time, and is no failure."""
import signal
from datetime import timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from scheduler.status import STOPPED_LISTED_MINUTES
from tests.browser.conftest import keep_screenshot
from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.scheduler.conftest import start, wait_until
from tests.scheduler.test_processes import NodeProcess, holding
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import AuditEvent

pytestmark = pytest.mark.browser



@pytest.fixture
def other_node(db_url, tmp_path):
    """A second node, `flask --app webapp serve` in its own process."""
    started = []

    def launch(name: str) -> NodeProcess:
        process = NodeProcess(db_url, tmp_path, name).start()
        started.append(process)
        return process

    yield launch
    for process in started:
        process.end()


def both_up(app, page, live_server, name: str):
    wait_until(lambda: holding(app, "test-node", name, senders=1), timeout=120, what="both nodes up")
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    status = page.locator("#status")
    expect(status.locator(".light.green.on")).to_have_text("All senders run")
    expect(status.locator(f"[data-node='{name}']")).to_contain_text("1 running")
    return status


def test_a_killed_node_stays_listed_and_yellow_until_it_is_forgotten(page, app, live_server, seed, node,
                                                                     other_node):
    start(app, seed["partition_id"])
    doomed = other_node("doomed")
    status = both_up(app, page, live_server, "doomed")

    doomed.signal(signal.SIGKILL)
    doomed.wait()
    killed_at = utcnow()
    row = status.locator("[data-node='doomed']")
    expect(row).to_have_attribute("data-node-state", "dead")
    expect(row).to_contain_text("not running · last seen")
    expect(status.locator(".light.yellow.on")).to_have_text("A node stopped without shutting down")

    # Past an hour of product time (and so past the hour a stopped node is listed for).
    hour = STOPPED_LISTED_MINUTES * float(app.config["MAILSENDER_MINUTE_SECONDS"])
    wait_until(lambda: utcnow() > killed_at + timedelta(seconds=hour + 2), timeout=hour + 30,
               what="an hour of product time")
    page.reload()
    expect(row).to_have_attribute("data-node-state", "dead")
    expect(status.locator(".light.yellow.on")).to_have_text("A node stopped without shutting down")
    keep_screenshot(page, "status-dead-node", full_page=False)

    row.get_by_role("button", name="Forget node doomed").click()
    expect(row).to_have_count(0)
    expect(status.locator(".light.green.on")).to_have_text("All senders run")
    with app.app_context():
        forgotten = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "node.forget")).one()
        assert (forgotten.actor, forgotten.details["name"]) == ("admin", "doomed")


def test_a_node_ended_with_sigterm_is_listed_as_stopped_and_the_light_stays_green(page, app, live_server, seed,
                                                                                   node, other_node):
    start(app, seed["partition_id"])
    polite = other_node("polite")
    status = both_up(app, page, live_server, "polite")

    polite.signal(signal.SIGTERM)
    assert polite.wait(60) == 0, polite.output()
    row = status.locator("[data-node='polite']")
    expect(row).to_have_attribute("data-node-state", "stopped")
    expect(row).to_contain_text("stopped at")
    expect(row.locator("time").first).to_contain_text("UTC")
    expect(status.locator(".light.green.on")).to_have_text("All senders run")
    keep_screenshot(page, "status-stopped-node", full_page=False)
