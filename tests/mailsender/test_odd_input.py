"""Input that once made the Mail Sender's forms answer 500 gets a message naming the field instead,
and a form clears only its own secrets."""
from tests.conftest import csrf_from
from webapp.core.database import db
from webapp.core.settings.fields import secret_column
from webapp.core.settings.store import get_settings, update_settings

HX = {"HX-Request": "true"}


def test_an_unclosed_ipv6_literal_is_no_url(admin_client, admin_api):
    response = admin_client.put("/api/v1/mail-sender/settings", json={"webhook_url": "http://[::1"},
                                headers=admin_api)
    assert response.status_code == 422
    assert "must be an http or https URL" in response.json["fields"]["webhook_url"]


def test_the_monitor_settings_form_cannot_clear_a_parameters_secret(app, seed, admin_client):
    with app.app_context():
        assert update_settings(seed["partition_id"], {"smtp_password": "stored-password-1"}, "test").ok
        db.session.commit()
        stored = getattr(get_settings(seed["partition_id"]), secret_column("smtp_password"))
    assert stored
    page = admin_client.get("/admin/mail-sender").text
    data = {"csrf_token": csrf_from(page), "monitor_enabled": "on", "monitor_sleep_minutes": "5",
            "monitor_pending_threshold": "1000", "webhook_url": "", "clear_secrets": "smtp_password"}
    response = admin_client.post("/admin/mail-sender/monitor-settings", data=data, headers=HX)
    assert response.status_code == 200, response.text
    with app.app_context():
        assert getattr(get_settings(seed["partition_id"]), secret_column("smtp_password")) == stored
