"""The browser logs in and sees the navigation."""
import pytest

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, browser_login

pytestmark = pytest.mark.browser


def test_admin_logs_in_and_sees_the_navigation(page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    nav = page.get_by_role("navigation", name="Main")
    for name in ("Mail Sender", "Directory", "Outbox", "Compose", "Preferences"):
        assert nav.get_by_role("link", name=name).is_visible()
    assert page.url.endswith("/admin/mail-sender")


def test_agent_sees_no_admin_links(page, live_server):
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Compose").is_visible()
    assert nav.get_by_role("link", name="Directory").count() == 0


def test_a_wrong_password_shows_the_message(page, live_server):
    browser_login(page, live_server, "admin", "wrong")
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."


def test_htmx_is_served_from_our_own_static_path(page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    assert page.evaluate("typeof htmx !== 'undefined' && htmx.version.startsWith('2.0')")
