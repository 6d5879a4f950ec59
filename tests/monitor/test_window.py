"""The Monitor section and the alert banner of the Mail Sender window (htmx fragments)."""
from __future__ import annotations

import re
import time

from tests.conftest import csrf_from
from tests.monitor.conftest import ago, audit_actions, later, queued
from tests.scheduler.conftest import configure
from webapp.core.states import DEFERRED, QUEUED, REMOVED, SENDING, SENT

HX = {"HX-Request": "true"}


def fragment(client, path):
    response = client.get(path, headers=HX)
    assert response.status_code == 200, response.text
    return response.text


def post(client, path, ids, **fields):
    """Posts an action on `ids`; Remove is posted confirmed, as from its confirmation's button."""
    token = csrf_from(client.get("/preferences").text)
    if path.endswith("/remove"):
        fields.setdefault("confirmed", "yes")
    return client.post(path, data={"id": [str(i) for i in ids], "csrf_token": token, **fields}, headers=HX)


def test_the_window_shows_the_monitor_section_with_its_settings_and_figures(app, admin_client, seed):
    pid = seed["partition_id"]
    configure(app, pid, monitor_sleep_minutes=7, monitor_pending_threshold=40)
    app.config["MAILSENDER_STUCK_AGE_MINUTES"] = 100000  # not stuck by age, however slow the test
    began = time.monotonic()
    queued(app, pid, 2, queued_at=ago(5))
    page = admin_client.get("/admin/mail-sender").text
    took = time.monotonic() - began
    section = re.search(r'<section class="section" id="monitor".*?</section>', page, re.S).group(0)
    assert 'hx-trigger="every 5s' in section  # it polls
    assert "every 7 minutes" in section and "above 40 pending" in section
    waiting = re.search(r"waiting (\d+) s", section)
    assert 'data-pending="2"' in section and waiting and 5 <= int(waiting.group(1)) <= 6 + took
    assert 'id="monitor-no-stuck"' in section
    alone = fragment(admin_client, "/admin/mail-sender/monitor")  # the same partial, alone
    assert alone.count("<section") == 1 and '<section class="section" id="monitor"' in alone


def test_stuck_messages_show_with_reason_and_last_error(app, admin_client, seed):
    pid = seed["partition_id"]
    [lease] = queued(app, pid, 1, status=SENDING, claim_owner="gone/1/0", lease_until=ago(5))
    [tried] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(60),
                     last_error="451 4.7.1 Greylisted, try again")
    section = fragment(admin_client, "/admin/mail-sender/monitor")
    assert f'id="stuck-{lease}" data-reason="lease_expired"' in section
    assert f'id="stuck-{tried}" data-reason="repeated_failures"' in section
    assert "claimed past its lease" in section and "451 4.7.1 Greylisted, try again" in section
    assert f'aria-label="Select message {tried}"' in section


def test_the_banner_appears_while_something_is_stuck_and_clears_after_remove(app, admin_client, seed):
    pid = seed["partition_id"]
    assert 'id="monitor-alert"' not in fragment(admin_client, "/admin/mail-sender/monitor/banner")
    [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(60))
    assert 'id="monitor-alert"' in admin_client.get("/admin/mail-sender").text
    assert "1 stuck message" in fragment(admin_client, "/admin/mail-sender/monitor/banner")

    response = post(admin_client, "/admin/mail-sender/monitor/remove", [stuck])
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "monitor-changed"  # the banner refreshes at once
    assert f"Message {stuck} is removed now." in response.text and 'id="monitor-no-stuck"' in response.text
    assert 'id="monitor-alert"' not in fragment(admin_client, "/admin/mail-sender/monitor/banner")
    assert audit_actions(app, stuck) == ["message.remove"]


def test_the_banner_appears_above_the_threshold_and_clears_when_pending_falls_back(app, admin_client, seed):
    pid = seed["partition_id"]
    configure(app, pid, monitor_pending_threshold=1)
    ids = queued(app, pid, 2)
    assert "2 messages pending, more than the threshold of 1" in fragment(admin_client, "/admin/mail-sender/monitor/banner")
    post(admin_client, "/admin/mail-sender/monitor/remove", ids[:1])
    assert 'id="monitor-alert"' not in fragment(admin_client, "/admin/mail-sender/monitor/banner")


def test_requeue_from_the_window(app, admin_client, seed):
    [stuck] = queued(app, seed["partition_id"], 1, status=DEFERRED, attempt_count=3, retry_at=later(60))
    response = post(admin_client, "/admin/mail-sender/monitor/requeue", [stuck])
    assert response.status_code == 200 and f"Message {stuck} is {QUEUED} now." in response.text
    assert audit_actions(app, stuck) == ["message.requeue"]


def test_a_refused_action_says_why_and_keeps_the_selection(app, admin_client, seed):
    pid = seed["partition_id"]
    [sent] = queued(app, pid, 1, status=SENT)
    [stuck] = queued(app, pid, 1, status=DEFERRED, attempt_count=3, retry_at=later(60))
    response = post(admin_client, "/admin/mail-sender/monitor/requeue", [sent, stuck, sent])
    assert response.status_code == 409
    assert 'id="monitor-refused"' in response.text and "A sent message cannot be requeued" in response.text
    assert f"Message {stuck} is queued now." in response.text
    assert audit_actions(app, sent) == ["message.requeue.refused"]  # asked twice, done once


def test_nothing_selected_is_422(admin_client, seed):
    response = post(admin_client, "/admin/mail-sender/monitor/remove", [])
    assert response.status_code == 422 and "Select at least one message" in response.text


def test_the_selection_survives_a_poll(app, admin_client, seed):
    ids = queued(app, seed["partition_id"], 2, status=DEFERRED, attempt_count=3, retry_at=later(60))
    section = admin_client.get(f"/admin/mail-sender/monitor?id={ids[1]}", headers=HX).text
    assert re.search(rf'value="{ids[1]}" id="select-{ids[1]}" checked', section)
    assert not re.search(rf'value="{ids[0]}" id="select-{ids[0]}" checked', section)


def test_a_removed_message_stays_in_the_outbox(app, admin_client, seed):
    [stuck] = queued(app, seed["partition_id"], 1, status=DEFERRED, attempt_count=3)
    post(admin_client, "/admin/mail-sender/monitor/remove", [stuck])
    assert f'id="message-{stuck}" data-status="{REMOVED}"' in admin_client.get("/outbox").text


def test_agents_get_403_and_visitors_go_to_log_in(app, client, agent_client, seed):
    for path in ("/admin/mail-sender/monitor", "/admin/mail-sender/monitor/banner"):
        assert agent_client.get(path, headers=HX).status_code == 403
    token = csrf_from(agent_client.get("/preferences").text)
    [message_id] = queued(app, seed["partition_id"], 1, status=DEFERRED)
    for path in ("/admin/mail-sender/monitor/remove", "/admin/mail-sender/monitor/requeue"):
        assert agent_client.post(path, data={"id": str(message_id), "csrf_token": token}).status_code == 403
    assert audit_actions(app, message_id) == []


def test_without_htmx_the_form_posts_and_comes_back_to_the_window(app, admin_client, seed):
    [stuck] = queued(app, seed["partition_id"], 1, status=DEFERRED, attempt_count=3)
    token = csrf_from(admin_client.get("/admin/mail-sender").text)
    response = admin_client.post("/admin/mail-sender/monitor/remove",
                                 data={"id": str(stuck), "csrf_token": token, "confirmed": "yes"})
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/mail-sender#monitor")
    assert f"Message {stuck} is removed now." in admin_client.get("/admin/mail-sender").text
