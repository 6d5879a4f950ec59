"""An administrator works the Mail Sender window in Chromium: Auth, a refused save, a fixed save,
Cancel, and Stop turning the light red."""
import threading
from datetime import timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Node, Partition, SenderInstance, utcnow
from webapp.security import decrypt_secret
from webapp.settings import get_settings

from ..conftest import ADMIN_PASSWORD, browser_login

pytestmark = pytest.mark.browser

PASSWORD = "relay-Pass-77"


class NodeStandIn:
    """Plays a node's part in the database while no real node runs in this test process: it keeps
    its lease and one sender's heartbeat, and runs or stops the sender as the wanted state says,
    which is the whole contract the status section reads."""

    def __init__(self, app, partition_id: int):
        self.app, self.partition_id = app, partition_id
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        with self.app.app_context():
            node = Node(name="browser-node", lease_owner="stand-in", lease_until=utcnow() + timedelta(seconds=30),
                        started_at=utcnow(), last_seen=utcnow())
            db.session.add(node)
            db.session.flush()
            db.session.add(SenderInstance(node_id=node.id, partition_id=self.partition_id, slot=0,
                                          running=False, heartbeat_at=utcnow()))
            db.session.commit()
        self.beat()
        self.thread.start()
        return self

    def beat(self):
        with self.app.app_context():
            now = utcnow()
            wanted = db.session.get(Partition, self.partition_id).senders_wanted
            node = db.session.scalars(select(Node).where(Node.name == "browser-node")).one()
            node.lease_until, node.last_seen = now + timedelta(seconds=30), now
            for sender in db.session.scalars(select(SenderInstance).where(SenderInstance.node_id == node.id)):
                sender.running, sender.heartbeat_at = wanted == "running", now
            db.session.commit()

    def _run(self):
        while not self.stopping.wait(0.2):
            try:
                self.beat()
            except Exception:  # a busy SQLite file: the next beat tries again
                pass

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(timeout=5)


def test_auth_refused_then_saved_cancel_restores_and_stop_turns_the_light_red(page, app, live_server, seed):
    with app.app_context():
        db.session.get(Partition, seed["partition_id"]).senders_wanted = "running"
        db.session.commit()
    with NodeStandIn(app, seed["partition_id"]):
        browser_login(page, live_server, "admin", ADMIN_PASSWORD)
        page.goto(f"{live_server.url}/admin/mail-sender")
        parameters = page.locator("#parameters")

        # 1. Turning on Auth shows its fields.
        password = page.get_by_label("SMTP password", exact=True)
        expect(password).to_be_hidden()
        page.get_by_label("Use SMTP Auth", exact=True).check()
        expect(password).to_be_visible()
        expect(page.get_by_label("SMTP user", exact=True)).to_be_visible()
        expect(page.get_by_label("Secure SMTP (SSL)", exact=True)).to_be_visible()

        # 2. Saving without a password: a message box names the field; what was typed stays.
        page.get_by_label("SMTP user", exact=True).fill("relay")
        parameters.get_by_role("button", name="Save").click()
        errors = page.locator("#parameters-errors")
        expect(errors).to_be_visible()
        expect(errors).to_contain_text("SMTP password")
        expect(page.get_by_label("SMTP user", exact=True)).to_have_value("relay")
        expect(page.get_by_label("Use SMTP Auth", exact=True)).to_be_checked()
        with app.app_context():
            assert get_settings(seed["partition_id"]).smtp_auth is False

        # 3. With the password the save goes through, and the password never comes back.
        page.get_by_label("SMTP password", exact=True).fill(PASSWORD)
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
        page.get_by_label("Batch size", exact=True).fill("7")
        parameters.get_by_role("button", name="Cancel").click()
        expect(page.get_by_label("Batch size", exact=True)).to_have_value("100")
        expect(page.get_by_label("Use SMTP Auth", exact=True)).to_be_checked()
        assert page.evaluate("window.notReloaded") is True

        # 5. Stop: the node follows the wanted state and the status section turns red.
        status = page.locator("#status")
        expect(status.locator(".light.green.on")).to_have_text("All senders run")
        status.get_by_role("button", name="Stop").click()
        expect(status.locator("[data-wanted]")).to_have_text("stopped")
        expect(status.locator(".light.red.on")).to_have_text("No sender runs", timeout=8000)
        with app.app_context():
            assert db.session.get(Partition, seed["partition_id"]).senders_wanted == "stopped"
