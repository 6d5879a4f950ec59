"""An administrator presses Test in Chromium against a real SMTP server on loopback and sees
every stage pass, with the typed (unsaved) values; nothing is delivered or saved."""
import pytest
from playwright.sync_api import expect

from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.smtp_servers import SmtpServer
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser

USER = "relay@acme.test"
PASSWORD = "Relay-Pass-55"


def test_pressing_test_shows_each_stage_passing(page, app, live_server, seed):
    with SmtpServer(users={USER: PASSWORD}) as server:
        browser_login(page, live_server, "admin", ADMIN_PASSWORD)
        page.goto(f"{live_server.url}/admin/mail-sender")
        page.get_by_label("SMTP server", exact=True).fill(server.host)
        page.get_by_label("SMTP port", exact=True).fill(str(server.port))
        page.get_by_label("Use SMTP Auth", exact=True).check()
        page.get_by_label("SMTP User", exact=True).fill(USER)
        page.get_by_label("SMTP Password", exact=True).fill(PASSWORD)

        page.locator("#parameters").get_by_role("button", name="Test", exact=True).click()

        outcome = page.locator("#smtp-test-outcome")
        expect(outcome).to_contain_text("Passed")
        rows = page.locator("#smtp-test tbody tr")
        expect(rows).to_have_count(7)
        for stage in ("connect", "ehlo", "auth", "mail", "rcpt", "rset"):
            expect(page.locator(f'#smtp-test tr[data-stage="{stage}"]')).to_have_attribute("data-result", "pass")
        # A loopback server may take a login without TLS; TLS is not enabled, and the row says so.
        expect(page.locator('#smtp-test tr[data-stage="tls"]')).to_have_attribute("data-result", "skipped")
        expect(page.locator('#smtp-test tr[data-stage="auth"]')).to_contain_text("235")
        assert PASSWORD not in page.content()
        # What was typed stays in the form, and nothing was saved or delivered.
        expect(page.get_by_label("SMTP port", exact=True)).to_have_value(str(server.port))
    assert "DATA" not in server.commands and server.messages == []
    with app.app_context():
        assert get_settings(seed["partition_id"]).smtp_port == 25


def test_choosing_a_provider_fills_in_its_urls(page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    page.get_by_label("Use OAuth2 SMTP", exact=True).check()
    page.get_by_label("OAuth2 grant", exact=True).select_option("authorization_code")
    page.get_by_label("OAuth2 provider", exact=True).select_option("google")
    expect(page.get_by_label("Token URL", exact=True)).to_have_value("https://oauth2.googleapis.com/token")
    expect(page.get_by_label("Authorization Url", exact=True)).to_have_value("https://accounts.google.com/o/oauth2/v2/auth")
    expect(page.get_by_role("button", name="Authorize")).to_be_visible()
    page.get_by_label("OAuth2 provider", exact=True).select_option("microsoft")
    expect(page.get_by_label("Token URL", exact=True)).to_have_value(
        "https://login.microsoftonline.com/common/oauth2/v2.0/token")
