"""OAuth2 grants against a real token endpoint on loopback: client credentials, refresh (with
rotation), Google's JWT bearer grant; refusals carry the server's words; the outbound rules."""
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from scheduler.oauth import GOOGLE_MAIL_SCOPE, MICROSOFT_APP_SCOPE, OAuthConfig, OAuthTokenUnavailable, fetch_token
from tests.oauth.token_server import TokenServer


def config(server: TokenServer, **fields) -> OAuthConfig:
    base = dict(provider="microsoft", grant="client_credentials", token_url=server.url, client_id="client-1",
                client_secret="client-secret-1", username="relay@acme.test", timeout=5)
    return OAuthConfig(**{**base, **fields})


def test_client_credentials_asks_microsoft_for_its_scope_and_gets_the_token():
    with TokenServer() as server:
        token = fetch_token(config(server))
    assert token.access_token == "access-token-1" and token.expires_in == 3600
    (posted,) = server.requests
    assert posted["grant_type"] == "client_credentials"
    assert posted["scope"] == MICROSOFT_APP_SCOPE
    assert posted["client_id"] == "client-1" and posted["client_secret"] == "client-secret-1"


def test_client_credentials_of_another_provider_sends_no_scope():
    with TokenServer() as server:
        fetch_token(config(server, provider="other"))
    assert "scope" not in server.requests[0]


def test_a_refusal_shows_the_token_servers_error_and_description():
    with TokenServer() as server:
        with pytest.raises(OAuthTokenUnavailable) as refused:
            fetch_token(config(server, client_secret="wrong-secret"))
    assert "invalid_client" in str(refused.value)
    assert "Client authentication failed." in str(refused.value)
    assert "wrong-secret" not in str(refused.value)


def test_refresh_gets_a_token_and_returns_a_rotated_refresh_token():
    with TokenServer() as server:
        server.refresh_tokens["refresh-old"] = "refresh-new"
        token = fetch_token(config(server, grant="authorization_code", refresh_token="refresh-old"))
        assert server.requests[0]["grant_type"] == "refresh_token"
        assert server.requests[0]["refresh_token"] == "refresh-old"
        assert token.access_token == "access-token-1"
        assert token.refresh_token == "refresh-new"
        # The old one is spent: only the rotated one works now.
        with pytest.raises(OAuthTokenUnavailable, match="invalid_grant"):
            fetch_token(config(server, grant="authorization_code", refresh_token="refresh-old"))
        # Not rotated this time: the same refresh token stays the one to keep.
        assert fetch_token(config(server, grant="authorization_code", refresh_token="refresh-new")).refresh_token \
            == "refresh-new"


def test_authorization_code_grant_without_consent_says_so_and_asks_nobody():
    with TokenServer() as server:
        with pytest.raises(OAuthTokenUnavailable, match="Authorize"):
            fetch_token(config(server, grant="authorization_code", refresh_token=None))
    assert server.requests == []


@pytest.fixture(scope="module")
def service_account():
    """A Google-style service account key (JSON) and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    key = {"type": "service_account", "client_email": "sender@project.iam.gserviceaccount.test",
           "private_key_id": "key-1", "private_key": pem}
    return json.dumps(key), RSAKey.import_key(public_pem)


def test_jwt_bearer_grant_is_signed_with_the_key_for_the_smtp_user_and_the_mail_scope(service_account):
    key_json, public_key = service_account
    with TokenServer(client_secret=None) as server:
        token = fetch_token(config(server, provider="google", grant="service_account", client_secret=None,
                                   client_id="", service_account_key=key_json))
    assert token.access_token == "access-token-1"
    (posted,) = server.requests
    assert posted["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    decoded = jwt.decode(posted["assertion"], public_key, algorithms=["RS256"])  # fails on a bad signature
    assert decoded.header["alg"] == "RS256" and decoded.header["kid"] == "key-1"
    claims = decoded.claims
    assert claims["sub"] == "relay@acme.test"
    assert claims["scope"] == GOOGLE_MAIL_SCOPE
    assert claims["iss"] == "sender@project.iam.gserviceaccount.test"
    assert claims["aud"] == server.url
    assert claims["exp"] > claims["iat"]


def test_a_jwt_signed_with_another_key_does_not_verify(service_account):
    key_json, _ = service_account
    other = RSAKey.generate_key(2048)
    with TokenServer(client_secret=None) as server:
        fetch_token(config(server, provider="google", grant="service_account", client_secret=None,
                           service_account_key=key_json))
    with pytest.raises(Exception):
        jwt.decode(server.requests[0]["assertion"], other, algorithms=["RS256"])


def test_token_requests_follow_no_redirect():
    with TokenServer(redirect_to="http://127.0.0.1:9/elsewhere") as target, TokenServer() as elsewhere:
        target.redirect_to = elsewhere.url
        with pytest.raises(OAuthTokenUnavailable, match="follow no redirects"):
            fetch_token(config(target))
    assert len(target.requests) == 1
    assert elsewhere.requests == []


@pytest.mark.parametrize("url", ["http://login.example.test/token", "ftp://127.0.0.1/token"])
def test_token_url_must_be_https_except_on_loopback(url):
    with pytest.raises(OAuthTokenUnavailable, match="https"):
        fetch_token(OAuthConfig(provider="other", grant="client_credentials", token_url=url, client_id="c",
                                client_secret="s", timeout=2))


@pytest.mark.parametrize("url", ["https://169.254.169.254/token", "https://[fd00:ec2::254]/token",
                                 "http://[::ffff:169.254.169.254]/token"])
def test_metadata_and_link_local_token_hosts_are_refused_before_any_request(url):
    with pytest.raises(OAuthTokenUnavailable, match="refused|https"):
        fetch_token(OAuthConfig(provider="other", grant="client_credentials", token_url=url, client_id="c",
                                client_secret="s", timeout=2))


def test_the_address_actually_connected_to_is_checked_before_the_request_is_sent(monkeypatch):
    """No link-local address can be served here, so the check is told the loopback peer it sees
    is a metadata address: the request must then never reach the server."""
    from webapp.core import outbound

    seen = []
    real_check = outbound.check_peer

    def as_if_metadata(host, peername):
        seen.append((host, peername[0]))
        return real_check(host, ("169.254.169.254", peername[1]))

    monkeypatch.setattr(outbound, "check_peer", as_if_metadata)
    with TokenServer() as server:
        with pytest.raises(OAuthTokenUnavailable, match="169.254.169.254"):
            fetch_token(config(server, token_url=server.url.replace("127.0.0.1", "localhost")))
    assert seen and seen[0][1] in ("127.0.0.1", "::1")
    assert server.requests == []


def test_an_unreachable_token_server_says_so():
    with TokenServer() as server:
        url = server.url
    with pytest.raises(OAuthTokenUnavailable, match="could not be reached"):
        fetch_token(OAuthConfig(provider="other", grant="client_credentials", token_url=url, client_id="c",
                                client_secret="s", timeout=30))
