"""MAILSENDER_PROXY_HOPS: behind that many reverse proxies, the client's address, scheme and host
are the forwarded ones (the login throttle counts the clients, external URLs are the public
https ones); with none, the default, X-Forwarded-* headers are ignored, as anyone may send them."""
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, csrf_from, login
from tests.oauth.token_server import TokenServer
from webapp import create_app
from webapp.core.database import db
from webapp.core.models import LoginFailure
from webapp.core.settings.store import update_settings

LIMIT = 10
PROXY = "10.0.0.5"
PUBLIC_HOST = "mail.acme.test"


@pytest.fixture
def proxy_hops():
    return 0


@pytest.fixture
def app(app_config, tmp_path, monkeypatch, proxy_hops):
    monkeypatch.setenv("MAILSENDER_INSTANCE", str(tmp_path / "instance"))
    monkeypatch.setenv("MAILSENDER_PROXY_HOPS", str(proxy_hops))
    app = create_app(app_config)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def through_proxy(client, client_address: str, proto: str = "https") -> None:
    """Every request of `client` from here on arrives from the proxy, forwarded for `client_address`.
    A browser names the page a form came from: over https, CSRF protection checks it is this site."""
    client.environ_base.update(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=client_address,
                               HTTP_X_FORWARDED_PROTO=proto, HTTP_X_FORWARDED_HOST=PUBLIC_HOST,
                               HTTP_REFERER=f"{proto}://{PUBLIC_HOST}/login")


def attempt(client, username: str, password: str):
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": csrf_from(page.text)})


def recorded_addresses(app) -> set[str]:
    with app.app_context():
        return set(db.session.scalars(select(LoginFailure.address)))


@pytest.mark.databases
@pytest.mark.parametrize("proxy_hops", [1])
def test_behind_one_proxy_the_throttle_counts_the_forwarded_client(app, client, seed, product_clock):
    through_proxy(client, "203.0.113.7")
    for number in range(LIMIT):
        assert attempt(client, f"guess{number}", "wrong").status_code == 401
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 429
    assert recorded_addresses(app) == {"203.0.113.7"}
    # Another client behind the same proxy is not throttled with it.
    through_proxy(client, "203.0.113.8")
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 302


@pytest.mark.databases
def test_with_no_proxy_hops_a_forwarded_address_is_ignored(app, client, seed, product_clock):
    for number in range(LIMIT):
        through_proxy(client, f"198.51.100.{number}")  # a client that makes up a new address each time
        assert attempt(client, f"guess{number}", "wrong").status_code == 401
    through_proxy(client, "198.51.100.99")
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 429
    assert recorded_addresses(app) == {PROXY}


@pytest.mark.parametrize(("proxy_hops", "callback"), [
    (1, f"https://{PUBLIC_HOST}/admin/mail-sender/oauth2/callback"),
    (0, "http://localhost/admin/mail-sender/oauth2/callback"),
])
def test_the_oauth2_redirect_uri_is_the_public_https_one_behind_the_proxy(app, client, seed, callback):
    with TokenServer() as token_server:
        with app.app_context():
            result = update_settings(seed["partition_id"], {
                "smtp_host": "127.0.0.1", "smtp_username": "relay@acme.test", "oauth2_enabled": True,
                "oauth2_provider": "google", "oauth2_grant": "authorization_code",
                "oauth2_authorization_url": "https://login.example.test/authorize",
                "oauth2_token_url": token_server.url, "oauth2_client_id": "client-1",
                "oauth2_client_secret": "client-secret-1"}, "test")
            assert result.ok, result.errors
            db.session.commit()
        through_proxy(client, "203.0.113.7")
        assert login(client, "admin", ADMIN_PASSWORD).status_code == 302
        token = csrf_from(client.get("/admin/mail-sender").text)
        response = client.post("/admin/mail-sender/oauth2/authorize", data={"csrf_token": token})
    assert response.status_code == 302, response.text
    asked = parse_qs(urlsplit(response.headers["Location"]).query)
    assert asked["redirect_uri"] == [callback]


@pytest.mark.parametrize("proxy_hops", [1])
def test_over_https_plain_http_at_the_proxy_is_sent_to_the_public_https_address(app_config, tmp_path,
                                                                                 monkeypatch, proxy_hops):
    monkeypatch.setenv("MAILSENDER_INSTANCE", str(tmp_path / "instance"))
    monkeypatch.setenv("MAILSENDER_PROXY_HOPS", str(proxy_hops))
    monkeypatch.setenv("MAILSENDER_HTTPS", "1")
    https_app = create_app(app_config)
    client = https_app.test_client()
    through_proxy(client, "203.0.113.7", proto="http")
    redirected = client.get("/login")
    assert redirected.status_code == 302 and redirected.headers["Location"] == f"https://{PUBLIC_HOST}/login"
    through_proxy(client, "203.0.113.7", proto="https")
    page = client.get("/login")
    assert page.status_code == 200 and "Strict-Transport-Security" in page.headers
    with https_app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("proxy_hops", [1])
def test_a_path_prefix_the_proxy_forwards_leads_every_link(client, seed):
    through_proxy(client, "203.0.113.7")
    client.environ_base["HTTP_X_FORWARDED_PREFIX"] = "/mail"
    assert urlsplit(client.get("/").headers["Location"]).path == "/mail/login"
    page = client.get("/login").text
    assert 'href="/mail/static/' in page and 'href="/static/' not in page
