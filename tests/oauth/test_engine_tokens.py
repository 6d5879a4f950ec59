"""access_token(partition_id), what the engine calls for XOAUTH2: cached per partition and
settings version until shortly before expiry; rotated refresh tokens stored again."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from scheduler import oauth
from scheduler.smtp.pipeline import session_answer
from scheduler.smtp.session import SmtpConfig, open_session
from tests.oauth.token_server import TokenServer
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import AuditEvent
from webapp.core.security import decrypt_secret
from webapp.core.settings.store import get_settings, update_settings

USER = "relay@acme.test"


@pytest.fixture(autouse=True)
def empty_cache():
    oauth.forget_cached_tokens()
    yield
    oauth.forget_cached_tokens()


def save(app, seed, **fields):
    with app.app_context():
        result = update_settings(seed["partition_id"], fields, "test")
        assert result.ok, result.errors
        db.session.commit()


def client_credentials(token_server) -> dict:
    return dict(smtp_host="127.0.0.1", smtp_username=USER, oauth2_enabled=True, oauth2_provider="microsoft",
                oauth2_grant="client_credentials", oauth2_token_url=token_server.url, oauth2_client_id="client-1",
                oauth2_client_secret="client-secret-1")


def test_a_token_is_reused_until_a_saved_change(app, seed):
    with TokenServer(access_token="access-1") as tokens:
        save(app, seed, **client_credentials(tokens))
        with app.app_context():
            first = oauth.access_token(seed["partition_id"])
            second = oauth.access_token(seed["partition_id"])
        assert first == second == "access-1"
        assert tokens.grants() == ["client_credentials"]
        save(app, seed, smtp_timeout_seconds=30)  # a new settings version
        with app.app_context():
            oauth.access_token(seed["partition_id"])
        assert tokens.grants() == ["client_credentials"] * 2


def test_a_token_without_a_lifetime_is_not_reused(app, seed):
    with TokenServer() as tokens:
        tokens.expires_in = None
        save(app, seed, **client_credentials(tokens))
        with app.app_context():
            oauth.access_token(seed["partition_id"])
            oauth.access_token(seed["partition_id"])
    assert len(tokens.requests) == 2


def test_fresh_until_is_shortly_before_expiry():
    assert oauth.Token("a", 3600, fetched_at=1000).fresh_until == 1000 + 3600 - 60
    assert oauth.Token("a", 30, fetched_at=0).fresh_until == 27  # a tenth of a short life


def test_a_rotated_refresh_token_is_stored_again_and_audited(app, seed):
    with TokenServer(access_token="access-9") as tokens:
        tokens.refresh_tokens["refresh-1"] = "refresh-2"
        save(app, seed, **{**client_credentials(tokens), "oauth2_provider": "google",
                           "oauth2_grant": "authorization_code",
                           "oauth2_authorization_url": "https://accounts.example.test/auth"})
        with app.app_context():
            oauth.store_refresh_token(seed["partition_id"], "refresh-1")
            db.session.commit()
            version = get_settings(seed["partition_id"]).version
            assert oauth.access_token(seed["partition_id"]) == "access-9"
        with app.app_context():
            saved = get_settings(seed["partition_id"])
            assert decrypt_secret(saved.oauth2_refresh_token_enc) == "refresh-2"
            assert saved.version == version  # no edit of the form: nobody's Save conflicts
            actions = db.session.scalars(select(AuditEvent.action)).all()
            assert oauth.AUDIT_ROTATED in actions


def test_a_refusal_reaches_the_engine_with_the_servers_words(app, seed):
    with TokenServer(refusal=(401, {"error": "invalid_client", "error_description": "secret expired"})) as tokens:
        save(app, seed, **client_credentials(tokens))
        with app.app_context(), pytest.raises(oauth.OAuthTokenUnavailable, match="invalid_client: secret expired"):
            oauth.access_token(seed["partition_id"])


def test_the_engine_logs_in_with_xoauth2_using_the_fetched_token(app, seed):
    with TokenServer(access_token="access-42") as tokens, SmtpServer(xoauth2_tokens={USER: "access-42"}) as server:
        save(app, seed, **{**client_credentials(tokens), "smtp_port": server.port})

        with app.app_context():
            config = SmtpConfig.from_settings(get_settings(seed["partition_id"]), app.config)
            db.session.remove()

        async def token():
            # As the node's token source does: its own app context, its session removed after.
            with app.app_context():
                try:
                    return oauth.access_token(seed["partition_id"])
                finally:
                    db.session.remove()

        async def log_in():
            smtp, steps = await open_session(config, token)
            smtp.close()
            return steps

        with ThreadPoolExecutor(max_workers=1) as worker:  # a loop of its own, whatever runs in this thread
            steps = worker.submit(asyncio.run, log_in()).result()
    assert steps[-1].stage == "auth" and steps[-1].ok and steps[-1].code == 235


def test_a_token_request_waits_the_instances_token_timeout_not_the_smtp_server_timeout(app, seed):
    app.config["MAILSENDER_OAUTH_TIMEOUT"] = 60
    with TokenServer(access_token="slow-1", delay=1.5) as tokens:
        save(app, seed, smtp_timeout_seconds=1, **client_credentials(tokens))
        with app.app_context():
            assert oauth.access_token(seed["partition_id"]) == "slow-1"


def test_a_token_server_slower_than_the_token_timeout_is_named_as_the_reason(app, seed):
    app.config["MAILSENDER_OAUTH_TIMEOUT"] = 0.3
    with TokenServer(delay=1.5) as tokens:
        save(app, seed, smtp_timeout_seconds=600, **client_credentials(tokens))
        with app.app_context(), pytest.raises(oauth.OAuthTokenUnavailable, match="did not answer in time"):
            oauth.access_token(seed["partition_id"])


@pytest.mark.parametrize("refusal, passing", [
    ((400, {"error": "invalid_grant", "error_description": "the grant was revoked"}), False),
    ((401, {"error": "invalid_client", "error_description": "secret expired"}), False),
    ((503, {"error": "temporarily_unavailable"}), True),
])
def test_a_refused_grant_is_the_settings_fault_and_a_token_server_away_is_for_a_retry(app, seed, refusal, passing):
    # The engine pauses the route for the first (a configuration fault), and retries the second.
    with TokenServer(refusal=refusal) as tokens:
        save(app, seed, **client_credentials(tokens))
        with app.app_context(), pytest.raises(oauth.OAuthTokenUnavailable) as raised:
            oauth.access_token(seed["partition_id"])
    assert raised.value.passing is passing


def test_a_token_server_that_does_not_answer_in_time_is_for_a_retry(app, seed):
    app.config["MAILSENDER_OAUTH_TIMEOUT"] = 0.3
    with TokenServer(delay=1.5) as tokens:
        save(app, seed, smtp_timeout_seconds=600, **client_credentials(tokens))
        with app.app_context(), pytest.raises(oauth.OAuthTokenUnavailable) as raised:
            oauth.access_token(seed["partition_id"])
    assert raised.value.passing


@pytest.mark.parametrize("passing, kind", [(False, "configuration"), (True, "transient")])
def test_a_token_failure_is_classed_by_whether_it_may_pass(passing, kind):
    async def token():
        raise oauth.OAuthTokenUnavailable("the token server refused: invalid_grant", passing)

    with SmtpServer(xoauth2_tokens={USER: "x"}) as server:
        config = SmtpConfig(host=server.host, port=server.port, idle_seconds=1, command_timeout=5, auth=True,
                            oauth2=True, username=USER)
        with pytest.raises(Exception) as raised:
            asyncio.run(open_session(config, token))
    assert session_answer(raised.value).kind == kind
