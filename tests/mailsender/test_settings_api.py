"""GET and PUT /api/v1/mail-sender/settings: partial changes, versions, write-only secrets, audit."""
import json

import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, login
from webapp.core.database import db
from webapp.core.models import AuditEvent, MailSenderSettings
from webapp.core.security import decrypt_secret

pytestmark = pytest.mark.databases

URL = "/api/v1/mail-sender/settings"
PASSWORD = "pw-Very-Secret-42"
CONTRACT_FIELDS = """version training_enabled company_domains tracking_id_enabled batch_size sleep_minutes
allow_change_reply_from origination_from_mailbox_id allow_change_origination_from envelope_sender_mailbox
log_email_address column_width smtp_host smtp_port smtp_timeout_seconds smtp_starttls smtp_auth smtp_username
smtp_ssl oauth2_enabled oauth2_provider oauth2_grant oauth2_authorization_url oauth2_token_url oauth2_client_id
default_charset priority_enabled monitor_enabled monitor_sleep_minutes monitor_pending_threshold""".split()
SECRETS = ("smtp_password", "oauth2_client_secret", "oauth2_service_account_key")


def stored(app, partition_id) -> MailSenderSettings:
    with app.app_context():
        row = db.session.scalars(select(MailSenderSettings).where(MailSenderSettings.partition_id == partition_id)).one()
        db.session.expunge(row)
        return row


def settings_audits(app, partition_id):
    with app.app_context():
        return db.session.scalars(select(AuditEvent).where(
            AuditEvent.partition_id == partition_id, AuditEvent.action == "settings.update")
            .order_by(AuditEvent.id)).all()


def test_get_answers_every_contract_field_and_only_flags_for_secrets(client, admin_api):
    body = client.get(URL, headers=admin_api).json
    assert set(CONTRACT_FIELDS) <= set(body)
    for name in SECRETS:
        assert name not in body and body[f"{name}_set"] is False
    assert body["version"] == 1 and body["batch_size"] == 100 and body["company_domains"] is None
    assert body["column_width"] is None and body["default_charset"] == "UTF-8"


def test_put_changes_only_the_fields_it_names(app, client, admin_api, seed):
    before = client.get(URL, headers=admin_api).json
    response = client.put(URL, headers=admin_api, json={"batch_size": 50, "smtp_host": "relay.acme.test"})
    assert response.status_code == 200, response.json
    after = response.json
    assert after["batch_size"] == 50 and after["smtp_host"] == "relay.acme.test"
    assert after["version"] == before["version"] + 1
    assert after["updated_by"] == "admin"
    untouched = set(CONTRACT_FIELDS) - {"batch_size", "smtp_host", "version"}
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert client.get(URL, headers=admin_api).json == {k: v for k, v in after.items() if k != "warnings"}


def test_read_only_fields_are_ignored_so_a_get_can_be_put_back(client, admin_api):
    body = client.get(URL, headers=admin_api).json
    body.update({"sleep_minutes": 3, "smtp_password_set": True, "company_domains_effective": ["x.test"],
                 "updated_by": "mallory", "ssl_allowed": False})
    response = client.put(URL, headers=admin_api, json=body)
    assert response.status_code == 200, response.json
    assert response.json["sleep_minutes"] == 3
    assert response.json["smtp_password_set"] is False
    assert response.json["updated_by"] == "admin"


def test_an_old_version_answers_409_naming_what_changed_and_stores_nothing(app, client, admin_api, seed):
    assert client.put(URL, headers=admin_api, json={"version": 1, "batch_size": 60}).status_code == 200
    response = client.put(URL, headers=admin_api, json={"version": 1, "batch_size": 70, "sleep_minutes": 9})
    assert response.status_code == 409
    assert "batch_size" in response.json["fields"] and "admin" in response.json["fields"]["batch_size"]
    row = stored(app, seed["partition_id"])
    assert (row.version, row.batch_size, row.sleep_minutes) == (2, 60, 1)


def test_422_names_every_bad_field_at_once_and_stores_nothing(app, client, admin_api, seed):
    response = client.put(URL, headers=admin_api, json={
        "batch_size": 0, "smtp_port": "x", "log_email_address": "nope", "smtp_auth": True, "sleep_minutes": 5})
    assert response.status_code == 422
    assert set(response.json["fields"]) == {"batch_size", "smtp_port", "log_email_address",
                                            "smtp_username", "smtp_password"}
    row = stored(app, seed["partition_id"])
    assert (row.version, row.sleep_minutes, row.smtp_auth) == (1, 1, False)


def test_a_body_that_is_not_an_object_is_a_400(client, admin_api):
    assert client.put(URL, headers=admin_api, data="[1]", content_type="application/json").status_code == 400


def test_warnings_come_beside_a_success(client, admin_api):
    response = client.put(URL, headers=admin_api, json={"training_enabled": True})
    assert response.status_code == 200
    assert [w["field"] for w in response.json["warnings"]] == ["training_enabled"]


def test_secrets_are_write_only_and_encrypted_at_rest(app, client, admin_api, seed):
    key = json.dumps({"type": "service_account", "client_email": "r@p.test", "private_key": "PRIVATE-KEY-TEXT"})
    response = client.put(URL, headers=admin_api, json={
        "smtp_auth": True, "smtp_username": "relay", "smtp_password": PASSWORD,
        "oauth2_client_secret": "CLIENT-SECRET-TEXT", "oauth2_service_account_key": key})
    assert response.status_code == 200, response.json
    for answer in (response, client.get(URL, headers=admin_api)):
        assert all(answer.json[f"{name}_set"] for name in SECRETS)
        for plain in (PASSWORD, "CLIENT-SECRET-TEXT", "PRIVATE-KEY-TEXT"):
            assert plain not in answer.text
    browser = app.test_client()
    login(browser, "admin", ADMIN_PASSWORD)
    window = browser.get("/admin/mail-sender").text
    for plain in (PASSWORD, "CLIENT-SECRET-TEXT", "PRIVATE-KEY-TEXT"):
        assert plain not in window
    row = stored(app, seed["partition_id"])
    assert PASSWORD not in row.smtp_password_enc
    with app.app_context():
        assert decrypt_secret(row.smtp_password_enc) == PASSWORD


def test_a_blank_secret_keeps_the_stored_one_and_clear_secrets_clears_it(app, client, admin_api, seed):
    client.put(URL, headers=admin_api, json={"smtp_password": PASSWORD})
    assert client.put(URL, headers=admin_api, json={"smtp_password": ""}).json["smtp_password_set"] is True
    assert client.put(URL, headers=admin_api, json={"smtp_password": None}).json["smtp_password_set"] is True
    cleared = client.put(URL, headers=admin_api, json={"smtp_password": "", "clear_secrets": ["smtp_password"]})
    assert cleared.status_code == 200 and cleared.json["smtp_password_set"] is False
    assert stored(app, seed["partition_id"]).smtp_password_enc is None


def test_the_audit_names_changed_fields_and_never_a_secrets_value(app, client, admin_api, seed):
    client.put(URL, headers=admin_api, json={"smtp_host": "relay.acme.test", "smtp_password": PASSWORD})
    client.put(URL, headers=admin_api, json={"clear_secrets": ["smtp_password"]})
    first, second = settings_audits(app, seed["partition_id"])
    assert first.actor == "admin" and first.at is not None
    assert first.details["fields"] == ["smtp_host", "smtp_password"]
    assert first.details["changes"]["smtp_host"] == {"from": "localhost", "to": "relay.acme.test"}
    assert first.details["changes"]["smtp_password"] == "changed"
    assert second.details["changes"] == {"smtp_password": "cleared"}
    with app.app_context():
        every_detail = json.dumps([e.details for e in db.session.scalars(select(AuditEvent))])
    assert PASSWORD not in every_detail


def test_a_save_that_changes_nothing_keeps_the_version_and_writes_no_audit(app, client, admin_api, seed):
    response = client.put(URL, headers=admin_api, json={"batch_size": 100})
    assert response.status_code == 200 and response.json["version"] == 1
    assert settings_audits(app, seed["partition_id"]) == []


def test_agents_get_403_on_every_mail_sender_call(client, agent_api):
    assert client.get(URL, headers=agent_api).status_code == 403
    assert client.put(URL, headers=agent_api, json={"batch_size": 5}).status_code == 403
    assert client.get("/api/v1/mail-sender/status", headers=agent_api).status_code == 403
    assert client.post("/api/v1/mail-sender/start", headers=agent_api).status_code == 403
    assert client.post("/api/v1/mail-sender/stop", headers=agent_api).status_code == 403


def test_a_cookie_session_put_needs_the_csrf_token(admin_client):
    assert admin_client.put(URL, json={"batch_size": 5}).status_code == 400
