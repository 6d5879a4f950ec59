"""The window works under its Content-Security-Policy: Chromium reports no violation (a console
error) and no script error on the main pages, and an htmx swap still works."""
import pytest
from playwright.sync_api import expect

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, browser_login

pytestmark = pytest.mark.browser

ADMIN_PAGES = ("/admin/mail-sender", "/admin/directory", "/outbox", "/compose", "/preferences", "/account")
AGENT_PAGES = ("/outbox", "/compose", "/preferences", "/account")


@pytest.fixture
def problems(page):
    """What Chromium reports against the pages: CSP violations and uncaught script errors."""
    seen = []
    page.on("console", lambda message: seen.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text else None)
    page.on("pageerror", lambda error: seen.append(str(error)))
    return seen


def _visit(page, live_server, path):
    response = page.goto(f"{live_server.url}{path}")
    assert response.ok, path
    assert "default-src 'self'" in response.headers["content-security-policy"], path
    page.wait_for_function("window.htmx !== undefined")


@pytest.mark.parametrize("username, password, paths", [
    ("admin", ADMIN_PASSWORD, ADMIN_PAGES),
    ("agent", AGENT_PASSWORD, AGENT_PAGES),
])
def test_the_main_pages_load_without_a_policy_violation(page, live_server, problems, username, password, paths):
    _visit(page, live_server, "/login")
    browser_login(page, live_server, username, password)
    for path in paths:
        _visit(page, live_server, path)
    assert problems == []


def test_an_htmx_section_swaps_under_the_policy(page, live_server, problems):
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    _visit(page, live_server, "/account")
    page.get_by_role("button", name="New token").click()
    expect(page.locator("#new-token")).to_be_visible()
    assert problems == []
