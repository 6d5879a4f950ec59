"""The window's two settings forms over plain HTTP: Parameters in the table's groups with the seed's
labels, and the Monitor settings saved on their own; the error box in the form's order, each reason
said once; a save from an old version refused only when a field it names was saved since."""
import re

from tests.mailsender.test_window import HX, form_of
from webapp.core.database import db
from webapp.core.settings import fields as settings_fields
from webapp.core.settings import store as settings_store
from webapp.core.settings import validate as settings_validate

SEED_LABELS = {
    "batch_size": "Mail Sender batch size", "monitor_enabled": "Enable Monitor",
    "monitor_sleep_minutes": "Monitor Sleep time (in minutes)",
    "monitor_pending_threshold": "Notify if Pending Messages count exceeds:",
    "oauth2_client_id": "Client (Application) ID", "oauth2_authorization_url": "Authorization Url",
    "smtp_username": "SMTP User", "smtp_password": "SMTP Password",
}


def validate(app, partition_id, submitted):
    with app.app_context():
        return settings_validate.validate_settings(settings_store.get_settings(partition_id), submitted)


def save(app, partition_id, submitted, actor="other-admin"):
    with app.app_context():
        result = settings_store.update_settings(partition_id, submitted, actor)
        assert result.saved, result.errors
        db.session.commit()


def monitor_form_of(page: str) -> dict:
    """What the browser would submit from the Monitor settings form (form_of reads the form it names)."""
    monitor = page[page.index('id="monitor-settings-form"'):]
    return form_of(monitor.replace('id="monitor-settings-form"', 'id="parameters-form"', 1))


def test_the_table_gives_the_seeds_labels():
    assert {name: settings_fields.FIELDS_BY_NAME[name].label for name in SEED_LABELS} == SEED_LABELS


def test_the_errors_come_in_the_forms_order(app, seed):
    result = validate(app, seed["partition_id"], {
        "webhook_url": "ftp://x", "log_email_address": "nope", "batch_size": 0, "smtp_auth": True})
    order = [f.name for f in settings_fields.FIELDS]
    assert list(result.errors) == sorted(result.errors, key=order.index)
    assert list(result.errors)[0] == "batch_size"


def test_a_bad_address_is_said_once(app, seed):
    why = validate(app, seed["partition_id"], {"log_email_address": "not-an-email"}).errors["log_email_address"]
    assert why.count("is not an e-mail address") == 1 and why.count("'not-an-email'") == 1
    why = validate(app, seed["partition_id"], {"log_email_address": "a@"}).errors["log_email_address"]
    assert why == "is not an e-mail address: 'a@' has no domain after the @"


def test_an_old_version_is_no_conflict_when_the_fields_saved_since_are_others(app, seed):
    save(app, seed["partition_id"], {"monitor_sleep_minutes": 9})
    result = validate(app, seed["partition_id"], {"version": 1, "batch_size": 60, "smtp_password": ""})
    assert result.conflict is None and result.errors == {} and result.changed == ["batch_size"]


def test_an_old_version_is_a_conflict_when_a_field_it_names_was_saved_since(app, seed):
    save(app, seed["partition_id"], {"batch_size": 70})
    result = validate(app, seed["partition_id"], {"version": 1, "batch_size": 60})
    assert "batch_size" in result.conflict and "other-admin" in result.conflict["batch_size"]


def test_an_old_version_whose_later_saves_are_not_all_known_is_a_conflict(app, seed):
    save(app, seed["partition_id"], {"monitor_sleep_minutes": 9})
    with app.app_context():
        settings_store.get_settings(seed["partition_id"]).version += 1  # a save the audit trail does not know
        db.session.commit()
    assert "version" in validate(app, seed["partition_id"], {"version": 1, "batch_size": 60}).conflict


def test_parameters_shows_the_groups_and_leaves_the_monitor_to_its_own_form(admin_client):
    page = admin_client.get("/admin/mail-sender").text
    parameters = page[page.index('id="parameters-form"'):]
    parameters = parameters[:parameters.index("</form>")]
    for f in settings_fields.MONITOR_FIELDS:
        assert f'name="{f.name}"' not in parameters
        assert f'name="{f.name}"' in page[page.index('id="monitor-settings-form"'):]
    for group, legend in (("default_from", "Default From address"), ("smtp", "SMTP"), ("oauth2", "OAuth2")):
        block = parameters[parameters.index(f'id="group-{group}"'):]
        block = block[:block.index("</fieldset>")]
        assert f"<legend>{legend}</legend>" in block
        for f in settings_fields.PARAMETER_FIELDS:
            assert (f'id="field-{f.name}"' in block) == (f.group == group), (group, f.name)
    oauth2 = parameters[parameters.index('id="group-oauth2"'):]
    assert oauth2.index('id="field-oauth2_grant"') < oauth2.index('id="field-oauth2_authorization"') \
        < oauth2.index("</fieldset>")
    monitor = page[page.index('id="monitor"'):]
    assert 'id="monitor-settings"' in monitor[:monitor.index('id="monitor-stuck"')]  # inside the Monitor section


def test_the_monitor_settings_save_their_fields_alone(app, admin_client, seed):
    page = admin_client.get("/admin/mail-sender").text
    data = {**monitor_form_of(page), "monitor_sleep_minutes": "0"}
    del data["monitor_enabled"]
    response = admin_client.post("/admin/mail-sender/monitor-settings", data=data, headers=HX)
    assert response.status_code == 422
    assert response.text.strip().startswith('<div class="subsection" id="monitor-settings"')
    assert 'id="error-monitor_sleep_minutes"' in response.text and 'id="monitor-settings-errors"' in response.text

    response = admin_client.post("/admin/mail-sender/monitor-settings",
                                 data={**data, "monitor_sleep_minutes": "12"}, headers=HX)
    assert response.status_code == 200 and "Saved (version 2)" in response.text
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        assert (row.monitor_enabled, row.monitor_sleep_minutes, row.batch_size, row.tracking_id_enabled) \
            == (False, 12, 100, True)

    # The Parameters form loaded before is saved without a conflict, and leaves the monitor as it is.
    response = admin_client.post("/admin/mail-sender/parameters", data={**form_of(page), "batch_size": "33"},
                                 headers=HX)
    assert response.status_code == 200, response.text
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        assert (row.version, row.batch_size, row.monitor_enabled, row.monitor_sleep_minutes) == (3, 33, False, 12)


def test_a_refused_save_sends_back_what_this_browser_typed_and_never_a_stored_secret(app, admin_client, seed):
    save(app, seed["partition_id"], {"smtp_password": "stored-secret-9"})
    page = admin_client.get("/admin/mail-sender").text
    response = admin_client.post("/admin/mail-sender/parameters",
                                 data={**form_of(page), "smtp_auth": "on", "smtp_username": ""}, headers=HX)
    assert response.status_code == 422 and "stored-secret-9" not in response.text
    assert re.search(r'<input type="password" id="f-smtp_password"[^>]*value=""', response.text)
    key = '{"type": "service_account", "client_email": "a@b.test"}'
    response = admin_client.post("/admin/mail-sender/parameters",
                                 data={**form_of(page), "oauth2_enabled": "on", "oauth2_grant": "service_account",
                                       "oauth2_service_account_key": key}, headers=HX)
    assert response.status_code == 422 and "stored-secret-9" not in response.text
    assert "&#34;client_email&#34;: &#34;a@b.test&#34;}</textarea>" in response.text
