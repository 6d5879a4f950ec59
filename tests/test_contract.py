"""The contract of ../shared/API.md: its settings fields and answers, as other systems read them."""
from tests.conftest import ADMIN_PASSWORD, api_token

SETTINGS_FIELDS = (
    "version training_enabled company_domains tracking_id_enabled batch_size sleep_minutes "
    "allow_change_reply_from origination_from_mailbox_id allow_change_origination_from "
    "envelope_sender_mailbox log_email_address column_width smtp_host smtp_port smtp_timeout_seconds "
    "smtp_starttls smtp_auth smtp_username smtp_ssl oauth2_enabled oauth2_provider oauth2_grant "
    "oauth2_authorization_url oauth2_token_url oauth2_client_id default_charset priority_enabled "
    "monitor_enabled monitor_sleep_minutes monitor_pending_threshold"
).split()
SECRETS = ("smtp_password", "oauth2_client_secret", "oauth2_service_account_key")


def test_settings_answer_every_contract_field_and_no_secret(client, seed):
    headers = api_token(client, "admin", ADMIN_PASSWORD)
    body = client.get("/api/v1/mail-sender/settings", headers=headers).json
    assert set(SETTINGS_FIELDS) <= set(body)
    for secret in SECRETS:
        assert secret not in body and body[f"{secret}_set"] is False


def test_status_and_monitor_answer_their_contract_fields(client, seed):
    headers = api_token(client, "admin", ADMIN_PASSWORD)
    status = client.get("/api/v1/mail-sender/status", headers=headers).json
    assert {"light", "wanted", "defined", "running", "nodes"} <= set(status)
    monitor = client.get("/api/v1/monitor", headers=headers).json
    assert {"pending", "oldest_pending_seconds", "threshold", "alert_active", "stuck"} <= set(monitor)


def test_ids_that_are_not_numbers_answer_404_not_500(client, seed):
    headers = api_token(client, "admin", ADMIN_PASSWORD)
    for path in ("/api/v1/messages/abc", "/api/v1/departments/abc", "/api/v1/users/x"):
        response = client.get(path, headers=headers)
        assert response.status_code == 404 and response.json["error"]
    assert client.post("/api/v1/messages/abc/requeue", headers=headers).status_code == 404


def test_openapi_lists_every_contract_path(client, seed):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    for path in ("/tokens", "/me", "/departments", "/departments/{department_id}", "/mailboxes", "/users",
                 "/me/preferences", "/mail-sender/settings", "/mail-sender/test", "/mail-sender/status",
                 "/mail-sender/start", "/mail-sender/stop", "/monitor", "/incoming", "/messages",
                 "/messages/{message_id}", "/messages/{message_id}/requeue", "/messages/{message_id}/remove"):
        assert path in paths, path
