"""No secret and no message body ever appears in a log: a real node process (`flask serve`, its
bookkeeping process beside it) logging at DEBUG from every logger delivers one message with
AUTH user and password and one with OAuth2 (a token server's client credentials, XOAUTH2), and
everything it printed, and everything this process logged while queueing, is searched for every
form of every secret (tests/secret_forms.py) and for the bodies' text."""
from __future__ import annotations

import json
import logging
import signal

from tests.conftest import SECRET_KEY
from tests.oauth.token_server import TokenServer
from tests.scheduler.conftest import FROM, start, statuses, wait_until
from tests.scheduler.test_processes import NodeProcess, holding
from tests.secret_forms import leaks
from tests.smtp_servers import SmtpServer
from webapp import _session_key
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.outbox import enqueue
from webapp.core.settings.store import get_settings, update_settings
from webapp.core.states import ORIGINATION, SENT

USER = "relay@acme.test"
PASSWORD = "Smtp/Pass+word-31!"
CLIENT_SECRET = "client secret/with+signs&more"
ACCESS_TOKEN = "access/token+for-the-relay"
SECOND = "second@example.test"
BODY = "The customer's account number is 8812-4471"
SECRETS = {"smtp_password": PASSWORD, "oauth2_client_secret": CLIENT_SECRET, "access_token": ACCESS_TOKEN,
           "fernet_key": SECRET_KEY, "session_key": _session_key(SECRET_KEY)}


def _save(app, partition_id: int, **fields) -> None:
    with app.app_context():
        result = update_settings(partition_id, fields, "test")
        assert result.ok, result.errors
        db.session.commit()


def _queue_one(app, partition_id: int, subject: str, to: str = "customer@example.test") -> int:
    with app.app_context():
        message = OutgoingMessage(partition_id=partition_id, kind=ORIGINATION, from_address=FROM, envelope_from=FROM,
                                  to_addresses=[to], subject=subject,
                                  body_text=f"{BODY} ({subject}).\n")
        enqueue(message, get_settings(partition_id))
        db.session.commit()
        return message.id


def _sent(app, message_id: int) -> bool:
    return statuses(app, [message_id]).get(SENT) == 1


def test_a_delivery_with_a_password_and_with_oauth2_logs_no_secret_and_no_body(
        app, seed, db_url, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    pid = seed["partition_id"]
    node = NodeProcess(db_url, tmp_path, "logging-node")
    node.env.update(MAILSENDER_LOG_LEVEL="DEBUG", MAILSENDER_LOG_FORMAT="json")
    # Two servers: the token's message goes out on a connection of its own, with XOAUTH2. A
    # sender whose wake began before the save may still try it with the password: the first
    # server defers it, and it is retried under the new settings.
    first = SmtpServer(users={USER: PASSWORD}, rcpt_replies={SECOND: ["451 4.3.0 Not here"]})
    with first as server, SmtpServer(xoauth2_tokens={USER: ACCESS_TOKEN}) as oauth_server, \
            TokenServer(access_token=ACCESS_TOKEN, client_secret=CLIENT_SECRET) as tokens:
        _save(app, pid, smtp_host=server.host, smtp_port=server.port, smtp_auth=True, smtp_username=USER,
              smtp_password=PASSWORD, sleep_minutes=0)
        node.start()
        try:
            wait_until(lambda: holding(app, "logging-node", senders=1), timeout=120, what="the node up")
            by_password = _queue_one(app, pid, "by password")
            start(app, pid)
            wait_until(lambda: _sent(app, by_password), what="the message sent with the password")
            _save(app, pid, smtp_port=oauth_server.port, smtp_auth=False, oauth2_enabled=True,
                  oauth2_provider="microsoft", oauth2_grant="client_credentials", oauth2_token_url=tokens.url,
                  oauth2_client_id="client-1", oauth2_client_secret=CLIENT_SECRET)
            by_token = _queue_one(app, pid, "by token", to=SECOND)
            wait_until(lambda: _sent(app, by_token), what="the message sent with XOAUTH2")
        finally:
            node.signal(signal.SIGTERM)
            assert node.wait() == 0
    assert tokens.grants() == ["client_credentials"]
    assert [BODY in message.data.decode() for message in server.messages + oauth_server.messages] == [True, True]

    printed = node.output()
    lines = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    # The search means something: the process did log at DEBUG, and the bookkeeping process's
    # lines (its standard error, the node's) are among what was read.
    assert any(line["level"] == "DEBUG" for line in lines)
    assert any(line["logger"] == "mailsender.engine" and line["message"].startswith("node logging-node started")
               for line in lines), "the serving process's own lines are JSON too"
    assert {(line.get("message_id"), line["message"]) for line in lines if line["logger"] == "mailsender.delivery"
            and line["message"] == "message sent"} == {(by_password, "message sent"), (by_token, "message sent")}
    # This process queued the messages: its own lines, less the test's SMTP server's (aiosmtpd's
    # "mail.log", which logs what it was sent).
    here = "\n".join(f"{record.name} {record.getMessage()} {record.__dict__}"
                     for record in caplog.records if not record.name.startswith("mail.log"))
    assert "message queued" in here
    for where, text in (("the node's output", printed), ("this process's log", here)):
        assert leaks(text, SECRETS, USER) == [], where
        assert BODY not in text, where
