"""The authorization code grant with PKCE: Authorize → the provider's page → the callback, which
checks `state`, trades the code and stores the refresh token encrypted with who and when."""
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import csrf_from
from tests.oauth.token_server import TokenServer
from webapp.core.database import db
from webapp.core.settings.store import get_settings, update_settings

AUTHORIZE = "/admin/mail-sender/oauth2/authorize"
CALLBACK = "/admin/mail-sender/oauth2/callback"


@pytest.fixture
def token_server():
    with TokenServer() as server:
        yield server


def save_authorization_code_grant(app, seed, token_server, provider):
    with app.app_context():
        result = update_settings(seed["partition_id"], {
            "smtp_host": "127.0.0.1", "smtp_username": "relay@acme.test", "oauth2_enabled": True,
            "oauth2_provider": provider, "oauth2_grant": "authorization_code",
            "oauth2_authorization_url": "https://login.example.test/authorize",
            "oauth2_token_url": token_server.url, "oauth2_client_id": "client-1",
            "oauth2_client_secret": "client-secret-1"}, "test")
        assert result.ok, result.errors
        db.session.commit()


def back_in_the_window(response) -> bool:
    """A callback always leads back to the window, where a note says what happened."""
    return response.status_code == 302 and urlsplit(response.headers["Location"]).path == "/admin/mail-sender"


def press_authorize(client) -> dict:
    token = csrf_from(client.get("/admin/mail-sender").text)
    response = client.post(AUTHORIZE, data={"csrf_token": token})
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == "https://login.example.test/authorize"
    return {name: values[0] for name, values in parse_qs(location.query).items()}


@pytest.mark.databases
def test_google_round_trip_stores_the_refresh_token_with_who_and_when(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "google")
    asked = press_authorize(admin_client)
    assert asked["response_type"] == "code" and asked["client_id"] == "client-1"
    assert asked["access_type"] == "offline" and asked["scope"] == "https://mail.google.com/"
    assert asked["code_challenge_method"] == "S256" and asked["redirect_uri"].endswith(CALLBACK)
    token_server.codes["code-1"] = asked["code_challenge"]  # the provider issues a code for that challenge

    response = admin_client.get(CALLBACK, query_string={"code": "code-1", "state": asked["state"]})
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/mail-sender")
    (exchange,) = token_server.requests
    assert exchange["grant_type"] == "authorization_code" and exchange["code"] == "code-1"
    with app.app_context():
        saved = get_settings(seed["partition_id"])
        assert saved.oauth2_refresh_token_enc and "refresh-token-1" not in saved.oauth2_refresh_token_enc
        assert saved.oauth2_authorized_by == "admin" and saved.oauth2_authorized_at is not None
    page = admin_client.get("/admin/mail-sender").text
    assert "Authorized by <strong>admin</strong>" in page
    assert "refresh-token-1" not in page


def test_microsoft_asks_for_offline_access_and_smtp_send(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "microsoft")
    asked = press_authorize(admin_client)
    assert set(asked["scope"].split()) == {"offline_access", "https://outlook.office.com/SMTP.Send"}


def test_a_wrong_state_is_refused_and_nothing_is_stored(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "google")
    asked = press_authorize(admin_client)
    token_server.codes["code-1"] = asked["code_challenge"]
    response = admin_client.get(CALLBACK, query_string={"code": "code-1", "state": asked["state"] + "x"})
    assert back_in_the_window(response)
    assert "state differs or expired" in admin_client.get("/admin/mail-sender").text
    assert token_server.requests == []  # the code was never traded
    with app.app_context():
        assert get_settings(seed["partition_id"]).oauth2_refresh_token_enc is None
    # The pending authorization is spent: the right state afterwards is refused too.
    again = admin_client.get(CALLBACK, query_string={"code": "code-1", "state": asked["state"]})
    assert back_in_the_window(again) and token_server.requests == []


def test_a_callback_without_authorize_is_refused(admin_client):
    assert back_in_the_window(admin_client.get(CALLBACK, query_string={"code": "c", "state": "s"}))
    assert "nothing was stored" in admin_client.get("/admin/mail-sender").text


def test_the_providers_refusal_is_shown(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "google")
    asked = press_authorize(admin_client)
    response = admin_client.get(CALLBACK, query_string={"state": asked["state"], "error": "access_denied",
                                                       "error_description": "The user said no"})
    assert back_in_the_window(response)
    page = admin_client.get("/admin/mail-sender").text
    assert "access_denied" in page and "The user said no" in page


def test_a_wrong_pkce_verifier_is_refused_by_the_token_server(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "google")
    asked = press_authorize(admin_client)
    token_server.codes["code-1"] = "a-challenge-of-another-verifier"
    response = admin_client.get(CALLBACK, query_string={"code": "code-1", "state": asked["state"]})
    assert back_in_the_window(response)
    assert "PKCE verification failed" in admin_client.get("/admin/mail-sender").text
    with app.app_context():
        assert get_settings(seed["partition_id"]).oauth2_refresh_token_enc is None


def test_agents_cannot_authorize(agent_client):
    token = csrf_from(agent_client.get("/preferences").text)
    assert agent_client.post(AUTHORIZE, data={"csrf_token": token}).status_code == 403
    assert agent_client.get(CALLBACK, query_string={"state": "s", "code": "c"}).status_code == 403


def test_save_and_authorize_sends_a_url_with_other_characters_percent_encoded(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "other")
    with app.app_context():
        assert update_settings(seed["partition_id"], {
            "oauth2_authorization_url": "https://login.example.test/授权"}, "test").ok
        db.session.commit()
    token = csrf_from(admin_client.get("/admin/mail-sender").text)
    response = admin_client.post(AUTHORIZE, data={"csrf_token": token}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    # A header is Latin-1: the server could not write the raw characters, and would answer 500.
    target = response.headers["HX-Redirect"]
    assert target.isascii() and target.startswith("https://login.example.test/%E6%8E%88%E6%9D%83?")


def test_a_state_with_other_characters_is_refused_in_words(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "google")
    press_authorize(admin_client)
    assert back_in_the_window(admin_client.get(CALLBACK, query_string={"code": "c", "state": "é"}))


def test_a_long_refusal_from_the_provider_is_cut_short(app, seed, admin_client, token_server):
    save_authorization_code_grant(app, seed, token_server, "google")
    asked = press_authorize(admin_client)
    response = admin_client.get(CALLBACK, query_string={"state": asked["state"], "error": "access_denied",
                                                       "error_description": secrets.token_urlsafe(4500)})
    assert back_in_the_window(response)
    # The note travels in the session cookie, which a browser drops above about 4 KB.
    assert len(response.headers["Set-Cookie"]) < 4000
