"""POST /api/v1/mail-sender/test: the saved settings or the body's, validated like Save; admin
only; a few runs a minute; every run audited; credentials never in the answer."""
import pytest
from sqlalchemy import select

from tests.oauth.token_server import TokenServer
from tests.smtp_servers import SmtpServer
from webapp.core import route_state
from webapp.core.database import db
from webapp.core.models import AuditEvent
from webapp.core.security import decrypt_secret
from webapp.core.settings.store import get_settings

URL = "/api/v1/mail-sender/test"
USER = "relay@acme.test"
PASSWORD = "Relay-Pass-31"


def test_the_saved_settings_are_tested_and_the_answer_keeps_the_contract(client, admin_api, save):
    with SmtpServer() as server:
        save(smtp_host=server.host, smtp_port=server.port)
        response = client.post(URL, headers=admin_api)
    assert response.status_code == 200, response.text
    body = response.json
    assert body["ok"] is True
    assert {"ok", "stage", "code", "message", "steps"} <= set(body)
    assert [step["stage"] for step in body["steps"]][:4] == ["connect", "tls", "ehlo", "auth"]
    assert all({"stage", "ok", "code", "message"} <= set(step) for step in body["steps"])
    assert "DATA" not in server.commands and server.messages == []


def test_settings_in_the_body_are_tried_instead_and_nothing_is_saved(app, client, admin_api, save, seed):
    save(smtp_host="127.0.0.1", smtp_port=SmtpServer.free_port())  # nobody listens there
    with app.app_context():
        version = get_settings(seed["partition_id"]).version
    with SmtpServer() as server:
        response = client.post(URL, headers=admin_api, json={"smtp_port": server.port, "version": version - 1})
    assert response.json["ok"] is True, response.json
    with app.app_context():
        saved = get_settings(seed["partition_id"])
        assert saved.version == version and saved.smtp_port != server.port


def test_a_blank_password_means_the_stored_one(client, admin_api, save):
    with SmtpServer(users={USER: PASSWORD}) as server:
        save(smtp_host=server.host, smtp_port=server.port, smtp_auth=True, smtp_username=USER, smtp_password=PASSWORD)
        kept = client.post(URL, headers=admin_api, json={"smtp_password": ""})
        typed_wrong = client.post(URL, headers=admin_api, json={"smtp_password": "Not-The-One-7"})
    assert kept.json["ok"] is True, kept.json
    assert typed_wrong.json["ok"] is False and typed_wrong.json["stage"] == "auth"
    for answer in (kept, typed_wrong):
        assert PASSWORD not in answer.text and "Not-The-One-7" not in answer.text


def test_invalid_values_answer_422_naming_every_field_and_run_nothing(app, client, admin_api, seed):
    response = client.post(URL, headers=admin_api, json={"smtp_port": "not a port", "smtp_host": "169.254.169.254",
                                                         "oauth2_token_url": "http://login.example.test/token"})
    assert response.status_code == 422
    assert set(response.json["fields"]) == {"smtp_port", "smtp_host", "oauth2_token_url"}
    with app.app_context():
        assert db.session.scalars(select(AuditEvent).where(AuditEvent.action.like("mailsender.test%"))).all() == []


def test_a_body_that_is_no_object_is_400(client, admin_api):
    assert client.post(URL, headers=admin_api, json=["smtp_port"]).status_code == 400


def test_agents_get_403(client, agent_api):
    assert client.post(URL, headers=agent_api).status_code == 403


def test_a_cookie_session_needs_the_csrf_token(admin_client):
    assert admin_client.post(URL, json={}).status_code == 400


@pytest.mark.databases
def test_after_the_limit_a_run_answers_429_and_each_run_is_audited(app, client, admin_api, save, seed):
    app.config["MAILSENDER_TEST_RUNS_PER_MINUTE"] = 2
    with SmtpServer() as server:
        save(smtp_host=server.host, smtp_port=server.port)
        answers = [client.post(URL, headers=admin_api) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 61
    assert "2 tests a minute" in answers[2].json["error"]
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.action.like("mailsender.test%"))
                                    .order_by(AuditEvent.id)).all()
        assert [e.action for e in events] == ["mailsender.test", "mailsender.test", "mailsender.test_refused"]
        assert all(e.user_id == seed["admin_id"] for e in events)
        assert events[0].details["outcome"] == "ok" and events[0].details["stage"]


def test_xoauth2_with_a_client_credentials_token_from_the_token_server(client, admin_api, save):
    with TokenServer(access_token="access-77") as tokens, \
            SmtpServer(xoauth2_tokens={USER: "access-77"}) as server:
        save(smtp_host=server.host, smtp_port=server.port, smtp_username=USER, oauth2_enabled=True,
             oauth2_provider="microsoft", oauth2_grant="client_credentials", oauth2_token_url=tokens.url,
             oauth2_client_id="client-1", oauth2_client_secret="client-secret-1")
        response = client.post(URL, headers=admin_api)
    assert response.json["ok"] is True, response.json
    assert tokens.grants() == ["client_credentials"]
    assert "access-77" not in response.text and "client-secret-1" not in response.text
    assert "DATA" not in server.commands



def test_the_test_waits_for_the_token_as_the_senders_do_whatever_the_smtp_server_timeout(app, client, admin_api,
                                                                                         save):
    app.config["MAILSENDER_OAUTH_TIMEOUT"] = 60
    with TokenServer(access_token="access-78", delay=1.5) as tokens, \
            SmtpServer(xoauth2_tokens={USER: "access-78"}) as server:
        save(smtp_host=server.host, smtp_port=server.port, smtp_username=USER, smtp_timeout_seconds=1,
             oauth2_enabled=True, oauth2_provider="microsoft", oauth2_grant="client_credentials",
             oauth2_token_url=tokens.url, oauth2_client_id="client-1", oauth2_client_secret="client-secret-1")
        response = client.post(URL, headers=admin_api)
    assert response.json["ok"] is True, response.json

def test_a_token_server_refusal_is_shown_at_auth(client, admin_api, save):
    refusal = (400, {"error": "unauthorized_client", "error_description": "AADSTS700016: app not found"})
    with TokenServer(refusal=refusal) as tokens, SmtpServer(xoauth2_tokens={USER: "x"}) as server:
        save(smtp_host=server.host, smtp_port=server.port, smtp_username=USER, oauth2_enabled=True,
             oauth2_provider="other", oauth2_grant="client_credentials", oauth2_token_url=tokens.url,
             oauth2_client_id="client-1", oauth2_client_secret="client-secret-1")
        body = client.post(URL, headers=admin_api).json
    assert body["ok"] is False and body["stage"] == "auth"
    assert "unauthorized_client" in body["message"] and "AADSTS700016: app not found" in body["message"]


@pytest.mark.databases
def test_a_refresh_token_rotated_during_a_test_is_stored_again(app, client, admin_api, save, seed):
    from scheduler.oauth import store_refresh_token

    with TokenServer(access_token="access-5") as tokens, SmtpServer(xoauth2_tokens={USER: "access-5"}) as server:
        tokens.refresh_tokens["refresh-old"] = "refresh-new"
        save(smtp_host=server.host, smtp_port=server.port, smtp_username=USER, oauth2_enabled=True,
             oauth2_provider="google", oauth2_grant="authorization_code", oauth2_token_url=tokens.url,
             oauth2_authorization_url="http://127.0.0.1:1/auth", oauth2_client_id="client-1",
             oauth2_client_secret="client-secret-1")
        with app.app_context():
            store_refresh_token(seed["partition_id"], "refresh-old")
            db.session.commit()
        response = client.post(URL, headers=admin_api)
    assert response.json["ok"] is True, response.json
    assert "refresh-new" not in response.text and "refresh-old" not in response.text
    with app.app_context():
        assert decrypt_secret(get_settings(seed["partition_id"]).oauth2_refresh_token_enc) == "refresh-new"


@pytest.mark.parametrize("field,value", [("smtp_host", "169.254.169.254"), ("smtp_host", "[fd00:ec2::254]"),
                                         ("oauth2_token_url", "https://169.254.169.254/token"),
                                         ("oauth2_authorization_url", "http://accounts.example.test/auth")])
def test_save_refuses_metadata_hosts_and_plain_http_oauth_urls(client, admin_api, field, value):
    response = client.put("/api/v1/mail-sender/settings", headers=admin_api, json={field: value})
    assert response.status_code == 422 and field in response.json["fields"]


def _pause(app, partition_id) -> None:
    with app.app_context():
        route_state.pause(partition_id, get_settings(partition_id).version, "535 5.7.8 Authentication failed")
        db.session.commit()


def _stop(app, partition_id):
    with app.app_context():
        return route_state.route_stop(partition_id, get_settings(partition_id).version)


def test_a_passing_test_of_the_saved_settings_resumes_a_paused_route_and_is_audited(app, client, admin_api,
                                                                                     save, seed):
    pid = seed["partition_id"]
    with SmtpServer() as server:
        save(smtp_host=server.host, smtp_port=server.port)
        _pause(app, pid)
        assert _stop(app, pid).paused
        response = client.post(URL, headers=admin_api)
    assert response.json["ok"] is True, response.json
    assert _stop(app, pid) is None
    with app.app_context():
        actions = db.session.scalars(select(AuditEvent.action).where(AuditEvent.partition_id == pid)).all()
    assert "route.pause" in actions and "route.resume" in actions


def test_a_test_of_other_values_or_one_that_fails_leaves_the_route_paused(app, client, admin_api, save, seed):
    pid = seed["partition_id"]
    with SmtpServer() as server:
        save(smtp_host=server.host, smtp_port=SmtpServer.free_port())  # nobody listens there
        _pause(app, pid)
        assert client.post(URL, headers=admin_api).json["ok"] is False
        assert _stop(app, pid).paused
        # Values other than the saved ones pass: they resume the route when they are saved.
        assert client.post(URL, headers=admin_api, json={"smtp_port": server.port}).json["ok"] is True
        assert _stop(app, pid).paused
        save(smtp_port=server.port)
    assert _stop(app, pid) is None
