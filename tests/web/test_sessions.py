"""Sessions and login: logging out ends the session server-side, idleness ends it, a password
change revokes the user's API tokens, and every login costs one argon2 verification."""
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, api_token, csrf_from, login
from webapp.core.database import db
from webapp.core.directory.users import authenticate
from webapp.core.models import AuditEvent


def _copy_of_session(app, client):
    """Another browser holding a copy of `client`'s session cookie."""
    copy = app.test_client()
    copy.set_cookie("session", client.get_cookie("session").value)
    return copy


def _events(app, action):
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# --- logging out --------------------------------------------------------------------------


@pytest.mark.databases
def test_after_logout_a_copied_cookie_opens_nothing_and_the_other_browsers_go_on(app, agent_client):
    copied = _copy_of_session(app, agent_client)
    elsewhere = app.test_client()
    login(elsewhere, "agent", AGENT_PASSWORD)
    assert copied.get("/compose").status_code == 200

    page = agent_client.get("/compose")
    assert agent_client.post("/logout", data={"csrf_token": csrf_from(page.text)}).status_code == 302

    response = copied.get("/compose")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert elsewhere.get("/compose").status_code == 200


def test_logging_in_again_ends_the_session_the_browser_had(app, agent_client):
    copied = _copy_of_session(app, agent_client)
    assert login(agent_client, "admin", ADMIN_PASSWORD).status_code == 302
    assert copied.get("/compose").status_code == 302
    assert agent_client.get("/admin/mail-sender").status_code == 200


# --- idleness -----------------------------------------------------------------------------


def test_a_session_idle_for_twelve_hours_has_ended_and_each_request_renews_it(client, seed, product_clock):
    assert login(client, "agent", AGENT_PASSWORD).status_code == 302
    product_clock.move(hours=11)
    assert client.get("/compose").status_code == 200
    product_clock.move(hours=11)  # 22 hours since the login, 11 since the last request
    assert client.get("/compose").status_code == 200
    product_clock.move(hours=12, seconds=1)
    response = client.get("/compose")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_the_idle_limit_is_the_instance_configurations(app, client, seed, product_clock):
    app.config["MAILSENDER_SESSION_IDLE_MINUTES"] = 30
    assert login(client, "agent", AGENT_PASSWORD).status_code == 302
    product_clock.move(minutes=29)
    assert client.get("/compose").status_code == 200
    product_clock.move(minutes=30, seconds=1)
    assert client.get("/compose").status_code == 302
    assert login(client, "agent", AGENT_PASSWORD).status_code == 302
    assert client.get("/compose").status_code == 200


# --- a password change revokes the API tokens ---------------------------------------------


def test_changing_ones_own_password_revokes_ones_api_tokens(app, agent_client):
    headers = api_token(app.test_client(), "agent", AGENT_PASSWORD)
    csrf = csrf_from(agent_client.get("/account").text)
    response = agent_client.post("/account/password", data={
        "current_password": AGENT_PASSWORD, "new_password": "changed-pass-1", "csrf_token": csrf})
    assert response.status_code == 200 and "API tokens are revoked" in response.text
    assert app.test_client().get("/api/v1/me", headers=headers).status_code == 401
    [event] = _events(app, "user.password_change")
    assert event.details == {"tokens_revoked": 1}


def test_an_administrators_reset_revokes_the_users_api_tokens_only(app, client, seed, admin_api):
    agent_headers = api_token(client, "agent", AGENT_PASSWORD)
    response = client.patch(f"/api/v1/users/{seed['agent_id']}", json={"password": "reset-pass-1"},
                            headers=admin_api)
    assert response.status_code == 200
    assert client.get("/api/v1/me", headers=agent_headers).status_code == 401
    assert client.get("/api/v1/me", headers=admin_api).status_code == 200
    [event] = _events(app, "user.password_reset")
    assert event.details == {"username": "agent", "tokens_revoked": 1}


# --- what a login costs -------------------------------------------------------------------


def _counted(calls: list, name: str):
    """PasswordHasher's method `name`, noting each call in `calls`."""
    original = getattr(PasswordHasher, name)

    def counted(self, *args, **kwargs):
        calls.append(name)
        return original(self, *args, **kwargs)

    return counted


def test_an_unknown_user_costs_one_argon2_verification_as_a_known_one_does(app, seed, monkeypatch):
    calls = []
    for name in ("hash", "verify"):
        monkeypatch.setattr(PasswordHasher, name, _counted(calls, name))
    with app.app_context():
        authenticate("nobody", "a guess")  # the first unknown username may make the stand-in hash
        for username, password in (("agent", "a guess"), ("agent", AGENT_PASSWORD), ("nobody", "a guess"),
                                   ("somebody-else", "a guess")):
            calls.clear()
            authenticate(username, password)
            assert calls == ["verify"], username
