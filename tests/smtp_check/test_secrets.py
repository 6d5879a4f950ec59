"""A stored secret is only ever sent where it was saved for, and nothing a server answers gives
one back: the Test button against a server of the administrator's own, and a hostile relay."""
from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy import select

from tests.echo_server import EchoingSmtpServer
from tests.oauth.token_server import TokenServer
from tests.secret_forms import leaks
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import AuditEvent
from webapp.core.settings.store import get_settings

TEST_URL = "/api/v1/mail-sender/test"
SETTINGS_URL = "/api/v1/mail-sender/settings"
USER = "relay@acme.test"
PASSWORD = "S3cret/Pass+word!"
CLIENT_SECRET = "client secret/with+signs&more"


def test_a_test_against_another_port_without_the_password_typed_is_422_and_the_port_hears_nothing(
        client, admin_api, save):
    with SmtpServer(users={USER: PASSWORD}) as saved, EchoingSmtpServer(echo_at="auth") as theirs:
        save(smtp_host=saved.host, smtp_port=saved.port, smtp_auth=True, smtp_username=USER, smtp_password=PASSWORD)
        response = client.post(TEST_URL, headers=admin_api, json={"smtp_port": theirs.port})
        assert response.status_code == 422, response.text
        assert "SMTP port changed" in response.json["fields"]["smtp_password"]
        assert "typed again" in response.json["fields"]["smtp_password"]
        assert theirs.auth_lines == []
        # Typed again, it is theirs to try: the one they typed is what goes.
        typed = client.post(TEST_URL, headers=admin_api, json={"smtp_port": theirs.port, "smtp_password": "their-own-1"})
    assert typed.status_code == 200 and typed.json["stage"] == "auth"
    assert [leaks(line, {"typed": "their-own-1"}, USER) for line in theirs.auth_lines] == [["typed as AUTH PLAIN"]]
    assert not leaks(typed.text, {"typed": "their-own-1", "stored": PASSWORD}, USER)


def test_the_same_host_in_other_letters_is_the_same_destination(client, admin_api, save):
    with SmtpServer(users={USER: PASSWORD}) as server:
        save(smtp_host="localhost", smtp_port=server.port, smtp_auth=True, smtp_username=USER, smtp_password=PASSWORD)
        response = client.post(TEST_URL, headers=admin_api, json={"smtp_host": "LOCALHOST"})
    assert response.status_code == 200 and response.json["ok"] is True, response.json


def test_save_with_a_new_host_needs_the_password_typed_again_naming_the_field(app, client, admin_api, save, seed):
    with SmtpServer(users={USER: PASSWORD}) as server:
        save(smtp_host=server.host, smtp_port=server.port, smtp_auth=True, smtp_username=USER, smtp_password=PASSWORD)
    response = client.put(SETTINGS_URL, headers=admin_api, json={"smtp_host": "localhost"})
    assert response.status_code == 422
    assert set(response.json["fields"]) == {"smtp_password"}
    assert response.json["fields"]["smtp_password"].startswith("must be typed again: SMTP server changed")
    with app.app_context():
        assert get_settings(seed["partition_id"]).smtp_host == server.host


def test_a_secret_the_new_values_do_not_use_is_removed_with_a_warning(app, client, admin_api, save, seed):
    save(smtp_host="127.0.0.1", smtp_port=2525, smtp_auth=True, smtp_username=USER, smtp_password=PASSWORD)
    response = client.put(SETTINGS_URL, headers=admin_api, json={"smtp_host": "localhost", "smtp_auth": False})
    assert response.status_code == 200, response.text
    assert response.json["smtp_password_set"] is False
    assert any(w["field"] == "smtp_password" and "SMTP Password is removed" in w["message"]
               for w in response.json["warnings"])
    # Turned on again at the new host, there is no password to follow it there.
    again = client.put(SETTINGS_URL, headers=admin_api, json={"smtp_auth": True})
    assert again.status_code == 422 and "smtp_password" in again.json["fields"]


def test_a_new_token_url_needs_the_client_secret_typed_again_and_drops_the_consent(app, client, admin_api, save, seed):
    from scheduler.oauth import store_refresh_token

    with TokenServer() as saved_server, TokenServer() as theirs:
        save(smtp_host="127.0.0.1", smtp_port=2525, smtp_username=USER, oauth2_enabled=True, oauth2_provider="other",
             oauth2_grant="authorization_code", oauth2_token_url=saved_server.url,
             oauth2_authorization_url="http://127.0.0.1:1/auth", oauth2_client_id="client-1",
             oauth2_client_secret=CLIENT_SECRET)
        with app.app_context():
            store_refresh_token(seed["partition_id"], "refresh-1")
            db.session.commit()
        tested = client.post(TEST_URL, headers=admin_api, json={"oauth2_token_url": theirs.url})
        assert tested.status_code == 422 and "Token URL changed" in tested.json["fields"]["oauth2_client_secret"]
        refused = client.put(SETTINGS_URL, headers=admin_api, json={"oauth2_token_url": theirs.url})
        assert refused.status_code == 422 and set(refused.json["fields"]) == {"oauth2_client_secret"}
        # With the secret typed again the Test runs, and the stored consent does not go along.
        client.post(TEST_URL, headers=admin_api, json={"oauth2_token_url": theirs.url, "oauth2_client_secret": "typed-1"})
        assert all(r.get("refresh_token") != "refresh-1" for r in theirs.requests), theirs.requests
        saved = client.put(SETTINGS_URL, headers=admin_api,
                           json={"oauth2_token_url": theirs.url, "oauth2_client_secret": "typed-1"})
    assert saved.status_code == 200, saved.text
    assert saved.json["oauth2_refresh_token_set"] is False
    assert any("authorization is removed" in w["message"] for w in saved.json["warnings"])
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "settings.update")
                                   .order_by(AuditEvent.id.desc())).first()
        assert event.details["changes"]["oauth2_refresh_token"] == "cleared"


def test_an_echoed_auth_line_comes_back_scrubbed_in_every_form(client, admin_api, save):
    with EchoingSmtpServer(echo_at="auth") as server:
        save(smtp_host=server.host, smtp_port=server.port, smtp_auth=True, smtp_username=USER, smtp_password=PASSWORD)
        answer = client.post(TEST_URL, headers=admin_api)
    assert leaks(server.echoes[0], {"password": PASSWORD}, USER), "the server did not echo the credentials"
    assert answer.json["stage"] == "auth" and "[secret]" in answer.json["message"]
    assert leaks(answer.text, {"password": PASSWORD}, USER) == []


@pytest.mark.parametrize("encode", [quote, quote_plus, str])
def test_a_token_server_that_quotes_the_client_secret_gets_it_scrubbed(client, admin_api, save, encode):
    refusal = (401, {"error": "invalid_client", "error_description": f"client_secret={encode(CLIENT_SECRET)} is wrong"})
    with TokenServer(refusal=refusal) as tokens, SmtpServer(xoauth2_tokens={USER: "x"}) as server:
        save(smtp_host=server.host, smtp_port=server.port, smtp_username=USER, oauth2_enabled=True,
             oauth2_provider="other", oauth2_grant="client_credentials", oauth2_token_url=tokens.url,
             oauth2_client_id="client-1", oauth2_client_secret=CLIENT_SECRET)
        answer = client.post(TEST_URL, headers=admin_api)
    assert answer.json["stage"] == "auth" and "invalid_client" in answer.json["message"], answer.json
    assert leaks(answer.text, {"client secret": CLIENT_SECRET}) == []
