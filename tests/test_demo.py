"""`make run`'s demo: seeded data, and mail captured by the local SMTP server."""
import smtplib
import socket

from sqlalchemy import select

from tests.conftest import login
from webapp.core.database import db
from webapp.core.models import Department, Mailbox, MailSenderSettings, User


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_seed_makes_departments_mailboxes_and_users_whose_printed_passwords_log_in(app, client, monkeypatch):
    from webapp.demo import seed_demo

    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "demo-admin-pass")
    with app.app_context():
        lines = seed_demo(smtp_port=2525)
        again = seed_demo(smtp_port=2525)
        assert lines == again  # the same passwords on every run
        assert db.session.query(Department).count() == 3
        assert db.session.query(Mailbox).count() == 4
        assert {u.role for u in db.session.scalars(select(User))} == {"admin", "agent"}
        settings = db.session.scalars(select(MailSenderSettings)).one()
        assert (settings.smtp_host, settings.smtp_port) == ("127.0.0.1", 2525)
        assert settings.origination_from_mailbox_id is not None and settings.allow_change_origination_from
    printed = {words[0]: words[2] for words in (line.split() for line in lines[1:]) if words[1] == "password"}
    assert printed["admin"] == "demo-admin-pass"
    for username, password in printed.items():
        assert login(client, username, password).status_code == 302
        client.post("/logout", headers={"X-CSRFToken": "x"})
        client.delete_cookie("session")


def test_captured_mail_shows_at_demo_captured(app, client, tmp_path, monkeypatch):
    from webapp.demo import seed_demo, start_capture_server
    from webapp.views import demo

    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "demo-admin-pass")
    port = _free_port()
    controller = start_capture_server(str(tmp_path / "captured"), port)
    try:
        app.config["DEMO_CAPTURE_DIR"] = str(tmp_path / "captured")
        app.register_blueprint(demo.bp)
        with app.app_context():
            seed_demo(smtp_port=port)
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail("info@example.com", ["customer@example.org"],
                          b"Subject: Hello from the demo\r\n\r\nBody text\r\n")
    finally:
        controller.stop()
    login(client, "admin", "demo-admin-pass")
    page = client.get("/demo/captured")
    assert page.status_code == 200
    assert "Hello from the demo" in page.text and "customer@example.org" in page.text


def test_demo_pages_are_not_served_outside_the_demo(client, seed):
    assert client.get("/demo/captured").status_code == 404
