"""A server that cannot be reached is one event, not an attempt per waiting message; the status
says the senders run but cannot deliver; an attempt is a delivery, however many transactions it
took; and retries carry jitter, so that a backlog does not come back as one wave."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from scheduler.outcomes import Backoff, Claimed, Recipient, RecipientReply, Transaction, settle
from scheduler.status import YELLOW, sender_status
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, OutgoingMessage
from webapp.core.states import ATTEMPT_DEFERRED, RCPT_DEFERRED

# Long enough, in product minutes, that no retry comes while a test looks at the first round.
SLOW_BACKOFF = {"MAILSENDER_BACKOFF_FIRST_MINUTES": 200.0, "MAILSENDER_BACKOFF_MAX_MINUTES": 400.0}


def _messages(app, ids):
    with app.app_context():
        rows = db.session.scalars(select(OutgoingMessage).where(OutgoingMessage.id.in_(ids))
                                  .order_by(OutgoingMessage.id)).all()
        attempts = dict(db.session.execute(select(DeliveryAttempt.message_id, func.count())
                                           .group_by(DeliveryAttempt.message_id)).all())
        return [(row.attempt_count, attempts.get(row.id, 0), row.last_error, row.retry_at) for row in rows]


def test_an_unreachable_server_bills_one_attempt_and_the_rest_wait_saying_why(app, seed, make_node):
    pid = seed["partition_id"]
    configure(app, pid, SmtpServer(port=SmtpServer.free_port()), sleep_minutes=0, batch_size=10)
    ids = queue_messages(app, pid, 6)
    make_node(**SLOW_BACKOFF)
    start(app, pid)
    wait_until(lambda: statuses(app, ids) == {"deferred": 6}, what="every message deferred")
    rows = _messages(app, ids)
    tried = [row for row in rows if row[1]]
    assert len(tried) == 1 and tried[0][:2] == (1, 1), rows
    waiting = [row for row in rows if not row[1]]
    assert all(count == 0 and error.startswith("not tried: the SMTP server could not be reached")
               for count, _, error, _ in waiting), waiting
    # They come back spread out, not as one wave.
    assert len({retry_at for *_, retry_at in rows}) == 6


def test_while_the_server_cannot_be_reached_the_status_says_so_in_yellow(app, seed, make_node, admin_client):
    pid = seed["partition_id"]
    configure(app, pid, SmtpServer(port=SmtpServer.free_port()), sleep_minutes=0)
    queue_messages(app, pid, 2)
    make_node(**SLOW_BACKOFF)
    start(app, pid)

    def undeliverable():
        with app.app_context():
            status = sender_status(pid)
            return status if not status["delivering"] else None

    status = wait_until(undeliverable, what="the status to say it cannot deliver")
    assert status["light"] == YELLOW and status["light_label"] == "Running, but cannot deliver"
    assert "could not be reached" in status["reason"] and status["undeliverable_since"]
    api = admin_client.get("/api/v1/mail-sender/status").json
    assert api["delivering"] is False and "could not be reached" in api["reason"] and api["light"] == YELLOW
    section = admin_client.get("/admin/mail-sender/status", headers={"HX-Request": "true"}).text
    assert "Running, but cannot deliver: the SMTP server could not be reached" in section


def test_a_server_that_answers_clears_the_yellow(app, seed, make_node):
    pid = seed["partition_id"]
    port = SmtpServer.free_port()
    configure(app, pid, SmtpServer(port=port), sleep_minutes=0)
    ids = queue_messages(app, pid, 1)
    make_node()
    start(app, pid)

    def delivering() -> bool:
        with app.app_context():
            return sender_status(pid)["delivering"]

    wait_until(lambda: not delivering(), what="cannot deliver")
    with SmtpServer(port=port) as server:
        server.wait_for(1)
        wait_until(lambda: statuses(app, ids) == {"sent": 1}, what="sent once the server is back")
        wait_until(delivering, what="delivering again")


def test_a_452_split_is_one_attempt_and_the_retry_waits_the_first_backoff(app, seed, make_node):
    pid = seed["partition_id"]
    recipients = ("r0@example.test", "r1@example.test", "r2@example.test")
    with SmtpServer(max_recipients=2, rcpt_replies={"r2@example.test": ["451 4.3.0 Try again later"]}) as server:
        configure(app, pid, server, sleep_minutes=0)
        (message_id,) = queue_messages(app, pid, 1, to=recipients)
        make_node(**SLOW_BACKOFF)
        start(app, pid)
        wait_until(lambda: statuses(app, [message_id]) == {"deferred": 1}, what="deferred for r2")
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        last = db.session.scalar(select(func.max(DeliveryAttempt.at))
                                 .where(DeliveryAttempt.message_id == message_id))
        transactions = db.session.scalar(select(func.count()).where(DeliveryAttempt.message_id == message_id))
        attempt_count, waited = message.attempt_count, message.retry_at - last
    backoff = Backoff.configured(app.config | SLOW_BACKOFF)
    assert transactions == 2 and attempt_count == 1
    # The first backoff (with its jitter), not the second one's double.
    assert backoff.wait(1) * 0.9 <= waited <= backoff.wait(1) * (1 + backoff.jitter) + timedelta(seconds=1)


def test_the_jitter_only_lengthens_a_wait_and_spreads_a_backlog():
    backoff = Backoff(first=timedelta(minutes=1), cap=timedelta(hours=1), jitter=0.2)
    assert backoff.retry_wait(1, draw=lambda: 0.0) == timedelta(minutes=1)
    assert backoff.retry_wait(1, draw=lambda: 1.0) == timedelta(minutes=1.2)
    now = utcnow()
    retries = set()
    for number in range(50):
        message = Claimed(number, "a@acme.test", None, None, None, 0, [Recipient(number, "c@example.test", "to", "pending")])
        reply = RecipientReply("c@example.test", RCPT_DEFERRED, 451, "later")
        retries.add(settle(message, [Transaction(ATTEMPT_DEFERRED, 451, "later", [reply])], now, backoff).retry_at)
    assert len(retries) == 50 and all(timedelta(minutes=1) <= at - now <= timedelta(minutes=1.2) for at in retries)
