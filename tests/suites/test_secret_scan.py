"""The secret scan: every secret set, a hostile relay that echoes the password it was sent, and
then every page, section and API answer fetched as the administrator and as an agent, and the
logs read: none holds a secret in plain, base64 or URL-encoded form. The database holds them
only encrypted (passwords and API tokens only as hashes)."""
from __future__ import annotations

import json
import logging
import re
from collections import Counter

import pytest
from sqlalchemy import select

from scheduler.node import Node
from scheduler.oauth import store_refresh_token
from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, login
from tests.echo_server import EchoingSmtpServer
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.secret_forms import database_texts, leaks
from webapp.core.database import db
from webapp.core.directory.lookups import root_department
from webapp.core.models import ApiToken, Mailbox
from webapp.core.settings.store import update_settings
from webapp.core.states import FAILED

USER = "relay@acme.test"
SECRETS = {
    "smtp_password": "Smtp/Pass+word-31!",
    "oauth2_client_secret": "client secret/with+signs&more",
    "oauth2_service_account_key": json.dumps({
        "type": "service_account", "client_email": "sender@project.test",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
                       "-----END PRIVATE KEY-----\n"}),
}
REFRESH_TOKEN = "refresh/token+of-the-consent"
PRIVATE_KEY_LINE = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
_ARGUMENT = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


class Tally:
    """What the scan fetched; shown once at the end of the run."""

    def __init__(self):
        self.counts = Counter()

    def pytest_terminal_summary(self, terminalreporter):
        if self.counts:
            terminalreporter.write_sep("-", "secret scan")
            terminalreporter.write_line(", ".join(f"{name}: {count}" for name, count in sorted(self.counts.items())))


TALLY = Tally()


@pytest.fixture
def every_secret_set(app, seed, tmp_path):
    """The relay's password used once (a message refused with the echo), then every secret stored."""
    with EchoingSmtpServer(echo_at="rcpt", rcpt_code=550) as relay:
        with app.app_context():
            result = update_settings(seed["partition_id"], {
                "smtp_host": relay.host, "smtp_port": relay.port, "smtp_auth": True, "smtp_username": USER,
                "smtp_password": SECRETS["smtp_password"]}, "test")
            assert result.ok, result.errors
            mailbox = Mailbox(partition_id=seed["partition_id"], address="info@acme.test", name="Acme",
                              department_id=root_department(seed["partition_id"]).id)
            db.session.add(mailbox)
            db.session.commit()
            mailbox_id = mailbox.id
        configure(app, seed["partition_id"])
        ids = queue_messages(app, seed["partition_id"], 1)
        app.config.update(MAILSENDER_SENDERS=1, MAILSENDER_MONITOR=False, MAILSENDER_SMTP_COMMAND_TIMEOUT=5.0)
        node = Node(app)
        node.start()
        try:
            start(app, seed["partition_id"])
            wait_until(lambda: statuses(app, ids).get(FAILED) == 1, what="the refused message failed")
        finally:
            node.stop(timeout=10)
        assert relay.echoes and leaks(relay.echoes[0], {"smtp_password": SECRETS["smtp_password"]}, USER)
        with app.app_context():
            result = update_settings(seed["partition_id"], {
                "oauth2_enabled": True, "oauth2_provider": "google", "oauth2_grant": "service_account",
                "oauth2_token_url": "http://127.0.0.1:9/token", "oauth2_client_id": "client-1",
                "oauth2_client_secret": SECRETS["oauth2_client_secret"],
                "oauth2_service_account_key": SECRETS["oauth2_service_account_key"]}, "test")
            assert result.ok, result.errors
            store_refresh_token(seed["partition_id"], REFRESH_TOKEN)
            db.session.commit()
        return {**seed, "message_id": ids[0], "mailbox_id": mailbox_id}


def _urls(app, world) -> list[str]:
    """Every GET route of the app, its ids filled in with objects of the seeded partition."""
    with app.app_context():
        ids = {"message_id": world["message_id"], "mailbox_id": world["mailbox_id"], "user_id": world["agent_id"],
               "department_id": root_department(world["partition_id"]).id,
               "token_id": db.session.scalar(select(ApiToken.id).limit(1))}
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        names = _ARGUMENT.findall(rule.rule)
        assert set(names) <= set(ids), f"{rule.rule}: the scan does not know what {names} name"
        urls.append(_ARGUMENT.sub(lambda m: str(ids[m.group(1)]), rule.rule))
    return sorted(urls)


def test_no_page_section_answer_log_or_row_gives_a_secret_away(app, every_secret_set, caplog):
    caplog.set_level(logging.DEBUG)
    world = every_secret_set
    admin, agent = app.test_client(), app.test_client()
    assert login(admin, "admin", ADMIN_PASSWORD).status_code == 302
    assert login(agent, "agent", AGENT_PASSWORD).status_code == 302
    tokens = {}
    for who, password in (("admin", ADMIN_PASSWORD), ("agent", AGENT_PASSWORD)):
        answer = app.test_client().post("/api/v1/tokens", json={"username": who, "password": password})
        tokens[who] = answer.json["token"]
    secrets = {**SECRETS, "refresh token": REFRESH_TOKEN, "private key": PRIVATE_KEY_LINE,
               "admin password": ADMIN_PASSWORD, "agent password": AGENT_PASSWORD,
               **{f"{who}'s API token": token for who, token in tokens.items()}}
    answers, statuses_seen = [], Counter()
    for url in _urls(app, world):
        for who, browser in (("admin", admin), ("agent", agent)):
            for how, headers in (("page", {}), ("section", {"HX-Request": "true"}),
                                 ("bearer", {"Authorization": f"Bearer {tokens[who]}"})):
                if how == "bearer" and not url.startswith("/api/"):
                    continue
                response = (app.test_client() if how == "bearer" else browser).get(url, headers=headers)
                statuses_seen[response.status_code] += 1
                # Read as text whatever it is (the icon is an image): a secret would be text in it.
                answers.append((f"{who} {how} {url} ({response.status_code})",
                                response.get_data().decode("utf-8", "replace") + json.dumps(dict(response.headers))))
    # The Test's answer too: against the saved host, which is the echoing relay's (gone now).
    test_answer = admin.post("/api/v1/mail-sender/test", headers={"Authorization": f"Bearer {tokens['admin']}"})
    answers.append(("admin POST /api/v1/mail-sender/test", test_answer.get_data(as_text=True)))
    TALLY.counts["answers read"] += len(answers)
    TALLY.counts.update({f"status {code}": count for code, count in statuses_seen.items()})

    shown = [(where, found) for where, text in answers if (found := leaks(text, secrets, USER))]
    assert shown == []
    assert leaks(caplog.text, secrets, USER) == []
    stored = database_texts(app)
    TALLY.counts["database values read"] += len(stored)
    assert [(where, found) for where, text in stored if (found := leaks(text, secrets, USER))] == []
    # The scan saw what it was meant to: the failed message's scrubbed reply, to the administrator.
    assert any("[secret]" in text for where, text in answers if where.startswith("admin bearer /api/v1/messages/"))
    assert statuses_seen[200] >= 40


@pytest.fixture(autouse=True)
def _tally(request):
    if not request.config.pluginmanager.is_registered(TALLY):
        request.config.pluginmanager.register(TALLY, "secret-scan-tally")
