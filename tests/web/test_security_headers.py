"""Headers on every response: the Content-Security-Policy, nosniff, no-store where a new token is
shown, and Secure cookies when the instance says it is served over TLS."""
import pytest

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, csrf_from, login
from webapp import create_app
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import ORIGINATION, SENT


def _policy(response) -> dict:
    directives = (part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    return {name: value for name, value in directives}


@pytest.fixture
def raw_copy_url(app, seed):
    with app.app_context():
        message = OutgoingMessage(partition_id=seed["partition_id"], kind=ORIGINATION, user_id=seed["agent_id"],
                                  message_id="<sent@acme.test>", status=SENT)
        message.rendered = b"From: support@acme.test\r\n\r\n<script>alert(1)</script>"
        db.session.add(message)
        db.session.commit()
        return f"/outbox/{message.id}/raw"


def test_every_answer_carries_the_policy_and_nosniff(client, seed, raw_copy_url):
    login(client, "agent", AGENT_PASSWORD)
    for path in ("/login", "/compose", "/api/v1/me", "/static/app.css", "/no-such-page", raw_copy_url):
        response = client.get(path)
        policy = _policy(response)
        assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'", path
        assert "unsafe-inline" not in str(policy) and "unsafe-eval" not in str(policy), path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["X-Frame-Options"] == "DENY", path


def test_the_raw_copy_is_plain_text_never_sniffed(agent_client, raw_copy_url):
    response = agent_client.get(raw_copy_url)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_new_token_is_never_stored_by_a_cache(client, seed):
    answer = client.post("/api/v1/tokens", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert answer.status_code == 201 and answer.headers["Cache-Control"] == "no-store"
    login(client, "agent", AGENT_PASSWORD)
    csrf = csrf_from(client.get("/account").text)
    fragment = client.post("/account/tokens", headers={"HX-Request": "true", "X-CSRFToken": csrf})
    assert fragment.status_code == 200 and 'id="new-token"' in fragment.text
    assert fragment.headers["Cache-Control"] == "no-store"


def test_by_default_plain_http_works_with_the_headers_and_cookies_are_not_secure(client, seed):
    page = client.get("/login")
    assert page.status_code == 200 and _policy(page)["default-src"] == "'self'"
    response = login(client, "agent", AGENT_PASSWORD)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" not in cookie
    assert "Strict-Transport-Security" not in response.headers


@pytest.fixture
def https_app(app_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MAILSENDER_INSTANCE", str(tmp_path / "instance"))
    monkeypatch.setenv("MAILSENDER_HTTPS", "1")
    app = create_app(app_config)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_served_over_tls_cookies_are_secure_and_plain_http_is_sent_to_https(https_app):
    client = https_app.test_client()
    redirected = client.get("/login")
    assert redirected.status_code == 302 and redirected.headers["Location"].startswith("https://")
    page = client.get("/login", base_url="https://localhost")
    assert page.status_code == 200
    assert "Secure" in page.headers["Set-Cookie"] and "HttpOnly" in page.headers["Set-Cookie"]
    assert page.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "includeSubDomains" not in page.headers["Strict-Transport-Security"]
    assert https_app.config["REMEMBER_COOKIE_SECURE"] is True
