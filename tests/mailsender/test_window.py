"""The /admin/mail-sender window over plain HTTP: sections, the parameters form, Save and Cancel."""
import html
import re

from tests.conftest import csrf_from
from tests.mailsender.conftest import add_node, add_sender
from webapp.core.database import db
from webapp.core.models import Partition
from webapp.core.settings import fields as settings_fields
from webapp.core.settings import store as settings_store

HX = {"HX-Request": "true"}


def form_of(page: str) -> dict:
    """What the browser would submit from the parameters form as it is rendered."""
    form = page[page.index('id="parameters-form"'):]
    form = form[:form.index("</form>")]
    data = {}
    for tag in re.findall(r"<input[^>]*>", form, re.S):
        name = re.search(r'name="([^"]+)"', tag)
        if not name or " disabled" in tag:
            continue
        kind = re.search(r'type="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if kind and kind.group(1) == "checkbox":
            if " checked" in tag:
                data[name.group(1)] = value.group(1)
        else:
            data[name.group(1)] = value.group(1) if value else ""
    for name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        selected = re.search(r'<option value="([^"]*)"\s*selected', body)
        data[name] = selected.group(1) if selected else ""
    for name in re.findall(r'<textarea[^>]*name="([^"]+)"', form):
        data[name] = ""
    return data


def test_the_window_has_both_sections_as_the_section_routes_serve_them(admin_client):
    page = admin_client.get("/admin/mail-sender").text
    status = admin_client.get("/admin/mail-sender/status", headers=HX).text
    parameters = admin_client.get("/admin/mail-sender/parameters", headers=HX).text
    assert status.strip().startswith('<section class="section" id="status"')
    assert 'hx-trigger="every 5s, page-shown"' in status and 'hx-target="this"' in status
    assert parameters.strip().startswith('<section class="section" id="parameters"')
    assert 'id="status"' in page and 'id="parameters"' in page
    assert "<html" not in status and "<html" not in parameters


def test_every_parameter_appears_in_the_tables_order_with_label_default_and_help(admin_client):
    page = admin_client.get("/admin/mail-sender").text
    positions = [page.index(f'id="field-{f.name}"') for f in settings_fields.FIELDS]
    assert positions == sorted(positions)
    for f in settings_fields.FIELDS:
        block = page[page.index(f'id="field-{f.name}"'):]
        block = block[:block.index("</div>")]
        block = html.unescape(block)
        assert f.label in block and f"Default: {f.shown_default}." in block and f.help in block


def test_dependent_fields_are_hidden_until_their_toggle_is_on(app, admin_client, seed):
    page = admin_client.get("/admin/mail-sender").text
    assert re.search(r'id="field-smtp_password"[^>]*data-show-if="smtp_auth"[^>]*hidden', page)
    assert re.search(r'id="field-oauth2_grant"[^>]*hidden', page)
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        row.oauth2_enabled, row.oauth2_grant = True, "service_account"
        db.session.commit()
    page = admin_client.get("/admin/mail-sender").text
    assert not re.search(r'id="field-oauth2_grant"[^>]*hidden', page)
    assert not re.search(r'id="field-oauth2_service_account_key"[^>]*hidden', page)
    assert re.search(r'id="field-oauth2_authorization_url"[^>]*hidden', page)


def test_ssl_is_disabled_with_the_reason_where_not_allowed(app, admin_client):
    assert "does not allow SSL" not in admin_client.get("/admin/mail-sender").text
    app.config["MAILSENDER_SSL_ALLOWED"] = False
    page = admin_client.get("/admin/mail-sender").text
    assert re.search(r'<input type="checkbox" id="f-smtp_ssl"[^>]*disabled', page)
    assert "this instance does not allow SSL" in page


def test_the_origination_default_lists_all_mailboxes_with_their_departments(admin_client, mailboxes):
    page = admin_client.get("/admin/mail-sender").text
    select = page[page.index('name="origination_from_mailbox_id"'):]
    select = select[:select.index("</select>")]
    # The admin is only in the root department; the system default still offers Sales' mailbox.
    assert "sales@acme-sales.test (Sales desk) — Sales" in select
    assert "support@acme.test (Support) — Acme" in select


def test_save_with_errors_names_every_bad_field_keeps_what_was_typed_and_stores_nothing(app, admin_client, seed):
    page = admin_client.get("/admin/mail-sender").text
    data = {**form_of(page), "smtp_auth": "on", "batch_size": "0", "smtp_host": "relay.acme.test",
            "smtp_password": "typed-secret-1"}
    response = admin_client.post("/admin/mail-sender/parameters", data=data, headers=HX)
    assert response.status_code == 422
    box = response.text[response.text.index('id="parameters-errors"'):]
    box = box[:box.index("</div>")]
    for label in ("Mail Sender batch size", "SMTP User", "Use SMTP TLS"):
        assert label in box
    assert 'value="relay.acme.test"' in response.text and 'value="0"' in response.text
    # The password this browser typed comes back to it, so that it need not be typed again.
    assert re.search(r'<input type="password" id="f-smtp_password"[^>]*value="typed-secret-1"', response.text)
    assert "again" not in box
    assert re.search(r'<input type="checkbox" id="f-smtp_auth"[^>]*checked', response.text)
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        assert (row.version, row.smtp_auth, row.batch_size, row.smtp_host) == (1, False, 100, "localhost")


def test_save_stores_the_form_and_shows_warnings(app, admin_client, seed, mailboxes):
    page = admin_client.get("/admin/mail-sender").text
    data = {**form_of(page), "batch_size": "250", "log_email_address": "support@acme.test",
            "origination_from_mailbox_id": str(mailboxes["sales"]), "column_width": "72"}
    del data["tracking_id_enabled"]  # unticked
    response = admin_client.post("/admin/mail-sender/parameters", data=data, headers=HX)
    assert response.status_code == 200
    assert 'id="parameters-saved"' in response.text and 'id="parameters-warnings"' in response.text
    assert 'name="version" value="2"' in response.text
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        assert (row.batch_size, row.tracking_id_enabled, row.column_width) == (250, False, 72)
        assert row.origination_from_mailbox_id == mailboxes["sales"] and row.updated_by == "admin"


def test_cancel_answers_the_saved_values(app, admin_client, seed):
    with app.app_context():
        settings_store.get_settings(seed["partition_id"]).batch_size = 321
        db.session.commit()
    response = admin_client.get("/admin/mail-sender/parameters", headers=HX)
    assert 'name="batch_size" value="321"' in response.text


def test_saving_over_a_newer_version_answers_409_showing_what_changed(app, admin_client, seed):
    page = admin_client.get("/admin/mail-sender").text
    data = form_of(page)
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        result = settings_store.update_settings(seed["partition_id"], {"sleep_minutes": 7}, "other-admin")
        assert result.saved
        db.session.commit()
    response = admin_client.post("/admin/mail-sender/parameters", data={**data, "batch_size": "5"}, headers=HX)
    assert response.status_code == 409
    box = response.text[response.text.index('id="parameters-conflict"'):]
    assert "Sleep time" in box[:box.index("</div>")] and "other-admin" in box
    assert 'value="5"' in response.text  # what was typed is kept
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        assert (row.version, row.batch_size, row.sleep_minutes) == (2, 100, 7)


def test_the_clear_box_removes_a_stored_password(app, admin_client, seed):
    with app.app_context():
        assert settings_store.update_settings(seed["partition_id"], {"smtp_password": "pw"}, "x").saved
        db.session.commit()
    page = admin_client.get("/admin/mail-sender").text
    assert 'id="set-smtp_password"' in page
    response = admin_client.post("/admin/mail-sender/parameters",
                                 data={**form_of(page), "clear_secrets": "smtp_password"}, headers=HX)
    assert response.status_code == 200
    assert 'id="set-smtp_password"' not in response.text
    with app.app_context():
        assert settings_store.get_settings(seed["partition_id"]).smtp_password_enc is None


def test_the_form_works_without_htmx(app, admin_client, seed):
    page = admin_client.get("/admin/mail-sender").text
    response = admin_client.post("/admin/mail-sender/parameters", data={**form_of(page), "sleep_minutes": "9999"})
    assert response.status_code == 422 and "<html" in response.text and "Sleep time" in response.text


def test_the_status_section_shows_lights_counts_and_nodes(app, admin_client, seed):
    with app.app_context():
        node = add_node("node-a")
        add_sender(node, seed["partition_id"], 0, running=True)
        add_sender(node, seed["partition_id"], 1, running=False)
        db.session.commit()
    section = admin_client.get("/admin/mail-sender/status", headers=HX).text
    assert re.search(r'class="light yellow on"[^>]*>\s*Some senders run', section)
    assert "Number defined for this partition" in section and "Number defined for node node-a" in section
    assert "last seen" in section


def test_start_and_stop_buttons_write_the_wanted_state(app, admin_client, seed):
    token = csrf_from(admin_client.get("/admin/mail-sender").text)
    response = admin_client.post("/admin/mail-sender/start", headers={**HX, "X-CSRFToken": token})
    assert response.status_code == 200 and 'data-wanted="running"' in response.text
    with app.app_context():
        assert db.session.get(Partition, seed["partition_id"]).senders_wanted == "running"
    response = admin_client.post("/admin/mail-sender/stop", headers={**HX, "X-CSRFToken": token})
    assert 'data-wanted="stopped"' in response.text
    assert admin_client.post("/admin/mail-sender/stop", headers=HX).status_code == 400  # no CSRF token


def test_agents_get_403_on_every_section(agent_client):
    for path in ("", "/status", "/parameters"):
        assert agent_client.get(f"/admin/mail-sender{path}").status_code == 403


def test_the_training_banner_is_on_every_page_while_training_is_on(app, client, seed):
    from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, login

    pages = {"admin": ["/admin/mail-sender", "/admin/directory", "/outbox", "/compose", "/preferences", "/account"],
             "agent": ["/outbox", "/compose", "/preferences", "/account"]}
    passwords = {"admin": ADMIN_PASSWORD, "agent": AGENT_PASSWORD}
    login(client, "admin", ADMIN_PASSWORD)
    assert "training-banner" not in client.get("/outbox").text
    with app.app_context():
        settings_store.get_settings(seed["partition_id"]).training_enabled = True
        db.session.commit()
    for user, paths in pages.items():
        browser = app.test_client()
        login(browser, user, passwords[user])
        for path in paths:
            page = browser.get(path).text
            assert 'id="training-banner"' in page and "staged customers" in page, (user, path)


def test_turning_training_on_reloads_the_page_so_the_banner_shows(app, admin_client, seed):
    page = admin_client.get("/admin/mail-sender").text
    response = admin_client.post("/admin/mail-sender/parameters",
                                 data={**form_of(page), "training_enabled": "on"}, headers=HX)
    assert response.status_code == 200 and response.headers.get("HX-Refresh") == "true"
    reloaded = admin_client.get("/admin/mail-sender").text
    assert 'id="training-banner"' in reloaded and "Training mode is on" in reloaded
