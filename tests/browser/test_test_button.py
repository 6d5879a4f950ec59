"""The Test button and the OAuth2 form as an administrator uses them in Chromium, against real
servers on loopback: a run in progress is shown at once in place of the last result; a pass says
what was tried and what was not; a failure says why in words, with the raw text in Details;
fields unrelated to SMTP do not stop a Test; Save and authorize saves, then opens the consent
page; the provider's URLs follow the provider unless typed; Client ID is not asked of a service
account."""
import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import keep_screenshot
from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.oauth.token_server import TokenServer
from tests.smtp_servers import ScriptedSmtpServer, SmtpServer
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser

COMMAND_TIMEOUT = 4
GOOGLE = {"oauth2_authorization_url": "https://accounts.google.com/o/oauth2/v2/auth",
          "oauth2_token_url": "https://oauth2.googleapis.com/token"}
MICROSOFT_AUTHORIZE = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"


@pytest.fixture
def app_config(app_config):
    # A server that never answers fails the Test after this many seconds, not the default 60.
    return {**app_config, "MAILSENDER_SMTP_COMMAND_TIMEOUT": COMMAND_TIMEOUT}


def field(page, name):
    return page.locator(f"#f-{name}")


def open_window(page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")


def point_at(page, host, port):
    field(page, "smtp_host").fill(host)
    field(page, "smtp_port").fill(str(port))


def the_test_button(page):
    return page.locator("#parameters").get_by_role("button", name="Test", exact=True)


def test_a_slow_test_shows_testing_at_once_in_place_of_the_last_result(page, live_server):
    with SmtpServer() as server, ScriptedSmtpServer(faults=["stall at greeting"]) as stalled:
        open_window(page, live_server)
        point_at(page, server.host, server.port)
        the_test_button(page).click()
        outcome = page.locator("#smtp-test-outcome")
        expect(outcome).to_contain_text("Passed")
        keep_screenshot(page, "test-button-pass", full_page=False)

        point_at(page, stalled.host, stalled.port)
        the_test_button(page).click()
        running = page.locator("#smtp-test-running")
        expect(running).to_be_visible()
        # It names the stages this run goes through: neither TLS nor AUTH is ticked.
        expect(running).to_contain_text(f"Testing… (connect to {stalled.host} port {stalled.port}, then EHLO, "
                                        "MAIL FROM, RCPT TO and RSET)")
        expect(outcome).to_have_count(0)  # the last pass is no longer on screen
        expect(page.locator("#smtp-test tbody tr")).to_have_count(0)
        expect(the_test_button(page)).to_be_disabled()
        expect(running.locator("[data-elapsed]")).not_to_have_text("0")  # the seconds go on
        expect(running).to_be_in_viewport()
        keep_screenshot(page, "test-button-in-progress", full_page=False)

        expect(outcome).to_contain_text(f"did not answer within {COMMAND_TIMEOUT} s")
        expect(running).to_have_count(0)
        expect(the_test_button(page)).to_be_enabled()
        expect(outcome).to_have_attribute("data-ok", "false")
        keep_screenshot(page, "test-button-failure", full_page=False)


def test_a_pass_says_what_was_tried_and_what_was_not(page, live_server):
    with SmtpServer() as server:
        open_window(page, live_server)
        point_at(page, server.host, server.port)
        the_test_button(page).click()
        outcome = page.locator("#smtp-test-outcome")
        expect(outcome).to_contain_text(f"Passed: Connected to {server.host} port {server.port}, EHLO answered; "
                                        "no TLS (not enabled); no login (AUTH not enabled)")
        expect(outcome).not_to_contain_text("TLS, EHLO and AUTH work")
        for stage in ("tls", "auth"):
            row = page.locator(f'#smtp-test tr[data-stage="{stage}"]')
            expect(row).to_have_attribute("data-result", "skipped")
            expect(row).to_contain_text("not used")


def test_a_failure_is_said_in_words_with_the_raw_text_in_details(page, live_server):
    port = SmtpServer.free_port()
    open_window(page, live_server)
    point_at(page, "127.0.0.1", port)
    the_test_button(page).click()
    outcome = page.locator("#smtp-test-outcome")
    expect(outcome).to_contain_text(f"Failed at Connect: Nothing is listening on 127.0.0.1 port {port} "
                                    "(connection refused)")
    raw = page.locator("#smtp-test-details .server-text")
    expect(raw).to_be_hidden()
    expect(outcome.locator("p").first).not_to_contain_text("Errno")
    page.locator("#smtp-test-details summary").click()
    expect(raw).to_contain_text("Connect call failed")
    keep_screenshot(page, "test-button-failure-details", full_page=False)


def test_an_invalid_field_unrelated_to_smtp_does_not_stop_the_test(page, live_server):
    with SmtpServer() as server:
        open_window(page, live_server)
        field(page, "batch_size").fill("0")
        point_at(page, server.host, server.port)
        the_test_button(page).click()
        expect(page.locator("#smtp-test-outcome")).to_contain_text("Passed")
        expect(page.locator("#smtp-test-refused")).to_have_count(0)
        expect(field(page, "batch_size")).to_have_value("0")  # the form is as it was typed
    assert server.ehlo_names  # the Test did talk to the server


def fill_authorization_code_grant(page, token_server):
    field(page, "smtp_host").fill("127.0.0.1")
    field(page, "oauth2_enabled").check()
    field(page, "oauth2_provider").select_option("other")
    field(page, "oauth2_grant").select_option("authorization_code")
    field(page, "smtp_username").fill("relay@acme.test")
    field(page, "oauth2_authorization_url").fill(token_server.url.replace("/token", "/authorize"))
    field(page, "oauth2_token_url").fill(token_server.url)
    field(page, "oauth2_client_id").fill("client-1")
    field(page, "oauth2_client_secret").fill("client-secret-1")


def test_save_and_authorize_keeps_a_refused_form_then_saves_and_opens_the_consent_page(page, app, live_server,
                                                                                        seed):
    with TokenServer() as token_server:
        open_window(page, live_server)
        fill_authorization_code_grant(page, token_server)
        field(page, "batch_size").fill("0")
        save_and_authorize = page.get_by_role("button", name="Save and authorize")
        save_and_authorize.click()
        # Refused: the form stays, with its message; nothing typed is lost, no page of its own.
        expect(page.locator('#parameters a[href="#f-batch_size"]')).to_be_attached()
        expect(page.locator("#oauth2-authorize-error")).to_contain_text("Not saved, so not authorized")
        assert page.url == f"{live_server.url}/admin/mail-sender"
        expect(field(page, "oauth2_client_id")).to_have_value("client-1")
        expect(field(page, "oauth2_token_url")).to_have_value(token_server.url)
        field(page, "oauth2_client_id").scroll_into_view_if_needed()
        keep_screenshot(page, "save-and-authorize-refused", full_page=False)
        with app.app_context():
            assert not get_settings(seed["partition_id"]).oauth2_enabled

        field(page, "batch_size").fill("100")
        if not field(page, "oauth2_client_secret").input_value():
            field(page, "oauth2_client_secret").fill("client-secret-1")  # secrets are never sent back
        page.get_by_role("button", name="Save and authorize").click()
        page.wait_for_url(re.compile(re.escape(token_server.url.replace("/token", "/authorize")) + r"\?"))
        assert "client_id=client-1" in page.url and "code_challenge_method=S256" in page.url
    with app.app_context():
        saved = get_settings(seed["partition_id"])
        assert saved.oauth2_enabled and saved.oauth2_client_id == "client-1" and saved.batch_size == 100


def test_the_provider_fills_only_urls_that_hold_defaults_or_nothing(page, live_server):
    open_window(page, live_server)
    field(page, "oauth2_enabled").check()
    field(page, "oauth2_grant").select_option("authorization_code")
    field(page, "oauth2_provider").select_option("google")
    for name, url in GOOGLE.items():
        expect(field(page, name)).to_have_value(url)
    # Other has no defaults: Google's are cleared.
    field(page, "oauth2_provider").select_option("other")
    for name in GOOGLE:
        expect(field(page, name)).to_have_value("")
    # A typed URL stays whatever provider is chosen; an empty one gets the provider's.
    field(page, "oauth2_token_url").fill("https://login.example.test/tenant-7/token")
    field(page, "oauth2_provider").select_option("microsoft")
    expect(field(page, "oauth2_token_url")).to_have_value("https://login.example.test/tenant-7/token")
    expect(field(page, "oauth2_authorization_url")).to_have_value(MICROSOFT_AUTHORIZE)
    # Microsoft's default replaced by Google's when switching between the two.
    field(page, "oauth2_provider").select_option("google")
    expect(field(page, "oauth2_authorization_url")).to_have_value(GOOGLE["oauth2_authorization_url"])


def test_the_service_account_grant_does_not_ask_for_a_client_id(page, live_server):
    open_window(page, live_server)
    field(page, "oauth2_enabled").check()
    field(page, "oauth2_grant").select_option("client_credentials")
    expect(field(page, "oauth2_client_id")).to_be_visible()
    field(page, "oauth2_grant").select_option("service_account")
    expect(field(page, "oauth2_client_id")).to_be_hidden()
    expect(field(page, "oauth2_service_account_key")).to_be_visible()
