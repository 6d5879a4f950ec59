"""/account: one's own password and API tokens."""
from __future__ import annotations

import re

from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, login
from tests.directory.conftest import Htmx
from webapp.core.database import db
from webapp.core.models import ApiToken


def _new_token(html: str) -> str:
    match = re.search(r'<code id="new-token">([^<]+)</code>', html)
    assert match, html
    return match.group(1)


def test_every_user_has_an_account_page(agent_client):
    page = agent_client.get("/account")
    assert page.status_code == 200
    assert 'id="password"' in page.text and 'id="tokens"' in page.text


def test_a_wrong_current_password_is_named_by_its_label(agent_client):
    htmx = Htmx(agent_client, "/account")
    response = htmx.post("/account/password", {"current_password": "wrong", "new_password": "short"})
    assert response.status_code == 422
    assert "<strong>Current password</strong>" in response.text and "<strong>New password</strong>" in response.text
    assert login(agent_client.application.test_client(), "agent", AGENT_PASSWORD).status_code == 302


def test_a_password_change_keeps_this_session_and_ends_the_others(app, agent_client):
    other = app.test_client()
    login(other, "agent", AGENT_PASSWORD)
    htmx = Htmx(agent_client, "/account")
    response = htmx.post("/account/password", {"current_password": AGENT_PASSWORD, "new_password": "changed-pass-1"})
    assert response.status_code == 200 and "Your password is changed" in response.text
    assert agent_client.get("/account").status_code == 200
    assert other.get("/account").status_code == 302
    assert login(app.test_client(), "agent", "changed-pass-1").status_code == 302


def test_a_token_is_shown_once_listed_by_prefix_and_revoked(app, agent_client):
    client = app.test_client()  # no session cookie: the token alone
    htmx = Htmx(agent_client, "/account")
    created = htmx.post("/account/tokens")
    assert created.status_code == 200
    token = _new_token(created.text)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).json["username"] == "agent"
    listed = agent_client.get("/account").text
    assert token not in listed and f"{token[:8]}…" in listed and "UTC" in listed
    with app.app_context():
        token_id = db.session.scalars(select(ApiToken.id)).one()
    revoked = htmx.post(f"/account/tokens/{token_id}/revoke")
    assert revoked.status_code == 200 and "revoked" in revoked.text
    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_a_user_cannot_revoke_someone_elses_token_in_the_window(app, seed, agent_client):
    client = app.test_client()  # no session cookie: the token alone
    admin_token = client.post("/api/v1/tokens", json={"username": "admin", "password": ADMIN_PASSWORD}).json["token"]
    with app.app_context():
        token_id = db.session.scalars(select(ApiToken.id)).one()
    response = Htmx(agent_client, "/account").post(f"/account/tokens/{token_id}/revoke")
    assert response.status_code == 404 and "No such token." in response.text
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200
