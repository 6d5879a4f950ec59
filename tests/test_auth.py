"""Login, sessions, roles, CSRF and bearer tokens."""
import re

from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, api_token, csrf_from, login
from webapp.core.database import db
from webapp.core.models import AuditEvent, User


def test_login_page_shows_a_form(client):
    response = client.get("/login")
    assert response.status_code == 200
    assert 'name="username"' in response.text and 'name="password"' in response.text


def test_admin_logs_in_and_is_audited(app, client, seed):
    response = login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 302
    assert client.get("/admin/mail-sender").status_code == 200
    with app.app_context():
        assert db.session.scalars(select(AuditEvent).where(AuditEvent.action == "user.login")).first()


def test_wrong_password_and_unknown_user_get_the_same_answer(client, seed):
    wrong = login(client, "admin", "not-the-password")
    unknown = login(client, "nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong username or password." in wrong.text
    # The pages differ only in the username typed and the CSRF token, which is new each time.
    def scrub(text):
        return re.sub(r'(value="|"X-CSRFToken": ")[^"]+"', "TOKEN", text).replace("admin", "nobody")

    assert scrub(wrong.text) == scrub(unknown.text)


def test_wrong_password_and_unknown_user_get_the_same_api_answer(client, seed):
    wrong = client.post("/api/v1/tokens", json={"username": "admin", "password": "nope"})
    unknown = client.post("/api/v1/tokens", json={"username": "nobody", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json


def test_post_without_csrf_token_is_refused(client, seed):
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.text


def test_htmx_post_without_csrf_header_is_refused(admin_client):
    response = admin_client.post("/logout", headers={"HX-Request": "true"})
    assert response.status_code == 400


def test_agent_opening_an_admin_url_gets_403(agent_client):
    assert agent_client.get("/admin/mail-sender").status_code == 403
    assert agent_client.get("/admin/directory").status_code == 403


def test_anonymous_request_to_the_window_goes_to_login(client, seed):
    response = client.get("/admin/mail-sender")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_anonymous_htmx_request_gets_a_401_notice_for_the_notice_area_not_a_redirect(client, seed):
    response = client.get("/admin/mail-sender", headers={"HX-Request": "true"})
    assert response.status_code == 401 and "HX-Redirect" not in response.headers
    assert (response.headers["HX-Retarget"], response.headers["HX-Reswap"]) == ("#session-notice", "innerHTML")
    assert "Your session ended; log in again." in response.text and 'hx-get="/login"' in response.text


def test_anonymous_api_call_gets_json_401(client, seed):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json["error"]


def test_disabled_user_cannot_log_in(app, client, seed):
    with app.app_context():
        db.session.get(User, seed["agent_id"]).disabled = True
        db.session.commit()
    response = login(client, "agent", AGENT_PASSWORD)
    assert response.status_code == 401
    assert "Wrong username or password." in response.text


def test_disabled_users_session_ends_on_the_next_request(app, agent_client, seed):
    assert agent_client.get("/compose").status_code == 200
    with app.app_context():
        db.session.get(User, seed["agent_id"]).disabled = True
        db.session.commit()
    response = agent_client.get("/compose")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_disabled_users_token_is_dead_on_the_next_request(app, client, seed):
    headers = api_token(client, "agent", AGENT_PASSWORD)
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    with app.app_context():
        db.session.get(User, seed["agent_id"]).disabled = True
        db.session.commit()
    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_bearer_token_answers_me(client, seed):
    headers = api_token(client, "agent", AGENT_PASSWORD)
    response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 200
    assert response.json["username"] == "agent"
    assert response.json["role"] == "agent"
    assert response.json["partition"] == "Acme"
    assert response.json["departments"][0]["name"] == "Acme"


def test_token_is_stored_as_a_digest_only(app, client, seed):
    token = api_token(client, "agent", AGENT_PASSWORD)["Authorization"].split()[1]
    with app.app_context():
        from webapp.core.models import ApiToken

        row = db.session.scalars(select(ApiToken)).one()
        assert row.digest != token and token not in row.digest and len(row.digest) == 64


def test_a_bad_token_gets_401(client, seed):
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer nonsense"}).status_code == 401


def test_token_request_without_fields_names_them(client, seed):
    response = client.post("/api/v1/tokens", json={})
    assert response.status_code == 400
    assert set(response.json["fields"]) == {"username", "password"}
    assert client.post("/api/v1/tokens", data="not json").status_code == 400


def test_cookie_session_api_write_needs_csrf(app, admin_client):
    headers = api_token(admin_client, "admin", ADMIN_PASSWORD)
    token_id = admin_client.get("/api/v1/tokens", headers=headers).json["items"][0]["id"]
    refused = admin_client.delete(f"/api/v1/tokens/{token_id}")
    assert refused.status_code == 400 and "CSRF" in refused.json["error"]
    csrf = csrf_from(admin_client.get("/admin/mail-sender").text)
    assert admin_client.delete(f"/api/v1/tokens/{token_id}", headers={"X-CSRFToken": csrf}).status_code == 204


def test_bearer_call_needs_no_csrf_and_a_revoked_token_is_dead(client, seed):
    headers = api_token(client, "agent", AGENT_PASSWORD)
    items = client.get("/api/v1/tokens", headers=headers).json["items"]
    assert [set(item) for item in items] == [{"id", "prefix", "created_at"}]
    assert client.delete(f"/api/v1/tokens/{items[0]['id']}", headers=headers).status_code == 204
    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_logout_ends_the_session(admin_client):
    page = admin_client.get("/admin/mail-sender")
    response = admin_client.post("/logout", data={"csrf_token": csrf_from(page.text)})
    assert response.status_code == 302
    assert admin_client.get("/admin/mail-sender").status_code == 302


def test_login_does_not_redirect_off_site(client, seed):
    page = client.get("/login?next=https://evil.test/")
    response = client.post("/login?next=https://evil.test/", data={
        "username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302
    assert "evil.test" not in response.headers["Location"]


def test_password_is_hashed_with_argon2id(app, seed):
    with app.app_context():
        assert db.session.get(User, seed["admin_id"]).password_hash.startswith("$argon2id$")


def test_a_bearer_token_is_judged_alone_even_beside_a_session_cookie(admin_client):
    headers = api_token(admin_client, "agent", AGENT_PASSWORD)
    assert admin_client.get("/api/v1/me", headers=headers).json["username"] == "agent"
    token_id = admin_client.get("/api/v1/tokens", headers=headers).json["items"][0]["id"]
    assert admin_client.delete(f"/api/v1/tokens/{token_id}", headers=headers).status_code == 204
    assert admin_client.get("/api/v1/me", headers=headers).status_code == 401
    assert admin_client.get("/api/v1/me").json["username"] == "admin"


def test_a_body_over_the_size_limit_gets_413_not_a_read_into_memory(app, client, seed):
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit > app.config["MAILSENDER_MAX_ATTACHMENT_BYTES"]
    headers = api_token(client, "agent", AGENT_PASSWORD)
    response = client.post("/api/v1/messages", data=b"x" * (limit + 1), headers={
        **headers, "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json["error"]
