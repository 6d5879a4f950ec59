"""The monitor's webhook: signed alerts at a real HTTP server while the SMTP server refuses AUTH.

Each test starts its own http.server on 127.0.0.1 (HookServer) and points the partition's
webhook at it; the SMTP server is a real aiosmtpd that refuses the password we give it. A minute
is 0.2 s here, so the retries' waits (1, 2, 4, 8 minutes) take 3 s in all.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import update

from scheduler.monitor import rounds, webhook
from tests.conftest import ADMIN_PASSWORD, api_token
from tests.mailsender.test_window import form_of
from tests.monitor.conftest import ago, notifications, queued, state
from tests.scheduler.conftest import configure, queue_messages, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.models import Notification
from webapp.core.security import encrypt_secret
from webapp.core.settings.store import get_settings
from webapp.core.states import CHANNEL_FAILED, CHANNEL_OFF, CHANNEL_OK, DEFERRED

pytestmark = pytest.mark.databases

SECRET = "hook-secret-0123456789"
HX = {"HX-Request": "true"}


class HookServer:
    """A real HTTP server on 127.0.0.1 that records every request and answers from a script:
    the n-th request gets the n-th status (the last repeats); a 3xx carries `location`."""

    def __init__(self, statuses=(200,), location: str | None = None):
        self.statuses = list(statuses)
        self.location = location
        self.requests: list[dict] = []
        self._condition = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self._record()

            def do_GET(self):
                self._record()

            def _record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._condition:
                    number = len(server.requests)
                    server.requests.append({"path": self.path, "method": self.command, "body": body,
                                            "headers": dict(self.headers), "at": time.monotonic()})
                    server._condition.notify_all()
                status = server.statuses[min(number, len(server.statuses) - 1)]
                said = b'{"error": "the receiver is down"}' if status >= 500 else b"{}"
                self.send_response(status)
                if 300 <= status < 400 and server.location:
                    self.send_header("Location", server.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(said)))
                self.end_headers()
                self.wfile.write(said)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/mail-sender"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HookServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict]:
        with self._condition:
            if not self._condition.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} of {count} webhook calls arrived in {timeout} s")
            return list(self.requests)


def verifies(request: dict, secret: str) -> bool:
    """What a receiver does: the HMAC of the timestamp, a dot and the raw body, with its secret."""
    timestamp = request["headers"]["X-MailSender-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + request["body"],
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request["headers"]["X-MailSender-Signature"])


@pytest.fixture
def refusing_smtp():
    """An SMTP server that requires AUTH and refuses the password the settings hold."""
    with SmtpServer(users={"mailer": "the-right-password"}) as server:
        yield server


def failing_smtp_and_hook(app, pid, smtp, url, **fields):
    with app.app_context():
        configure(app, pid, smtp, smtp_auth=True, smtp_username="mailer",
                  smtp_password_enc=encrypt_secret("a-wrong-password"), webhook_url=url,
                  webhook_secret_enc=encrypt_secret(SECRET), **fields)


def one_round(app, partition_id):
    with app.app_context():
        return rounds.run_round(partition_id, "test-node", force=True)


def test_with_smtp_auth_refused_the_webhook_gets_the_threshold_alert_signed(app, seed, refusing_smtp):
    pid = seed["partition_id"]
    with HookServer() as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_pending_threshold=0)
        queued(app, pid, 2)
        report = one_round(app, pid)
        [call] = hook.wait_for(1)
    assert refusing_smtp.messages == []
    assert call["method"] == "POST" and call["path"] == "/hooks/mail-sender"
    assert call["headers"]["Content-Type"].startswith("application/json")
    assert verifies(call, SECRET)
    alert = json.loads(call["body"])
    [row] = notifications(app)
    assert (alert["kind"], alert["partition"], alert["notification_id"]) == ("threshold", "Acme", row.id)
    assert (alert["pending"], alert["threshold"]) == (2, 0)
    assert alert["subject"] == row.subject and alert["body"] == row.body and alert["created_at"]
    assert call["headers"]["X-MailSender-Notification"] == str(row.id)
    # The e-mail failed on the refused login; the webhook told somebody, so the round is done.
    assert not row.ok and "535" in row.error
    assert (row.webhook_status, row.webhook_attempts, row.webhook_error, row.webhook_code) == (CHANNEL_OK, 1, None, 200)
    [told] = report.notifications
    assert told.ok and not told.email_ok
    assert "535" in state(app, pid).notify_error  # the banner still says that the e-mail failed


def test_a_signature_made_with_another_secret_or_over_other_bytes_does_not_verify(app, seed, refusing_smtp):
    pid = seed["partition_id"]
    with HookServer() as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_pending_threshold=0)
        queued(app, pid, 1)
        one_round(app, pid)
        [call] = hook.wait_for(1)
    assert verifies(call, SECRET)
    assert not verifies(call, "another-secret-0123456789")
    assert not verifies({**call, "body": call["body"].replace(b'"pending":1', b'"pending":0')}, SECRET)
    later = {**call, "headers": {**call["headers"],
                                 "X-MailSender-Timestamp": str(int(call["headers"]["X-MailSender-Timestamp"]) + 1)}}
    assert not verifies(later, SECRET)  # the timestamp is signed: a replay cannot claim a new one


def test_a_running_node_sends_a_stuck_alert_to_the_webhook_while_auth_is_refused(app, seed, refusing_smtp, node):
    pid = seed["partition_id"]
    with HookServer() as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_sleep_minutes=1)
        [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, last_error="451 4.3.0 Mailbox busy")
        [call] = hook.wait_for(1)
        assert verifies(call, SECRET)
        alert = json.loads(call["body"])
        assert alert["kind"] == "stuck" and alert["stuck_count"] == 1
        assert [(m["id"], m["reason"], m["last_error"]) for m in alert["messages"]] == [
            (stuck, "repeated_failures", "451 4.3.0 Mailbox busy")]
        wait_until(lambda: notifications(app, "stuck") and notifications(app, "stuck")[0].error,
                   what="the e-mail's outcome recorded")
    [row] = notifications(app, "stuck")
    assert not row.ok and "535" in row.error and row.webhook_status == CHANNEL_OK
    assert refusing_smtp.messages == []


def test_the_webhook_url_is_checked_as_the_oauth2_urls_are(app, seed, client):
    headers = api_token(client, "admin", ADMIN_PASSWORD)

    def put(**fields):
        return client.put("/api/v1/mail-sender/settings", json=fields, headers=headers)

    refused = put(webhook_url="http://hooks.example.test/alerts", webhook_secret=SECRET)
    assert refused.status_code == 422 and "https" in refused.json["fields"]["webhook_url"]
    refused = put(webhook_url="https://169.254.169.254/latest/meta-data", webhook_secret=SECRET)
    assert refused.status_code == 422 and "link-local" in refused.json["fields"]["webhook_url"]
    refused = put(webhook_url="https://[fe80::1]/hook", webhook_secret="short")
    assert refused.status_code == 422 and set(refused.json["fields"]) == {"webhook_url", "webhook_secret"}
    assert put(webhook_url="https://hooks.example.test/alerts").json["fields"] == {
        "webhook_secret": "is required with a Monitor webhook URL: every call is signed with it"}
    saved = put(webhook_url="http://127.0.0.1:9/hook", webhook_secret=SECRET)  # plain http: loopback only
    assert saved.status_code == 200 and saved.json["webhook_url"] == "http://127.0.0.1:9/hook"
    assert saved.json["webhook_secret_set"] is True and SECRET not in saved.text


def test_the_stored_secret_goes_only_to_the_url_it_was_saved_with(app, seed, client):
    headers = api_token(client, "admin", ADMIN_PASSWORD)

    def put(**fields):
        return client.put("/api/v1/mail-sender/settings", json=fields, headers=headers)

    assert put(webhook_url="https://hooks.example.test/alerts", webhook_secret=SECRET).status_code == 200
    moved = put(webhook_url="https://elsewhere.example.test/alerts")
    assert moved.status_code == 422 and "must be typed again" in moved.json["fields"]["webhook_secret"]
    cleared = put(webhook_url="")
    assert cleared.status_code == 200 and cleared.json["webhook_secret_set"] is False
    assert [w["field"] for w in cleared.json["warnings"]] == ["webhook_secret"]


def test_the_monitor_settings_show_the_webhook_fields_and_name_their_errors(admin_client):
    page = admin_client.get("/admin/mail-sender").text
    assert 'id="f-webhook_url"' in page and 'id="f-webhook_secret"' in page
    assert page.index('id="field-monitor_pending_threshold"') < page.index('id="field-webhook_url"')
    monitor = page[page.index('id="monitor-settings-form"'):]
    data = {**form_of(monitor.replace('id="monitor-settings-form"', 'id="parameters-form"', 1)),
            "webhook_url": "http://hooks.example.test/alerts", "webhook_secret": SECRET}
    response = admin_client.post("/admin/mail-sender/monitor-settings", data=data, headers=HX)
    assert response.status_code == 422
    assert 'id="error-webhook_url"' in response.text and "Monitor webhook URL must be https" in response.text
    # The secret typed comes back into its own field only, so that it need not be typed again.
    assert response.text.count(SECRET) == 1 and f'value="{SECRET}"' in response.text


def test_an_address_refused_by_the_rules_is_refused_again_at_send_time(app, seed, refusing_smtp):
    pid = seed["partition_id"]
    # Stored past the validator (as an older release, or a hand-edited row, might have).
    failing_smtp_and_hook(app, pid, refusing_smtp, "https://169.254.169.254/latest/meta-data",
                          monitor_pending_threshold=0)
    queued(app, pid, 1)
    [sent] = one_round(app, pid).notifications
    [row] = notifications(app)
    assert row.webhook_status == CHANNEL_FAILED and row.webhook_attempts == 1  # not worth a retry
    assert "link-local" in row.webhook_error
    assert not sent.ok  # nobody was told: the next round tries again
    with app.app_context():
        assert webhook.url_refusal("http://localhost:1/hook") is None
        assert "link-local" in webhook.url_refusal("https://[fe80::1%25eth0]/hook")


def test_a_redirect_is_not_followed(app, seed, refusing_smtp):
    pid = seed["partition_id"]
    with HookServer() as target, HookServer(statuses=[302], location=None) as hook:
        hook.location = target.url
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_pending_threshold=0)
        queued(app, pid, 1)
        one_round(app, pid)
        hook.wait_for(1)
        with app.app_context():
            assert webhook.retry_due(pid) == 0  # nothing left to try
    assert target.requests == [] and len(hook.requests) == 1
    [row] = notifications(app)
    assert (row.webhook_status, row.webhook_code, row.webhook_attempts) == (CHANNEL_FAILED, 302, 1)
    assert "redirect" in row.webhook_error and target.url in row.webhook_error


def test_a_500_is_retried_with_growing_waits_then_recorded_as_failed_with_its_reason(
        app, seed, refusing_smtp, node):
    pid = seed["partition_id"]
    with HookServer(statuses=[500]) as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_sleep_minutes=1,
                              monitor_pending_threshold=0)
        queue_messages(app, pid, 1)
        wait_until(lambda: [n for n in notifications(app) if n.webhook_status == CHANNEL_FAILED],
                   what="the webhook given up")
        calls = list(hook.requests)
    [row] = notifications(app)  # the webhook was still trying: the round did not notify again
    assert row.webhook_attempts == webhook.ATTEMPTS == len(calls) == 5
    assert [c["headers"]["X-MailSender-Attempt"] for c in calls] == ["1", "2", "3", "4", "5"]
    assert all(c["body"] == calls[0]["body"] and verifies(c, SECRET) for c in calls)
    minute = app.config["MAILSENDER_MINUTE_SECONDS"]
    waits = [later["at"] - earlier["at"] for earlier, later in zip(calls, calls[1:])]
    for wait, minutes in zip(waits, (1, 2, 4, 8)):
        assert wait >= minutes * minute * 0.9, waits
    assert "HTTP 500" in row.webhook_error and "the receiver is down" in row.webhook_error
    assert "gave up after 5 attempts" in row.webhook_error and row.webhook_code == 500


def test_a_receiver_that_comes_back_gets_the_alert_on_a_retry(app, seed, refusing_smtp, node):
    pid = seed["partition_id"]
    with HookServer(statuses=[503, 500, 200]) as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_sleep_minutes=1,
                              monitor_pending_threshold=0)
        queue_messages(app, pid, 1)
        wait_until(lambda: [n for n in notifications(app) if n.webhook_status == CHANNEL_OK],
                   what="the webhook delivered")
        assert len(hook.requests) == 3
    [row] = notifications(app)
    assert (row.webhook_attempts, row.webhook_error, row.webhook_code) == (3, None, 200)


def test_the_window_and_the_api_show_each_channels_outcome(app, seed, refusing_smtp, admin_client):
    pid = seed["partition_id"]
    with HookServer(statuses=[500]) as down, HookServer() as up:
        failing_smtp_and_hook(app, pid, refusing_smtp, up.url, monitor_pending_threshold=0)
        queued(app, pid, 1)
        one_round(app, pid)
        configure(app, pid, webhook_url=down.url)
        queued(app, pid, 1, status=DEFERRED, attempt_count=3)
        one_round(app, pid)
    section = admin_client.get("/admin/mail-sender/monitor", headers=HX).text
    stuck, threshold = notifications(app, "stuck")[0], notifications(app, "threshold")[0]
    row = section[section.index(f'id="notification-{threshold.id}"'):]
    row = row[:row.index("</tr>")]
    assert 'data-email="failed"' in row and 'data-webhook="ok"' in row
    assert "not delivered" in row and "535" in row and "delivered (HTTP 200), attempt 1" in row
    row = section[section.index(f'id="notification-{stuck.id}"'):]
    row = row[:row.index("</tr>")]
    assert 'data-webhook="pending"' in row and "retrying" in row and "HTTP 500" in row

    api = app.test_client()
    listed = api.get("/api/v1/monitor", headers=api_token(api, "admin", ADMIN_PASSWORD)).json["notifications"]
    assert [n["id"] for n in listed] == [stuck.id, threshold.id]  # newest first
    assert listed[1]["email"]["status"] == "failed" and "535" in listed[1]["email"]["error"]
    assert listed[1]["webhook"] == {"status": "ok", "error": None, "attempts": 1, "code": 200,
                                    "next_attempt_at": None, "done_at": listed[1]["webhook"]["done_at"]}
    assert listed[0]["webhook"]["status"] == "pending" and listed[0]["webhook"]["next_attempt_at"]
    assert "HTTP 500" in listed[0]["webhook"]["error"]


def test_without_a_webhook_nothing_is_posted_and_the_channel_shows_off(app, seed, smtp_server):
    pid = seed["partition_id"]
    configure(app, pid, smtp_server, monitor_pending_threshold=0)
    queued(app, pid, 1)
    [sent] = one_round(app, pid).notifications
    [row] = notifications(app)
    assert row.ok and row.webhook_status == CHANNEL_OFF and row.webhook_attempts == 0
    assert sent.ok and sent.webhook_status == CHANNEL_OFF


def test_an_attempt_is_claimed_once_and_one_whose_node_died_on_the_last_is_given_up(app, seed, refusing_smtp):
    pid = seed["partition_id"]
    with HookServer(statuses=[500]) as hook:
        failing_smtp_and_hook(app, pid, refusing_smtp, hook.url, monitor_pending_threshold=0)
        queued(app, pid, 1)
        one_round(app, pid)
        [row] = notifications(app)
        with app.app_context():
            # Due now, as a node would find it; the first claim leases it, so a second finds nothing.
            db.session.execute(update(Notification).values(webhook_next_at=ago(1)))
            db.session.commit()
            settings = get_settings(pid)
            assert webhook.attempt(row.id, settings) is True
            assert webhook.attempt(row.id, settings) is False
            assert len(hook.requests) == 2
            # The last attempt claimed by a node that died: its lease ran out with no outcome.
            db.session.execute(update(Notification).values(webhook_attempts=webhook.ATTEMPTS,
                                                           webhook_next_at=ago(1)))
            db.session.commit()
            assert webhook.retry_due(pid) == 0
    [row] = notifications(app)
    assert row.webhook_status == CHANNEL_FAILED and "stopped answering" in row.webhook_error
    assert len(hook.requests) == 2


def test_another_partitions_notifications_are_not_shown(app, seed, admin_client):
    with app.app_context():
        other = create_partition("Globex")
        db.session.flush()
        db.session.add(Notification(partition_id=other.id, kind="threshold", subject="Globex is piling up",
                                    ok=True, webhook_status=CHANNEL_OK, webhook_attempts=1))
        db.session.commit()
    section = admin_client.get("/admin/mail-sender/monitor", headers=HX).text
    assert "Globex is piling up" not in section and 'id="monitor-no-notifications"' in section
    api = app.test_client()
    answer = api.get("/api/v1/monitor", headers=api_token(api, "admin", ADMIN_PASSWORD)).json
    assert answer["notifications"] == []
