"""`make run`'s demo: seeded data, and mail captured by the local SMTP server."""
import json
import os
import re
import smtplib
import socket

import pytest
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
        # so that the Monitor's notification, which goes to the administrators, has somewhere to go
        assert db.session.scalars(select(User.email).where(User.username == "admin")).one() == "admin@example.com"
        settings = db.session.scalars(select(MailSenderSettings)).one()
        assert (settings.smtp_host, settings.smtp_port) == ("127.0.0.1", 2525)
        assert settings.origination_from_mailbox_id is not None and settings.allow_change_origination_from
    printed = {words[0]: words[2] for words in (line.split() for line in lines[1:]) if words[1] == "password"}
    assert printed["admin"] == "demo-admin-pass"
    for username, password in printed.items():
        assert login(client, username, password).status_code == 302
        client.post("/logout", headers={"X-CSRFToken": "x"})
        client.delete_cookie("session")


@pytest.fixture
def captured(app, tmp_path, monkeypatch):
    """The demo's capture server and pages on the app, seeded; yields a function that mails it."""
    from webapp.demo import seed_demo, start_capture_server
    from webapp.views import demo

    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "demo-admin-pass")
    port = _free_port()
    controller = start_capture_server(str(tmp_path / "captured"), port)
    app.config["DEMO_CAPTURE_DIR"] = str(tmp_path / "captured")
    app.register_blueprint(demo.bp)
    with app.app_context():
        seed_demo(smtp_port=port)

    def send(sender, recipients, message: bytes):
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail(sender, recipients, message)

    yield send
    controller.stop()


def test_captured_mail_lists_time_from_to_and_subject_with_the_message_to_open(client, captured):
    captured("info@example.com", ["customer@example.org"],
             b"From: Example Info <info@example.com>\r\nTo: customer@example.org\r\n"
             b"Subject: Hello <b>from</b> the demo\r\n\r\nBody <script>text</script>\r\n")
    login(client, "admin", "demo-admin-pass")
    page = client.get("/demo/captured")
    assert page.status_code == 200
    mail = re.search(r'<tbody data-captured="\d+\.eml">(.*?)</tbody>', page.text, re.S)
    assert mail, page.text
    facts, message = re.findall(r"<tr[^>]*>(.*?)</tr>", mail.group(1), re.S)
    cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td>(.*?)</td>", facts, re.S)]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cells[0])
    assert cells[1:] == ["Example Info &lt;info@example.com&gt;", "customer@example.org",
                         "Hello &lt;b&gt;from&lt;/b&gt; the demo"]
    # The message itself, as text: what it holds is never markup of the page.
    assert "<details>" in message and "Body &lt;script&gt;text&lt;/script&gt;" in message
    assert "<script>text" not in page.text
    assert re.search(r'<nav aria-label="Main">.*href="/demo/captured"[^>]*>Captured mail</a>.*</nav>', page.text, re.S)


def test_a_captured_mail_whose_from_the_parser_cannot_read_is_listed_as_it_came(client, captured):
    captured("info@example.com", ["customer@example.org"],
             b"From: a@[\r\nTo: customer@example.org\r\nSubject: Odd\r\n\r\nBody\r\n")
    login(client, "admin", "demo-admin-pass")
    page = client.get("/demo/captured")
    assert page.status_code == 200 and "a@[" in page.text and "Odd" in page.text


def test_captured_mail_is_for_administrators_only(client, captured):
    login(client, "alice", _printed_password(client, "alice"))
    response = client.get("/demo/captured")
    assert response.status_code == 403 and "Not open to you" in response.text
    assert 'href="/demo/captured"' not in response.text


def test_demo_pages_are_not_served_outside_the_demo(client, seed):
    assert client.get("/demo/captured").status_code == 404


def _printed_password(client, username: str) -> str:
    with open(os.path.join(client.application.instance_path, "demo-credentials.json"), encoding="utf-8") as handle:
        return json.load(handle)[username]
