"""The Status section's line for a running node says which version it runs and since when, at a
desktop width and at a phone's (kept as screenshots), without making the phone scroll sideways."""
from importlib import metadata

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from tests.browser.conftest import keep_screenshot
from tests.browser.test_screenshots import sideways_overflow
from tests.conftest import ADMIN_PASSWORD, browser_login
from webapp.core.clock import iso
from webapp.core.database import db
from webapp.core.models import Node

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", (1280, 390))
def test_a_running_nodes_line_shows_its_version_and_start_time(page, app, live_server, node, width):
    page.set_viewport_size({"width": width, "height": 900})
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    row = page.locator('tr[data-node="test-node"][data-node-state="running"]')
    expect(row).to_contain_text(f"version {metadata.version('mailsender')} · started ")
    with app.app_context():
        started = iso(db.session.scalar(select(Node.started_at).where(Node.name == "test-node")))
    expect(row.locator(".node-started time")).to_have_attribute("datetime", started)
    expect(row.locator(".node-started")).to_have_text(f"{started[:19].replace('T', ' ')} UTC")
    keep_screenshot(page, f"node-version-{width}")
    assert sideways_overflow(page) == 0
