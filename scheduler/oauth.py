"""OAuth2 access tokens for XOAUTH2, through Authlib.

Three grants:
- client credentials (Microsoft 365 app-only, or any other provider), with the provider's scope;
- authorization code with PKCE: an administrator consents once (Authorize), the refresh token
  is stored encrypted, and each access token is fetched with it (a rotated one is stored again);
- Google service account: a JWT bearer grant signed with the key (RS256), the SMTP user as
  subject and https://mail.google.com/ as scope.

Token requests go only to https URLs (http only on loopback), follow no redirects, use no proxy
from the environment, and never connect to link-local or cloud-metadata addresses (checked on
the address actually connected to). A refusal from the token server is raised as
OAuthTokenUnavailable with the server's own error text.

`access_token(partition_id)` is what the engine calls; it caches a token per partition and
settings version until shortly before it expires. fetch_token() always fetches afresh (the
Test button) and touches no database.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import AssertionSession, OAuth2Session
from flask import current_app
from joserfc.jwk import RSAKey
from sqlalchemy import update

from webapp.core import audit, outbound
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import MailSenderSettings, User
from webapp.core.security import Scrubber, decrypt_secret, encrypt_secret
from webapp.core.settings.store import get_settings

from .checked_http import PeerCheckedAdapter

MICROSOFT, GOOGLE, OTHER = "microsoft", "google", "other"
CLIENT_CREDENTIALS, AUTHORIZATION_CODE, SERVICE_ACCOUNT = "client_credentials", "authorization_code", "service_account"

MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
MICROSOFT_DELEGATED_SCOPE = "offline_access https://outlook.office.com/SMTP.Send"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"

# What choosing a provider fills into the form. Microsoft's "common" tenant suits the
# authorization code grant; app-only tokens need the tenant's ID in its place.
PROVIDER_ENDPOINTS = {
    MICROSOFT: {"oauth2_authorization_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
                "oauth2_token_url": "https://login.microsoftonline.com/common/oauth2/v2.0/token"},
    GOOGLE: {"oauth2_authorization_url": "https://accounts.google.com/o/oauth2/v2/auth",
             "oauth2_token_url": "https://oauth2.googleapis.com/token"},
}

# A cached token is used until this long before it expires (or a tenth of its life, if shorter).
EXPIRY_MARGIN_SECONDS = 60.0
AUDIT_AUTHORIZED = "mailsender.oauth2_authorized"
AUDIT_ROTATED = "mailsender.oauth2_refresh_token_rotated"


class OAuthTokenUnavailable(Exception):
    """No access token can be had; the message says why (shown as the delivery's reason).
    `passing`: the token server could not be reached or failed on its side (a timeout, a
    refused connection, a 5xx), which a later try may mend, where a refusal of the grant or
    settings that cannot work will not."""

    def __init__(self, message: str, passing: bool = False):
        super().__init__(message)
        self.passing = passing


def _passing(error: BaseException) -> bool:
    if isinstance(error, requests.Timeout | requests.ConnectionError):
        return True
    return isinstance(error, requests.HTTPError) and error.response is not None and error.response.status_code >= 500


@dataclass(frozen=True)
class OAuthConfig:
    """How to get tokens for one partition: a snapshot of its (saved or typed) settings."""

    provider: str
    grant: str
    token_url: str
    client_id: str
    authorization_url: str = ""
    username: str = ""  # the SMTP user: the service account's subject
    client_secret: str | None = field(default=None, repr=False)
    service_account_key: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    timeout: float = field(kw_only=True)  # each token request's: token_timeout()

    @classmethod
    def from_values(cls, values, secrets: dict, refresh_token: str | None, timeout: float) -> "OAuthConfig":
        """From parameters keyed by API name and the plain secrets {name: value or None}."""
        return cls(
            provider=values["oauth2_provider"] or OTHER,
            grant=values["oauth2_grant"] or "",
            token_url=values["oauth2_token_url"] or "",
            client_id=values["oauth2_client_id"] or "",
            authorization_url=values["oauth2_authorization_url"] or "",
            username=values["smtp_username"] or "",
            client_secret=secrets.get("oauth2_client_secret"),
            service_account_key=secrets.get("oauth2_service_account_key"),
            refresh_token=refresh_token,
            timeout=timeout,
        )

    @classmethod
    def from_settings(cls, settings: MailSenderSettings) -> "OAuthConfig":
        values = {name: getattr(settings, name) for name in (
            "oauth2_provider", "oauth2_grant", "oauth2_token_url", "oauth2_client_id",
            "oauth2_authorization_url", "smtp_username")}
        secrets = {"oauth2_client_secret": decrypt_secret(settings.oauth2_client_secret_enc),
                   "oauth2_service_account_key": decrypt_secret(settings.oauth2_service_account_key_enc)}
        return cls.from_values(values, secrets, decrypt_secret(settings.oauth2_refresh_token_enc), token_timeout())

    @property
    def scope(self) -> str | None:
        return scope_for(self.provider, self.grant)

    @property
    def secrets(self) -> list[str]:
        """Every secret value of this configuration, for scrubbing them out of any text."""
        # A service-account key's private key is the Scrubber's to find.
        return [value for value in (self.client_secret, self.refresh_token, self.service_account_key) if value]


@dataclass(frozen=True)
class Token:
    """An access token as the token server issued it."""

    access_token: str = field(repr=False)
    expires_in: float | None
    refresh_token: str | None = field(default=None, repr=False)  # as returned: a new one means rotation
    fetched_at: float = field(default_factory=time.time)

    @property
    def fresh_until(self) -> float:
        """Until when the token may be reused: shortly before it expires."""
        if not self.expires_in:
            return self.fetched_at  # no lifetime given: fetch again next time
        return self.fetched_at + self.expires_in - min(EXPIRY_MARGIN_SECONDS, self.expires_in / 10)


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the administrator, and what the callback must find again."""

    url: str
    state: str
    code_verifier: str = field(repr=False)


def token_timeout() -> float:
    """Each token request's timeout (MAILSENDER_OAUTH_TIMEOUT), for the senders and the Test button."""
    return float(current_app.config["MAILSENDER_OAUTH_TIMEOUT"])


def scope_for(provider: str, grant: str) -> str | None:
    """The scope each provider wants for SMTP with that grant (none for "other": its default)."""
    if grant == SERVICE_ACCOUNT:
        return GOOGLE_MAIL_SCOPE
    if provider == MICROSOFT:
        return MICROSOFT_APP_SCOPE if grant == CLIENT_CREDENTIALS else MICROSOFT_DELEGATED_SCOPE
    if provider == GOOGLE:
        return GOOGLE_MAIL_SCOPE
    return None


# --- fetching ---------------------------------------------------------------------------


def fetch_token(config: OAuthConfig) -> Token:
    """A fresh access token for the configured grant; OAuthTokenUnavailable says why not.

    Touches no database: a rotated refresh token comes back in Token.refresh_token for the
    caller to store.
    """
    _check_url(config.token_url, "Token URL")
    if not config.client_id and config.grant != SERVICE_ACCOUNT:
        raise OAuthTokenUnavailable("no Client ID is set")
    try:
        if config.grant == CLIENT_CREDENTIALS:
            with _client_session(config) as session:
                issued = session.fetch_token(config.token_url, grant_type="client_credentials",
                                             timeout=config.timeout)
        elif config.grant == AUTHORIZATION_CODE:
            if not config.refresh_token:
                raise OAuthTokenUnavailable("not authorized yet: an administrator must press Authorize and consent")
            with _client_session(config) as session:
                issued = session.refresh_token(config.token_url, refresh_token=config.refresh_token,
                                               timeout=config.timeout)
        elif config.grant == SERVICE_ACCOUNT:
            issued = _service_account_token(config)
        else:
            raise OAuthTokenUnavailable(f"unknown OAuth2 grant {config.grant!r}")
    except OAuthTokenUnavailable:
        raise
    except Exception as error:  # Authlib, requests and urllib3 each raise their own kinds
        raise OAuthTokenUnavailable(_scrub(describe_token_error(error), config), _passing(error)) from None
    access = issued.get("access_token")
    if not access or not isinstance(access, str):
        raise OAuthTokenUnavailable("the token server answered without an access_token")
    expires_in = issued.get("expires_in")
    try:
        expires_in = float(expires_in) if expires_in is not None else None
    except (TypeError, ValueError):
        expires_in = None
    refresh = issued.get("refresh_token") if config.grant == AUTHORIZATION_CODE else None
    return Token(access, expires_in, refresh if isinstance(refresh, str) and refresh else None)


def _service_account_token(config: OAuthConfig) -> dict:
    try:
        key = json.loads(config.service_account_key or "")
        private_key, client_email = key["private_key"], key["client_email"]
    except (ValueError, KeyError, TypeError):
        raise OAuthTokenUnavailable("the Service Account Key is not a JSON key with private_key and client_email") from None
    if not config.username:
        raise OAuthTokenUnavailable("the service account grant needs the SMTP user (the mailbox it acts for)")
    try:
        signing_key = RSAKey.import_key(private_key)
    except Exception:  # joserfc and cryptography raise several kinds for a bad PEM
        raise OAuthTokenUnavailable("the Service Account Key's private_key is not an RSA private key") from None
    header = {"alg": "RS256", "typ": "JWT"}
    if key.get("private_key_id"):
        header["kid"] = key["private_key_id"]
    # Google reads the scope from the signed claims, not from the form.
    session = AssertionSession(
        token_endpoint=config.token_url, issuer=client_email, subject=config.username,
        audience=config.token_url, claims={"scope": config.scope}, key=signing_key, header=header,
        default_timeout=config.timeout,
    )
    with _secured(session):
        return session.refresh_token()


def describe_token_error(error: BaseException) -> str:
    """The token server's refusal as it said it (error: error_description), or what went wrong."""
    if isinstance(error, outbound.OutboundRefused | _RedirectRefused):
        return str(error)
    if getattr(error, "error", None) and not isinstance(error, requests.RequestException):
        text = f"the token server refused: {error.error}"
        description = getattr(error, "description", "") or ""
        return f"{text}: {description}" if description else text
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"the token server answered HTTP {error.response.status_code} {error.response.reason or ''}".rstrip()
    if isinstance(error, requests.Timeout):
        return "the token server did not answer in time"
    if isinstance(error, requests.ConnectionError):
        return f"the token server could not be reached: {_root_cause(error)}"
    if isinstance(error, requests.RequestException):
        return f"the token request failed: {_root_cause(error)}"
    text = str(error) or type(error).__name__
    return f"the token request failed: {text[:300]}"


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
        if isinstance(error, outbound.OutboundRefused):
            return str(error)
    text = str(error) or type(error).__name__
    return text[:300]


def _scrub(text: str, config: OAuthConfig) -> str:
    return Scrubber(config.secrets)(text)


def _check_url(url: str, label: str) -> None:
    if not url:
        raise OAuthTokenUnavailable(f"no {label} is set")
    reason = outbound.oauth_url_reason(url)
    if reason:
        raise OAuthTokenUnavailable(f"the {label} {reason}")


# --- the authorization code grant ------------------------------------------------------------


def authorization_request(config: OAuthConfig, redirect_uri: str) -> AuthorizationRequest:
    """The Authorization URL with PKCE (S256), a fresh state and offline access."""
    _check_url(config.authorization_url, "Authorization URL")
    if not config.client_id:
        raise OAuthTokenUnavailable("no Client ID is set")
    verifier = generate_token(64)
    extra = {"access_type": "offline", "prompt": "consent"} if config.provider == GOOGLE else {}
    session = OAuth2Session(config.client_id, scope=config.scope, redirect_uri=redirect_uri,
                            code_challenge_method="S256")
    with session:
        url, state = session.create_authorization_url(config.authorization_url, code_verifier=verifier, **extra)
    return AuthorizationRequest(url, state, verifier)


def exchange_code(config: OAuthConfig, code: str, redirect_uri: str, code_verifier: str) -> Token:
    """Trades the callback's code for tokens; the answer must carry a refresh token."""
    _check_url(config.token_url, "Token URL")
    try:
        with _client_session(config, redirect_uri=redirect_uri) as session:
            issued = session.fetch_token(config.token_url, grant_type="authorization_code", code=code,
                                         code_verifier=code_verifier, timeout=config.timeout)
    except Exception as error:
        raise OAuthTokenUnavailable(_scrub(describe_token_error(error), config)) from None
    refresh = issued.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise OAuthTokenUnavailable("the token server sent no refresh token: offline access was not granted")
    expires_in = issued.get("expires_in")
    return Token(str(issued.get("access_token") or ""), float(expires_in) if isinstance(expires_in, int | float) else None,
                 refresh)


def complete_authorization(partition_id: int, code: str, redirect_uri: str, code_verifier: str,
                           authorized_by: User) -> None:
    """Trades the callback's code (saved settings) and stores the refresh token with who and when.

    The caller has checked `state` and commits.
    """
    config = OAuthConfig.from_settings(get_settings(partition_id))
    db.session.commit()  # hold no transaction (on SQLite: the write lock) while the token server answers
    token = exchange_code(config, code, redirect_uri, code_verifier)
    store_refresh_token(partition_id, token.refresh_token, authorized_by=authorized_by)


def store_refresh_token(partition_id: int, refresh_token: str, authorized_by: User | None = None) -> None:
    """Stores a refresh token encrypted: a new authorization (who and when), or a rotation.

    Leaves the settings' version alone: this is no edit of the form. The caller commits.
    """
    values = {"oauth2_refresh_token_enc": encrypt_secret(refresh_token)}
    if authorized_by is not None:
        values.update(oauth2_authorized_by=authorized_by.username, oauth2_authorized_at=utcnow())
    db.session.execute(update(MailSenderSettings).where(MailSenderSettings.partition_id == partition_id)
                       .values(**values).execution_options(synchronize_session="fetch"))
    if authorized_by is not None:
        audit.record(authorized_by, AUDIT_AUTHORIZED, partition_id=partition_id)
    else:
        audit.record("oauth2", AUDIT_ROTATED, partition_id=partition_id)


# --- the engine's entry point ---------------------------------------------------------------

_cache: dict[tuple, Token] = {}
_cache_lock = threading.Lock()


def access_token(partition_id: int) -> str:
    """An access token for the partition's SMTP user. Needs an app context; may block (HTTP).

    Reuses a cached token until shortly before it expires; the cache is per partition and
    settings version (and authorization), so a saved change fetches a new one.
    """
    settings = get_settings(partition_id)
    if not settings.oauth2_enabled:
        raise OAuthTokenUnavailable("Use OAuth2 SMTP is off")
    key = (partition_id, settings.version, settings.oauth2_authorized_at)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and time.time() < cached.fresh_until:
        return cached.access_token
    config = OAuthConfig.from_settings(settings)
    db.session.commit()  # hold no transaction (on SQLite: the write lock) while the token server answers
    token = fetch_token(config)
    if token.refresh_token and token.refresh_token != config.refresh_token:
        store_refresh_token(partition_id, token.refresh_token)
        db.session.commit()
    with _cache_lock:
        for old in [k for k in _cache if k[0] == partition_id]:
            del _cache[old]
        _cache[key] = token
    return token.access_token


def forget_cached_tokens() -> None:
    """Drops every cached token (tests; and a key rotation would want it)."""
    with _cache_lock:
        _cache.clear()


# --- HTTP that goes only where it may ---------------------------------------------------


class _RedirectRefused(Exception):
    pass


def _refuse_redirect(response, *args, **kwargs):
    if response.is_redirect or 300 <= response.status_code < 400:
        raise _RedirectRefused(f"the token server answered HTTP {response.status_code} (a redirect to "
                               f"{response.headers.get('Location', 'nowhere')}); token requests follow no redirects")
    return response


def _secured(session: requests.Session) -> requests.Session:
    session.trust_env = False  # no proxy: the address checked must be the address reached
    session.max_redirects = 0
    session.hooks["response"].append(_refuse_redirect)
    adapter = PeerCheckedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _client_session(config: OAuthConfig, redirect_uri: str | None = None) -> OAuth2Session:
    session = OAuth2Session(
        config.client_id, config.client_secret, scope=config.scope, redirect_uri=redirect_uri,
        token_endpoint_auth_method="client_secret_post" if config.client_secret else "none",
        code_challenge_method="S256",
    )
    return _secured(session)
