"""An administrator meets a paused route in Chromium: the status says why in the yellow position,
and typing the right password and saving resumes sending (a real node and aiosmtpd)."""
import pytest
from playwright.sync_api import expect

from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.security import encrypt_secret

pytestmark = pytest.mark.browser

PASSWORD = "relay-Pass-77"



def test_a_refused_login_pauses_the_route_and_saving_the_right_password_resumes_it(
        page, app, live_server, seed, node, tmp_path):
    pid = seed["partition_id"]
    with SmtpServer(users={"relay": PASSWORD}) as server:
        with app.app_context():
            wrong = encrypt_secret("not-the-password")
        configure(app, pid, server, sleep_minutes=0, smtp_auth=True, smtp_username="relay", smtp_password_enc=wrong)
        ids = queue_messages(app, pid, 2)
        start(app, pid)
        browser_login(page, live_server, "admin", ADMIN_PASSWORD)
        page.goto(f"{live_server.url}/admin/mail-sender")
        problem = page.locator("#status .delivery-problem")
        expect(problem).to_contain_text("Paused", timeout=30_000)
        expect(problem).to_contain_text("535")
        expect(page.locator("#status .light.yellow.on")).to_contain_text("Paused: the SMTP settings need attention")
        page.screenshot(path=str(tmp_path / "paused.png"), full_page=True)
        assert statuses(app, ids) == {"deferred": 1, "queued": 1}

        page.get_by_label("SMTP Password", exact=True).fill(PASSWORD)
        page.locator("#parameters").get_by_role("button", name="Save").click()
        expect(page.locator("#parameters")).to_contain_text("Saved", timeout=15_000)
        server.wait_for(2)
        wait_until(lambda: statuses(app, ids) == {"sent": 2}, what="both sent after the save")
        expect(page.locator("#status .delivery-problem")).to_have_count(0, timeout=30_000)
        expect(page.locator("#status .light.green.on")).to_be_visible()
