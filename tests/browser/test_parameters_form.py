"""The Parameters form of the Mail Sender window as an administrator uses it in Chromium: the outcome of
a Save is seen where they pressed it, the box that lists what is wrong is brought into view and leads
to each field, the seed's labels and groups, the Monitor's settings beside the Monitor, the Action
Buttons always in view, and a refused save that keeps what was typed, secrets too."""
import json
import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import keep_screenshot
from tests.scheduler.conftest import queue_messages
from tests.conftest import ADMIN_PASSWORD, browser_login
from webapp.core.database import db
from webapp.core.settings.store import get_settings, update_settings

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
SEED_LABELS = ("Mail Sender batch size", "Enable Monitor", "Monitor Sleep time (in minutes)",
               "Notify if Pending Messages count exceeds:", "Client (Application) ID", "Authorization Url",
               "SMTP User", "SMTP Password")


def open_window(page, live_server, viewport=None):
    if viewport:
        page.set_viewport_size(viewport)
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    expect(page.locator("#parameters-form")).to_be_visible()


def scroll_to_the_end(page):
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")


def save(page):
    page.locator("#parameter-actions").get_by_role("button", name="Save").click()


def stored(app, seed):
    with app.app_context():
        return get_settings(seed["partition_id"])


@pytest.mark.parametrize("size", WIDTHS)
def test_after_save_the_outcome_is_seen_where_the_user_is_and_the_box_leads_to_each_field(page, app, live_server,
                                                                                        seed, size):
    open_window(page, live_server, WIDTHS[size])
    page.get_by_label("Mail Sender batch size", exact=True).fill("0")
    page.get_by_label("Log e-mail address", exact=True).fill("not-an-email")
    scroll_to_the_end(page)
    save(page)

    errors = page.locator("#parameters-errors")
    expect(errors).to_be_in_viewport()
    expect(errors).to_be_focused()
    expect(errors).to_contain_text("Not saved: 2 fields need attention")
    outcome = page.locator("#parameters-outcome")
    expect(outcome).to_have_text(re.compile(r"Not saved: 2 fields need attention"))
    expect(outcome).to_be_in_viewport()
    keep_screenshot(page, f"parameters-refused-{WIDTHS[size]['width']}", full_page=False)

    # In the form's order, and each reason said once.
    entries = errors.locator("li")
    expect(entries).to_have_count(2)
    expect(entries.nth(0)).to_contain_text("Mail Sender batch size")
    expect(entries.nth(1)).to_contain_text("Log e-mail address")
    assert entries.nth(1).inner_text().count("not an e-mail address") == 1
    assert entries.nth(1).inner_text().count("'not-an-email'") == 1
    assert page.locator("#error-log_email_address").inner_text().count("not an e-mail address") == 1

    # Following an entry lands on its field, focused and in view.
    errors.get_by_role("link", name="Log e-mail address").click()
    address = page.get_by_label("Log e-mail address", exact=True)
    expect(address).to_be_focused()
    expect(address).to_be_in_viewport()

    address.fill("archive@acme.test")
    page.get_by_label("Mail Sender batch size", exact=True).fill("50")
    scroll_to_the_end(page)
    save(page)
    expect(outcome).to_have_text(re.compile(r"Saved \(version 2\)"))
    expect(outcome).to_be_in_viewport()
    expect(page.locator("#parameters-errors")).to_have_count(0)
    keep_screenshot(page, f"parameters-saved-{WIDTHS[size]['width']}", full_page=False)
    assert stored(app, seed).batch_size == 50


def test_the_action_buttons_stay_in_view_on_the_long_page(page, live_server, seed):
    open_window(page, live_server)
    buttons = page.get_by_role("region", name="Action Buttons")
    for name in ("Save", "Test", "Cancel"):
        expect(buttons.get_by_role("button", name=name, exact=True)).to_be_in_viewport()
    page.get_by_label("Use SMTP Auth", exact=True).scroll_into_view_if_needed()
    expect(buttons.get_by_role("button", name="Save", exact=True)).to_be_in_viewport()


def test_turning_training_on_shows_the_banner_and_the_saved_note_after_the_reload(page, live_server, seed):
    open_window(page, live_server)
    page.get_by_label("Enable training", exact=True).check()
    scroll_to_the_end(page)
    save(page)
    banner = page.locator("#training-banner")
    expect(banner).to_be_visible()
    expect(banner).to_be_in_viewport()
    expect(banner).to_be_focused()
    expect(page.locator("main .flash").filter(has_text="Settings saved")).to_be_in_viewport()
    expect(page.locator("main .flash")).to_have_count(1)  # the banner alone says that training is on
    keep_screenshot(page, "parameters-training-on-1280", full_page=False)


def test_the_seeds_labels_name_the_fields(page, live_server, seed):
    open_window(page, live_server)
    for label in SEED_LABELS:
        expect(page.get_by_label(label, exact=True)).to_have_count(1)


def test_the_groups_are_the_seeds_and_each_oauth2_option_is_below_its_checkbox(page, live_server, seed):
    open_window(page, live_server)
    default_from = page.get_by_role("group", name="Default From address")
    # Its three options and the system default's selector.
    for label in ("Allow users to change default for replies", "Default From: for originations",
                  "Allow users to change default for originations", "SMTP Envelope Sender"):
        expect(default_from.get_by_label(label, exact=True)).to_have_count(1)
    smtp = page.get_by_role("group", name="SMTP", exact=True)
    for label in ("SMTP server", "SMTP port", "Use SMTP Auth", "SMTP User", "SMTP Password"):
        expect(smtp.get_by_label(label, exact=True)).to_have_count(1)

    oauth2 = page.get_by_role("group", name="OAuth2", exact=True)
    enabled = oauth2.get_by_label("Use OAuth2 SMTP", exact=True)
    enabled.check()
    oauth2.get_by_label("OAuth2 grant", exact=True).select_option("authorization_code")
    below = enabled.bounding_box()["y"]
    for label in ("OAuth2 provider", "OAuth2 grant", "Authorization Url", "Token URL", "Client (Application) ID",
                  "Client Secret"):
        option = oauth2.get_by_label(label, exact=True)
        expect(option).to_be_visible()
        assert option.bounding_box()["y"] > below, label
    grant = oauth2.get_by_label("OAuth2 grant", exact=True).bounding_box()["y"]
    authorize = oauth2.locator("#field-oauth2_authorization")
    expect(authorize).to_be_visible()
    assert authorize.bounding_box()["y"] > grant
    keep_screenshot(page, "parameters-groups-1280")


def test_the_monitor_settings_are_saved_in_the_monitor_section_and_a_later_parameters_save_is_no_conflict(
        page, app, live_server, seed):
    open_window(page, live_server)
    parameters = page.locator("#parameters")
    expect(parameters.get_by_label("Enable Monitor", exact=True)).to_have_count(0)
    # In the Monitor section, under its heading.
    settings = page.locator("#monitor #monitor-settings")
    expect(settings).to_have_count(1)
    assert page.locator("#monitor-title").bounding_box()["y"] < settings.bounding_box()["y"]

    sleep = settings.get_by_label("Monitor Sleep time (in minutes)", exact=True)
    sleep.fill("0")
    # A poll that changes the section (a message is queued) leaves what is being typed into its settings alone.
    queue_messages(app, seed["partition_id"], 1)
    expect(page.locator("#monitor-pending")).to_have_attribute("data-pending", "1")
    expect(sleep).to_have_value("0")
    settings.get_by_role("button", name="Save").click()
    expect(settings.locator("#error-monitor_sleep_minutes")).to_contain_text("must be from 1 to 1440")
    expect(settings.locator("#monitor-settings-errors")).to_be_focused()
    assert stored(app, seed).monitor_sleep_minutes == 5

    settings.get_by_label("Monitor Sleep time (in minutes)", exact=True).fill("7")
    settings.get_by_label("Notify if Pending Messages count exceeds:", exact=True).fill("40")
    settings.get_by_role("button", name="Save").click()
    expect(settings.locator("#monitor-settings-outcome")).to_contain_text("Saved (version 2)")
    expect(page.locator("#monitor .monitor-settings")).to_contain_text("runs every 7 minutes")
    row = stored(app, seed)
    assert (row.monitor_sleep_minutes, row.monitor_pending_threshold, row.batch_size) == (7, 40, 100)

    # Parameters was loaded at version 1; the Monitor's save touched none of its fields.
    parameters.get_by_label("Mail Sender batch size", exact=True).fill("60")
    save(page)
    expect(page.locator("#parameters-outcome")).to_contain_text("Saved (version 3)")
    expect(page.locator("#parameters-conflict")).to_have_count(0)
    row = stored(app, seed)
    assert (row.batch_size, row.monitor_sleep_minutes, row.monitor_enabled) == (60, 7, True)


def test_a_refused_save_keeps_the_secrets_the_user_typed(page, app, live_server, seed):
    open_window(page, live_server)
    page.get_by_label("Use SMTP Auth", exact=True).check()
    page.get_by_label("SMTP Password", exact=True).fill("typed-pass-1")
    page.get_by_label("Use OAuth2 SMTP", exact=True).check()
    page.get_by_label("OAuth2 grant", exact=True).select_option("service_account")
    key = json.dumps({"type": "service_account", "client_email": "robot@example.iam.test",
                      "private_key": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"})
    page.get_by_label("Service Account Key", exact=True).fill(key)
    save(page)  # refused: no provider, no SMTP User, no Token URL
    expect(page.locator("#parameters-errors")).to_be_visible()
    expect(page.get_by_label("Service Account Key", exact=True)).to_have_value(key)
    expect(page.get_by_label("SMTP Password", exact=True)).to_have_value("typed-pass-1")
    expect(page.locator("#parameters-errors")).not_to_contain_text("again")
    row = stored(app, seed)
    assert row.oauth2_service_account_key_enc is None and row.smtp_password_enc is None


def test_a_conflicting_save_shows_what_changed_in_view_and_focused(page, app, live_server, seed):
    open_window(page, live_server)
    with app.app_context():
        assert update_settings(seed["partition_id"], {"batch_size": 70}, "other-admin").saved
        db.session.commit()
    page.get_by_label("Mail Sender batch size", exact=True).fill("60")
    scroll_to_the_end(page)
    save(page)
    conflict = page.locator("#parameters-conflict")
    expect(conflict).to_be_in_viewport()
    expect(conflict).to_be_focused()
    expect(conflict).to_contain_text("other-admin")
    expect(page.locator("#parameters-outcome")).to_contain_text("Not saved: someone else saved meanwhile")
    assert stored(app, seed).batch_size == 70
