"""An administrator works the Mail Sender window in Chromium: Auth, a refused save, a fixed save,
Cancel, and Stop turning the light red."""
import pytest
from playwright.sync_api import expect

from scheduler.node import Node
from tests.conftest import ADMIN_PASSWORD, browser_login
from webapp.core.database import db
from webapp.core.models import Partition
from webapp.core.security import decrypt_secret
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser

PASSWORD = "relay-Pass-77"


@pytest.fixture
def node(app, seed):
    """This process's real node (the engine), following the wanted state and writing heartbeats."""
    running = Node(app)
    running.start()
    yield running
    running.stop(timeout=10)


def test_auth_refused_then_saved_cancel_restores_and_stop_turns_the_light_red(page, app, live_server, seed, node):
    with app.app_context():
        db.session.get(Partition, seed["partition_id"]).senders_wanted = "running"
        db.session.commit()
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    parameters = page.locator("#parameters")

    # 1. Turning on Auth shows its fields.
    password = page.get_by_label("SMTP Password", exact=True)
    expect(password).to_be_hidden()
    page.get_by_label("Use SMTP Auth", exact=True).check()
    expect(password).to_be_visible()
    expect(page.get_by_label("SMTP User", exact=True)).to_be_visible()
    expect(page.get_by_label("Secure SMTP (SSL)", exact=True)).to_be_visible()

    # 2. Saving without a password: a message box names the field; what was typed stays.
    page.get_by_label("SMTP User", exact=True).fill("relay")
    parameters.get_by_role("button", name="Save").click()
    errors = page.locator("#parameters-errors")
    expect(errors).to_be_visible()
    expect(errors).to_contain_text("SMTP Password")
    expect(page.get_by_label("SMTP User", exact=True)).to_have_value("relay")
    expect(page.get_by_label("Use SMTP Auth", exact=True)).to_be_checked()
    with app.app_context():
        assert get_settings(seed["partition_id"]).smtp_auth is False

    # 3. With the password the save goes through, and the password never comes back.
    page.get_by_label("SMTP Password", exact=True).fill(PASSWORD)
    parameters.get_by_role("button", name="Save").click()
    expect(page.locator("#parameters-saved")).to_be_visible()
    expect(page.locator("#parameters-errors")).to_have_count(0)
    assert PASSWORD not in page.content()
    with app.app_context():
        saved = get_settings(seed["partition_id"])
        assert (saved.smtp_auth, saved.smtp_username) == (True, "relay")
        assert decrypt_secret(saved.smtp_password_enc) == PASSWORD

    # 4. An edit, then Cancel: the saved value is back, without reloading the page.
    page.evaluate("window.notReloaded = true")
    page.get_by_label("Mail Sender batch size", exact=True).fill("7")
    parameters.get_by_role("button", name="Cancel").click()
    expect(page.get_by_label("Mail Sender batch size", exact=True)).to_have_value("100")
    expect(page.get_by_label("Use SMTP Auth", exact=True)).to_be_checked()
    assert page.evaluate("window.notReloaded") is True

    # 5. Stop: the node follows the wanted state and the status section turns red.
    status = page.locator("#status")
    expect(status.locator(".light.green.on")).to_have_text("All senders run", timeout=60_000)
    status.get_by_role("button", name="Stop").click()
    expect(status.locator("[data-wanted]")).to_have_text("stopped")
    expect(status.locator(".light.red.on")).to_have_text("No sender runs", timeout=60_000)
    with app.app_context():
        assert db.session.get(Partition, seed["partition_id"]).senders_wanted == "stopped"
