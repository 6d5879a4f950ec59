"""Every text that leaves the engine is scrubbed of the secrets before it is stored: a relay that
echoes the credentials it was sent (tests/echo_server.py) never gets them read back in the
message's error, its delivery attempts, its recipients, the outbox, the status or the logs."""
from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from tests.echo_server import EchoingSmtpServer
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.secret_forms import database_texts, leaks
from webapp.core.database import db
from webapp.core.models import SenderInstance
from webapp.core.security import encrypt_secret
from webapp.core.states import DEFERRED, FAILED

USER = "relay@acme.test"
PASSWORD = "S3cret/Pass+word!"
SECRETS = {"smtp_password": PASSWORD}


def _send_through(app, seed, make_node, server) -> list[int]:
    with app.app_context():
        password = encrypt_secret(PASSWORD)
    configure(app, seed["partition_id"], server, smtp_auth=True, smtp_username=USER, smtp_password_enc=password)
    ids = queue_messages(app, seed["partition_id"], 1)
    make_node()
    start(app, seed["partition_id"])
    return ids


def _everything_shown(client, ids, admin_api, agent_api) -> list[tuple[str, str]]:
    shown = []
    for who, headers in (("admin", admin_api), ("agent", agent_api)):
        for url in (f"/api/v1/messages/{ids[0]}", "/api/v1/messages", "/api/v1/mail-sender/status", "/api/v1/monitor"):
            shown.append((f"{who} {url}", client.get(url, headers=headers).text))
    return shown


@pytest.mark.parametrize("code, ends", [(550, FAILED), (451, DEFERRED)])
def test_a_relay_that_echoes_the_credentials_in_its_refusal_leaves_no_trace(
        app, client, seed, make_node, admin_api, agent_api, caplog, code, ends):
    caplog.set_level(logging.DEBUG)
    with EchoingSmtpServer(echo_at="rcpt", rcpt_code=code) as server:
        ids = _send_through(app, seed, make_node, server)
        wait_until(lambda: statuses(app, ids).get(ends) == 1, what=f"the message {ends}")
    assert server.echoes and leaks(server.echoes[0], SECRETS, USER), "the relay did not echo the credentials"
    answer = client.get(f"/api/v1/messages/{ids[0]}", headers=admin_api).json
    assert "[secret]" in answer["last_error"] and "[secret]" in answer["attempts"][0]["recipients"][0]["text"]
    places = [*database_texts(app), *_everything_shown(client, ids, admin_api, agent_api), ("logs", caplog.text)]
    assert [(where, leaks(text, SECRETS, USER)) for where, text in places if leaks(text, SECRETS, USER)] == []


def test_a_refused_login_that_echoes_the_auth_line_leaves_no_trace_in_the_status_either(
        app, client, seed, make_node, admin_api, agent_api, caplog):
    caplog.set_level(logging.DEBUG)
    with EchoingSmtpServer(echo_at="auth") as server:
        ids = _send_through(app, seed, make_node, server)
        wait_until(lambda: statuses(app, ids).get(DEFERRED) == 1, what="the message deferred")

        def sender_error():
            with app.app_context():
                return db.session.scalar(select(SenderInstance.last_error).where(SenderInstance.last_error.is_not(None)))

        error = wait_until(sender_error, what="the sender's error in its row")
    # A refused login is a configuration fault: the route pauses, saying why, scrubbed too.
    assert "configuration fault" in error and "[secret]" in error
    places = [*database_texts(app), *_everything_shown(client, ids, admin_api, agent_api), ("logs", caplog.text)]
    assert [(where, leaks(text, SECRETS, USER)) for where, text in places if leaks(text, SECRETS, USER)] == []
