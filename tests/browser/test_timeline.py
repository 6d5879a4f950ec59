"""In Chromium: a delivered message's timeline in the Outbox (route, node, stages, class, queue
id), as a screenshot shows it; and a held message decided with Mark as sent from the Monitor."""
import struct

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, browser_login
from tests.monitor.conftest import audit_actions, queued
from tests.scheduler.conftest import configure, make_node, queue_messages, start, wait_until  # noqa: F401
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import MessageRecipient, OutgoingMessage
from webapp.core.states import ANSWER_ACCEPTED, ANSWER_LABELS, HELD, RCPT_UNCLEAR, SENT

pytestmark = pytest.mark.browser

QUEUE_ID = "ABC123"


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MAILSENDER_SENDERS": 1, "MAILSENDER_MONITOR": False}


def _status(app, message_id) -> str:
    with app.app_context():
        return db.session.scalar(select(OutgoingMessage.status).where(OutgoingMessage.id == message_id))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_outbox_timeline_shows_a_real_delivery(page, app, live_server, seed, make_node, tmp_path):
    pid = seed["partition_id"]
    with SmtpServer(data_replies=[f"250 2.0.0 Ok: queued as {QUEUE_ID}"]) as server:
        configure(app, pid, server)
        [message_id] = queue_messages(app, pid, 1, subject="Timeline")
        node = make_node()
        start(app, pid)
        server.wait_for(1)
        wait_until(lambda: _status(app, message_id) == SENT, what="the message sent")
        node.stop(timeout=10)

    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/outbox")
    page.locator(f"#message-{message_id} ~ tr.details").first.locator("summary").click()
    timeline = page.locator(f"#timeline-{message_id}")
    expect(timeline).to_be_visible()
    expect(timeline.locator(".answer-class")).to_have_text(ANSWER_LABELS[ANSWER_ACCEPTED])
    expect(timeline.locator(".queue-id")).to_have_text(QUEUE_ID)
    expect(timeline.locator(".route")).to_contain_text("default")
    expect(timeline.locator(".node")).to_contain_text("test-node")
    expect(timeline.locator(".timings")).to_contain_text("end of data")
    shot = timeline.screenshot(path=str(tmp_path / "timeline.png"))
    width, height = _png_size(shot)
    assert width > 200 and height > 40, (width, height)  # laid out, not collapsed


def test_an_administrator_marks_a_held_message_as_sent_from_the_monitor(page, app, live_server, seed):
    pid = seed["partition_id"]
    [message_id] = queued(app, pid, 1, status=HELD, unclear_count=1,
                          last_error="held for review: the connection was lost after the message was sent")
    with app.app_context():
        for recipient in db.session.scalars(select(MessageRecipient).where(MessageRecipient.message_id == message_id)):
            recipient.status = RCPT_UNCLEAR
        db.session.commit()
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    monitor = page.locator("#monitor")
    expect(monitor.locator(f"#stuck-{message_id}")).to_contain_text("held for review")
    page.get_by_label(f"Select message {message_id}").check()
    monitor.get_by_role("button", name="Mark as sent").click()
    expect(page.locator("#monitor-done")).to_contain_text(f"Message {message_id} is sent now.")
    expect(monitor.locator(f"#stuck-{message_id}")).to_have_count(0)
    assert _status(app, message_id) == SENT
    assert audit_actions(app, message_id) == ["message.mark_sent"]
