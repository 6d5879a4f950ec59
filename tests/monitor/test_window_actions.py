"""The Monitor section's actions as the window offers them: Remove after a confirmation, Select
all, a result that stays across polls, the failed and removed messages with Requeue, and the
last error in words."""
from __future__ import annotations

import asyncio
import re
import socket

import aiosmtplib
from sqlalchemy import select

from scheduler.monitor.errors import error_in_words
from scheduler.smtp.session import SessionError, describe_error
from tests.conftest import csrf_from
from tests.monitor.conftest import audit_actions, later, queued
from tests.monitor.test_window import HX, fragment, post
from tests.scheduler.conftest import configure
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import DEFERRED, FAILED, QUEUED, REMOVED

SECTION = "/admin/mail-sender/monitor"


def stuck(app, pid, count=1, **values):
    return queued(app, pid, count, status=DEFERRED, attempt_count=3, retry_at=later(3600), **values)


def statuses(app, ids):
    with app.app_context():
        return dict(db.session.execute(select(OutgoingMessage.id, OutgoingMessage.status)
                                       .where(OutgoingMessage.id.in_(ids))).all())


def carried(section: str) -> dict:
    """What the section's poll carries back (its hidden state), as the browser would send it."""
    state = re.search(r'<div id="monitor-state" hidden>(.*?)</div>', section, re.S).group(1)
    return {"result": re.findall(r'name="result" value="([^"]+)"', state),
            "confirm_id": re.findall(r'name="confirm_id" value="([^"]+)"', state)}


# --- Remove asks first --------------------------------------------------------------------------


def test_remove_asks_how_many_and_removes_nothing_until_confirmed(app, admin_client, seed):
    ids = stuck(app, seed["partition_id"], 3)
    asked = post(admin_client, f"{SECTION}/remove", ids, confirmed="")
    assert asked.status_code == 200 and "HX-Trigger" not in asked.headers
    assert "Remove 3 messages?</strong> They will not be sent." in asked.text
    assert re.search(r'class="danger"[^>]*>Remove 3 messages</button>', asked.text)
    assert ">Keep them</button>" in asked.text
    assert statuses(app, ids) == {i: DEFERRED for i in ids}
    assert all(audit_actions(app, i) == [] for i in ids)

    # A poll while the question is open keeps it open.
    polled = admin_client.get(SECTION, query_string={"id": ids, **carried(asked.text)}, headers=HX).text
    assert "Remove 3 messages?" in polled

    done = post(admin_client, f"{SECTION}/remove", ids)  # its "Remove 3 messages" button
    assert done.status_code == 200 and statuses(app, ids) == {i: REMOVED for i in ids}
    assert all(audit_actions(app, i) == ["message.remove"] for i in ids)
    assert "Remove 3 messages?" not in done.text


def test_remove_of_one_message_says_it(app, admin_client, seed):
    [one] = stuck(app, seed["partition_id"])
    asked = post(admin_client, f"{SECTION}/remove", [one], confirmed="")
    assert "Remove 1 message?</strong> It will not be sent." in asked.text


def test_remove_is_not_the_primary_button_and_requeue_is(app, admin_client, seed):
    stuck(app, seed["partition_id"])
    section = fragment(admin_client, SECTION)
    remove = re.search(r'<button[^>]*hx-post="/admin/mail-sender/monitor/remove[^>]*>', section).group(0)
    requeue = re.search(r'<button[^>]*hx-post="/admin/mail-sender/monitor/requeue[^>]*>Requeue</button>', section)
    assert 'class="danger"' in remove
    assert requeue and "class=" not in requeue.group(0)  # the plain, primary style


def test_without_htmx_remove_asks_on_a_page_of_its_own(app, admin_client, seed):
    [one] = stuck(app, seed["partition_id"])
    token = csrf_from(admin_client.get("/preferences").text)
    page = admin_client.post(f"{SECTION}/remove", data={"id": str(one), "csrf_token": token})
    assert page.status_code == 200 and "Remove 1 message?" in page.text and 'name="confirmed" value="yes"' in page.text
    assert statuses(app, [one]) == {one: DEFERRED}


def test_remove_asks_nothing_about_a_message_that_is_not_there(app, admin_client, seed):
    [one] = stuck(app, seed["partition_id"])
    answer = post(admin_client, f"{SECTION}/remove", [one, one + 1000], confirmed="")
    assert answer.status_code == 404 and "No such message." in answer.text and "Remove 2" not in answer.text


# --- Select all -------------------------------------------------------------------------------


def test_select_all_ticks_every_stuck_message_listed(app, admin_client, seed):
    ids = stuck(app, seed["partition_id"], 3)
    section = fragment(admin_client, SECTION)
    assert ">Select all 3</button>" in section
    ticked = admin_client.get(SECTION, query_string={"select": "stuck"}, headers=HX).text
    assert all(re.search(rf'value="{i}" id="select-{i}" checked', ticked) for i in ids)
    assert ">Clear the selection</button>" in ticked
    cleared = admin_client.get(SECTION, query_string={"clear": "stuck", "id": ids}, headers=HX).text
    assert not re.search(r'id="select-\d+" checked', cleared)


def test_select_all_says_it_is_this_page_when_the_list_pages(app, admin_client, seed):
    app.config["PAGE_SIZE"] = 2
    ids = stuck(app, seed["partition_id"], 3)
    ticked = admin_client.get(SECTION, query_string={"select": "stuck"}, headers=HX).text
    assert ">Select all 2 on this page</button>" in ticked or ">Clear the selection</button>" in ticked
    assert ">Select all 2 on this page</button>" in fragment(admin_client, SECTION)
    assert [i for i in ids if re.search(rf'id="select-{i}" checked', ticked)] == ids[:2]


# --- the result stays -------------------------------------------------------------------------


def test_the_result_stays_across_polls_until_dismissed(app, admin_client, seed):
    [one] = stuck(app, seed["partition_id"])
    acted = post(admin_client, f"{SECTION}/requeue", [one])
    assert f"Message {one} is {QUEUED} now." in acted.text and 'id="monitor-dismiss"' in acted.text
    kept = carried(acted.text)
    assert kept["result"]
    polled = admin_client.get(SECTION, query_string=kept, headers=HX).text  # the next poll
    assert f"Message {one} is {QUEUED} now." in polled
    dismissed = fragment(admin_client, SECTION)  # the Dismiss button asks without the result
    assert f"Message {one} is" not in dismissed and 'id="monitor-dismiss"' not in dismissed


def test_a_forged_result_is_not_shown(app, admin_client, seed):
    section = admin_client.get(SECTION, query_string={"result": "W1siMSIsdHJ1ZV1d.forged"}, headers=HX).text
    assert 'id="monitor-outcome"' not in section


# --- failed and removed messages, with Requeue -------------------------------------------------


def test_failed_and_removed_messages_are_listed_newest_first_with_their_last_error(app, admin_client, seed):
    pid = seed["partition_id"]
    [failed] = queued(app, pid, 1, status=FAILED, last_error="550 5.1.1 No such user")
    [removed] = queued(app, pid, 1, status=REMOVED)
    stuck(app, pid)
    section = fragment(admin_client, SECTION)
    listed = re.findall(r'<tr id="ended-(\d+)" data-status="(\w+)"', section)
    assert listed == [(str(removed), REMOVED), (str(failed), FAILED)]
    assert "550 5.1.1 No such user" in section


def test_the_failed_and_removed_list_pages(app, admin_client, seed):
    app.config["PAGE_SIZE"] = 2
    ids = queued(app, seed["partition_id"], 3, status=FAILED)
    first = fragment(admin_client, SECTION)
    assert re.findall(r'<tr id="ended-(\d+)"', first) == [str(ids[2]), str(ids[1])]
    older = admin_client.get(SECTION, query_string={"ended_before": ids[1]}, headers=HX).text
    assert re.findall(r'<tr id="ended-(\d+)"', older) == [str(ids[0])]


def test_a_failed_message_is_requeued_from_its_row_and_audited(app, admin_client, seed):
    pid = seed["partition_id"]
    [failed, other] = queued(app, pid, 2, status=FAILED)
    token = csrf_from(admin_client.get("/preferences").text)
    # The row's button names its message in the URL and sends no ticked ones (hx-params="none").
    answer = admin_client.post(f"{SECTION}/requeue?id={failed}", headers={**HX, "X-CSRFToken": token})
    assert answer.status_code == 200 and f"Message {failed} is {QUEUED} now." in answer.text
    assert statuses(app, [failed, other]) == {failed: QUEUED, other: FAILED}
    assert audit_actions(app, failed) == ["message.requeue"]
    assert f'id="ended-{failed}"' not in answer.text and f'id="ended-{other}"' in answer.text


def test_the_selected_removed_messages_are_requeued(app, admin_client, seed):
    ids = queued(app, seed["partition_id"], 2, status=REMOVED)
    answer = post(admin_client, f"{SECTION}/requeue", ids)
    assert answer.status_code == 200 and statuses(app, ids) == {i: QUEUED for i in ids}
    assert all(audit_actions(app, i) == ["message.requeue"] for i in ids)


# --- the last error, in words -----------------------------------------------------------------


def _refused_connection_text() -> tuple[str, int]:
    """The last error the engine records when nothing listens on the SMTP server's port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def connect():
        try:
            await aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5).connect()
        except Exception as error:  # as scheduler/smtp/session.py records it
            return str(SessionError("connect", None, describe_error(error), []))

    return asyncio.run(connect()), port


def test_the_column_is_last_error_and_a_connection_error_shows_in_words(app, admin_client, seed):
    text, port = _refused_connection_text()
    [one] = stuck(app, seed["partition_id"], last_error=text)
    section = fragment(admin_client, SECTION)
    assert '<th scope="col">Last error</th>' in section and "Last SMTP reply" not in section
    row = re.search(rf'<tr id="stuck-{one}".*?</tr>', section, re.S).group(0)
    assert f"Nothing is listening on 127.0.0.1 port {port} (connection refused)" in row


def test_connection_errors_in_words():
    assert error_in_words("451 4.7.1 Greylisted") == "451 4.7.1 Greylisted"
    assert error_in_words(None) is None
    assert error_in_words("connect: Timed out connecting to mx.example.test on port 25") == (
        "The server at mx.example.test port 25 did not answer in time (the connection timed out)")
    assert error_in_words("not tried: the SMTP server could not be reached: connect: Error connecting to "
                          "nohost.invalid on port 25: [Errno -2] Name or service not known") == (
        "Not tried: the name nohost.invalid does not resolve (no such host in DNS)")


# --- the banner -------------------------------------------------------------------------------


def test_the_banner_has_no_space_before_its_full_stop(app, admin_client, seed):
    configure(app, seed["partition_id"], monitor_pending_threshold=2)
    queued(app, seed["partition_id"], 3)
    banner = fragment(admin_client, "/admin/mail-sender/monitor/banner")
    text = " ".join(re.sub(r"<[^>]+>", " ", re.search(r'id="monitor-alert">(.*?)</p>', banner, re.S).group(1)).split())
    assert "3 messages pending, more than the threshold of 2. See the Monitor section." in text
    assert " ." not in text
