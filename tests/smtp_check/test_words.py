"""The Test says what it tried and why it failed in words a person understands, keeping the raw
text; it tries the SMTP and OAuth2 fields alone; and Save and authorize saves before consenting.
Real servers on loopback throughout (aiosmtpd, a scripted server, the token server)."""
import json
import re
from urllib.parse import urlsplit

import pytest

from scheduler.smtp.session import SmtpConfig
from scheduler.smtp_check import run_check
from tests.conftest import csrf_from
from tests.oauth.token_server import TokenServer
from tests.smtp_check.test_window import form_of
from tests.smtp_servers import ScriptedSmtpServer, SmtpServer, TlsAuthority
from webapp.core.settings.store import get_settings
from webapp.core.settings.validate import validate_settings

ADDRESS = "relay@acme.test"
PASSWORD = "relay-Secret-9"
PAGE = "/admin/mail-sender"
TEST = "/admin/mail-sender/test"
AUTHORIZE = "/admin/mail-sender/oauth2/authorize"
HTMX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def authority():
    return TlsAuthority()


def config(host, port, **fields) -> SmtpConfig:
    return SmtpConfig(host=host, port=port, idle_seconds=5, command_timeout=fields.pop("command_timeout", 30),
                      **fields)


# --- an honest pass -------------------------------------------------------------------------


def test_a_pass_without_tls_and_auth_says_neither_was_used():
    with SmtpServer() as server:
        result = run_check(config(server.host, server.port), ADDRESS)
    assert result.ok
    assert result.summary == (f"Connected to {server.host} port {server.port}, EHLO answered; no TLS (not enabled); "
                              f"no login (AUTH not enabled); MAIL FROM and RCPT TO <{ADDRESS}> accepted. "
                              "Nothing was sent.")
    assert result.skipped == ("tls", "auth")
    body = result.to_json()
    assert body["summary"] == result.summary and body["message"] == result.summary
    assert [step["skipped"] for step in body["steps"]] == [False, True, False, True, False, False, False]


def test_a_pass_with_starttls_and_a_login_names_both(authority):
    with SmtpServer(tls="starttls", authority=authority, users={ADDRESS: PASSWORD}) as server:
        result = run_check(config(server.host, server.port, starttls=True, ca_file=authority.ca_file, auth=True,
                                  username=ADDRESS, password=PASSWORD), ADDRESS)
    assert result.ok and result.skipped == ()
    assert "TLS by STARTTLS, TLSv1." in result.summary
    assert f"logged in as {ADDRESS} (AUTH PLAIN)" in result.summary
    assert "not enabled" not in result.summary


# --- errors in words --------------------------------------------------------------------------


def test_a_refused_connection_says_nothing_is_listening_and_keeps_the_raw_text():
    port = SmtpServer.free_port()
    result = run_check(config("127.0.0.1", port), ADDRESS)
    assert not result.ok and result.stage == "connect"
    assert result.summary.startswith(f"Nothing is listening on 127.0.0.1 port {port} (connection refused).")
    assert "Connect call failed" in result.message
    assert result.to_json()["summary"] == result.summary


def test_a_name_that_does_not_resolve_is_named():
    result = run_check(config("no-such-host.invalid", 25), ADDRESS)
    assert not result.ok and result.stage == "connect"
    assert result.summary.startswith("The name no-such-host.invalid does not resolve")


def test_a_server_that_never_greets_is_a_timeout_in_seconds():
    with ScriptedSmtpServer(faults=["stall at greeting"]) as server:
        result = run_check(config(server.host, server.port, command_timeout=1), ADDRESS)
    assert not result.ok and result.stage == "connect"
    assert result.summary.startswith(f"The server at {server.host} port {server.port} did not answer within 1 s")


def test_a_certificate_not_trusted_says_so(authority):
    with SmtpServer(tls="starttls", authority=authority) as server:
        result = run_check(config(server.host, server.port, starttls=True), ADDRESS)
    assert not result.ok and result.stage == "tls"
    assert result.summary.startswith(f"The certificate of {server.host} port {server.port} is not trusted "
                                     "(unable to get local issuer certificate).")
    assert "CERTIFICATE_VERIFY_FAILED" in result.message


def test_a_refused_login_names_the_user_and_what_to_check(authority):
    with SmtpServer(tls="starttls", authority=authority, users={ADDRESS: PASSWORD}) as server:
        result = run_check(config(server.host, server.port, starttls=True, ca_file=authority.ca_file, auth=True,
                                  username=ADDRESS, password="Wrong-Password-1"), ADDRESS)
    assert not result.ok and result.code == 535
    assert result.summary == f"The server refused the login of {ADDRESS} (535). Check the SMTP user and password."
    assert "Wrong-Password-1" not in json.dumps(result.to_json())


def test_tls_not_offered_says_what_to_do():
    with SmtpServer() as server:
        result = run_check(config(server.host, server.port, starttls=True), ADDRESS)
    assert not result.ok and result.stage == "tls"
    assert result.summary.startswith(f"The server at {server.host} port {server.port} does not offer TLS (no STARTTLS")


def test_the_window_shows_the_words_and_the_raw_text_in_details(admin_client):
    port = SmtpServer.free_port()
    page = admin_client.get(PAGE).text
    html = admin_client.post(TEST, data=form_of(page, smtp_host="127.0.0.1", smtp_port=str(port)), headers=HTMX).text
    outcome = html[html.index('id="smtp-test-outcome"'):html.index("</table>")]
    assert f"Nothing is listening on 127.0.0.1 port {port} (connection refused)" in outcome
    details = outcome[outcome.index("<details"):outcome.index("</details>")]
    assert "Connect call failed" in details


# --- the fields that matter -----------------------------------------------------------------


def test_an_invalid_field_unrelated_to_smtp_does_not_stop_a_test(admin_client):
    page = admin_client.get(PAGE).text
    with SmtpServer() as server:
        response = admin_client.post(TEST, headers=HTMX, data=form_of(
            page, smtp_host=server.host, smtp_port=str(server.port), smtp_username=ADDRESS, batch_size="0",
            log_email_address="not-an-email"))
    assert response.status_code == 200, response.text
    assert 'data-ok="true"' in response.text
    assert server.commands == ["MAIL", "RCPT", "RSET"]


def test_an_invalid_smtp_field_still_stops_a_test_naming_only_it(admin_client):
    page = admin_client.get(PAGE).text
    response = admin_client.post(TEST, headers=HTMX, data=form_of(page, smtp_port="seventy", batch_size="0"))
    assert response.status_code == 422
    refused = response.text[response.text.index('id="smtp-test-refused"'):]
    assert 'href="#f-smtp_port"' in refused and 'href="#f-batch_size"' not in refused


def test_the_api_test_ignores_unrelated_fields_but_not_unknown_names(client, admin_api):
    with SmtpServer() as server:
        ignored = client.post("/api/v1/mail-sender/test", headers=admin_api, json={
            "smtp_host": server.host, "smtp_port": server.port, "batch_size": 0})
        unknown = client.post("/api/v1/mail-sender/test", headers=admin_api, json={"smtp_hots": server.host})
    assert ignored.status_code == 200 and ignored.json["ok"] is True, ignored.text
    assert unknown.status_code == 422 and "smtp_hots" in unknown.json["fields"]


# --- Client ID and the service account grant ------------------------------------------------

SERVICE_ACCOUNT = {"oauth2_enabled": True, "oauth2_provider": "google", "oauth2_grant": "service_account",
                   "smtp_host": "smtp.gmail.com", "smtp_starttls": True, "smtp_username": ADDRESS,
                   "oauth2_token_url": "https://oauth2.googleapis.com/token",
                   "oauth2_service_account_key": json.dumps({"type": "service_account",
                                                             "client_email": "sender@project.iam.example",
                                                             "private_key": "-----BEGIN PRIVATE KEY-----\nx\n"})}


def test_the_service_account_grant_needs_no_client_id(app, seed):
    with app.app_context():
        validation = validate_settings(get_settings(seed["partition_id"]), SERVICE_ACCOUNT)
    assert "oauth2_client_id" not in validation.errors, validation.errors
    assert validation.errors == {}


@pytest.mark.parametrize("grant", ["client_credentials", "authorization_code"])
def test_the_other_grants_still_need_the_client_id(app, seed, grant):
    with app.app_context():
        validation = validate_settings(get_settings(seed["partition_id"]), {**SERVICE_ACCOUNT, "oauth2_grant": grant})
    assert validation.errors["oauth2_client_id"] == "is required with Use OAuth2 SMTP"


def test_the_client_id_field_is_not_shown_for_the_service_account_grant():
    from webapp.core.settings.fields import FIELDS_BY_NAME, show_if_holds

    rule = FIELDS_BY_NAME["oauth2_client_id"].show_if
    assert not show_if_holds(rule, {"oauth2_enabled": True, "oauth2_grant": "service_account"})
    assert show_if_holds(rule, {"oauth2_enabled": True, "oauth2_grant": "authorization_code"})


# --- Save and authorize ---------------------------------------------------------------------


def authorization_form(page, token_server, **changes):
    authorize_url = token_server.url.replace("/token", "/authorize")
    return form_of(page, smtp_host="127.0.0.1", smtp_username=ADDRESS, oauth2_enabled="on",
                   oauth2_provider="other", oauth2_grant="authorization_code",
                   oauth2_authorization_url=authorize_url, oauth2_token_url=token_server.url,
                   oauth2_client_id="client-1", oauth2_client_secret="client-secret-1", **changes)


def test_save_and_authorize_saves_then_sends_to_the_consent_page(app, seed, admin_client):
    with TokenServer() as token_server:
        page = admin_client.get(PAGE).text
        response = admin_client.post(AUTHORIZE, data=authorization_form(page, token_server))
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == token_server.url.replace("/token", "/authorize")
    assert "client_id=client-1" in location.query and "code_challenge_method=S256" in location.query
    with app.app_context():
        saved = get_settings(seed["partition_id"])
        assert saved.oauth2_enabled and saved.oauth2_grant == "authorization_code"
        assert saved.oauth2_client_id == "client-1"


def test_save_and_authorize_over_htmx_redirects_the_window(admin_client):
    with TokenServer() as token_server:
        page = admin_client.get(PAGE).text
        response = admin_client.post(AUTHORIZE, data=authorization_form(page, token_server), headers=HTMX)
    assert response.status_code == 200
    assert response.headers["HX-Redirect"].startswith(token_server.url.replace("/token", "/authorize") + "?")


def test_a_refused_save_and_authorize_keeps_the_form_with_its_messages(app, seed, admin_client):
    with TokenServer() as token_server:
        page = admin_client.get(PAGE).text
        response = admin_client.post(AUTHORIZE, headers=HTMX,
                                     data=authorization_form(page, token_server, batch_size="0"))
    assert response.status_code == 422
    html = response.text
    assert html.lstrip().startswith('<section class="section" id="parameters"')
    assert 'href="#f-batch_size"' in html
    assert "Not saved, so not authorized" in html[html.index('id="oauth2-authorize-error"'):]
    assert re.search(r'id="f-oauth2_client_id" name="oauth2_client_id" value="client-1"', html)
    assert "HX-Redirect" not in response.headers
    with app.app_context():
        assert not get_settings(seed["partition_id"]).oauth2_enabled


def test_a_saved_form_that_cannot_be_authorized_says_why_next_to_the_button(admin_client):
    page = admin_client.get(PAGE).text
    response = admin_client.post(AUTHORIZE, headers=HTMX, data=form_of(page))  # OAuth2 is off
    assert response.status_code == 409
    assert 'id="oauth2-authorize-error"' in response.text
    assert "authorization code grant" in response.text


def test_authorize_without_the_form_and_without_settings_goes_back_to_the_window(admin_client):
    token = csrf_from(admin_client.get(PAGE).text)
    response = admin_client.post(AUTHORIZE, data={"csrf_token": token})
    assert response.status_code == 302 and urlsplit(response.headers["Location"]).path == PAGE
    assert "Cannot authorize" in admin_client.get(PAGE).text
