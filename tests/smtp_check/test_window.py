"""The Test button in the window: the form's values (saved or not) tried, every stage shown in
the Test section; refused values named by label; CSRF required."""
import json
import re

from tests.conftest import csrf_from
from tests.smtp_servers import SmtpServer

PAGE = "/admin/mail-sender"
TEST = "/admin/mail-sender/test"


def form_of(page: str, **changes) -> dict:
    """The Parameters form as the browser would post it (checkboxes ticked = present)."""
    data = {"csrf_token": csrf_from(page)}
    for name, value in re.findall(r'<input type="(?:text|number|email|url)"\s+id="f-\w+" name="(\w+)" value="([^"]*)"',
                                  page):
        data[name] = value
    data.update({name: "" for name in ("smtp_password", "oauth2_client_secret", "oauth2_service_account_key")})
    data["default_charset"] = "UTF-8"
    data.update(changes)
    return {name: value for name, value in data.items() if value is not None}


def test_the_window_has_a_test_button_and_an_empty_test_section(admin_client):
    page = admin_client.get(PAGE).text
    assert re.search(r'<button[^>]*hx-post="/admin/mail-sender/test"[^>]*>Test</button>', page, re.S)
    assert 'id="smtp-test"' in page


def test_pressing_test_shows_every_stage_of_the_typed_values(admin_client):
    page = admin_client.get(PAGE).text
    with SmtpServer() as server:
        response = admin_client.post(TEST, data=form_of(page, smtp_host=server.host, smtp_port=str(server.port),
                                                        smtp_username="relay@acme.test"),
                                     headers={"HX-Request": "true"})
    assert response.status_code == 200, response.text
    html = response.text
    assert html.lstrip().startswith('<section class="section" id="smtp-test"')
    results = re.findall(r'data-stage="(\w+)" data-result="(\w+)"', html)
    assert results == [("connect", "pass"), ("tls", "skipped"), ("ehlo", "pass"), ("auth", "skipped"),
                       ("mail", "pass"), ("rcpt", "pass"), ("rset", "pass")]
    assert 'data-ok="true"' in html
    assert "DATA" not in server.commands


def test_refused_values_are_named_by_label_and_nothing_runs(admin_client):
    page = admin_client.get(PAGE).text
    response = admin_client.post(TEST, data=form_of(page, smtp_port="seventy"), headers={"HX-Request": "true"})
    assert response.status_code == 422
    assert 'id="smtp-test-refused"' in response.text and "SMTP port" in response.text


def test_a_rcpt_refusal_shows_as_a_warning(admin_client):
    page = admin_client.get(PAGE).text
    with SmtpServer(rcpt_replies={"relay@acme.test": ["550 5.1.1 No such user"]}) as server:
        html = admin_client.post(TEST, data=form_of(page, smtp_host=server.host, smtp_port=str(server.port),
                                                     smtp_username="relay@acme.test"),
                                 headers={"HX-Request": "true"}).text
    assert ("rcpt", "warning") in re.findall(r'data-stage="(\w+)" data-result="(\w+)"', html)
    assert 'id="smtp-test-warnings"' in html and "No such user" in html


def test_the_window_test_needs_the_csrf_token(admin_client):
    page = admin_client.get(PAGE).text
    data = form_of(page)
    del data["csrf_token"]
    assert admin_client.post(TEST, data=data, headers={"HX-Request": "true"}).status_code == 400


def test_agents_get_403(agent_client):
    token = csrf_from(agent_client.get("/preferences").text)
    assert agent_client.post(TEST, data={"csrf_token": token}).status_code == 403


def test_choosing_a_provider_has_its_urls_to_fill_in(admin_client):
    page = admin_client.get(PAGE).text
    match = re.search(r"""<select id="f-oauth2_provider"[^>]*data-endpoints='([^']+)'""", page)
    endpoints = json.loads(match.group(1).replace("&#34;", '"'))
    assert endpoints["google"]["oauth2_token_url"] == "https://oauth2.googleapis.com/token"
    assert endpoints["microsoft"]["oauth2_authorization_url"].startswith("https://login.microsoftonline.com/")


def test_the_authorize_button_shows_with_the_authorization_code_grant(app, admin_client, seed):
    from webapp.core.database import db
    from webapp.core.settings.store import get_settings

    assert re.search(r'id="field-oauth2_authorization"[^>]*hidden', admin_client.get(PAGE).text)
    with app.app_context():
        row = get_settings(seed["partition_id"])
        row.oauth2_enabled, row.oauth2_grant = True, "authorization_code"
        db.session.commit()
    page = admin_client.get(PAGE).text
    assert not re.search(r'id="field-oauth2_authorization"[^>]*hidden', page)
    assert "Not authorized yet." in page and 'id="oauth2-save-and-authorize"' in page
