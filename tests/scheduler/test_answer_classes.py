"""Classes of SMTP answer: the table (scheduler/outcomes.py classify), and each class's handling
through the real engine against real aiosmtpd servers scripted per case."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from scheduler.monitor.notifications import ROUTE_PAUSED_KIND
from scheduler.monitor.rounds import run_round
from scheduler.outcomes import (
    STAGE_AFTER_END,
    STAGE_AUTH,
    STAGE_CONNECT,
    STAGE_DATA,
    STAGE_EHLO,
    STAGE_END,
    STAGE_HANDSHAKE,
    STAGE_MAIL,
    STAGE_RCPT,
    STAGE_TOKEN,
    Backoff,
    classify,
)
from scheduler.smtp.replies import queue_id
from scheduler.status import sender_status
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core import states
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, Notification, OutgoingMessage
from webapp.core.security import encrypt_secret

TO = "customer@example.test"


# --- the table -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage, code, text, kind", [
    (STAGE_END, 250, "2.0.0 Ok: queued as 4F2A1", states.ANSWER_ACCEPTED),
    (STAGE_RCPT, 550, "5.1.1 <x@example.test>: Recipient address rejected: User unknown",
     states.ANSWER_RECIPIENT_PERMANENT),
    (STAGE_RCPT, 553, "5.1.3 Bad recipient address syntax", states.ANSWER_RECIPIENT_PERMANENT),
    (STAGE_END, 552, "5.3.4 Message size exceeds fixed limit", states.ANSWER_MESSAGE_PERMANENT),
    (STAGE_END, 554, "5.6.0 Content rejected", states.ANSWER_MESSAGE_PERMANENT),
    (STAGE_CONNECT, 421, "4.7.0 Too many connections", states.ANSWER_THROTTLED),
    (STAGE_RCPT, 450, "4.7.1 Client host rejected: try again later", states.ANSWER_THROTTLED),
    (STAGE_END, 451, "4.7.500 Server busy. Please try again later", states.ANSWER_THROTTLED),
    (STAGE_END, 432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", states.ANSWER_THROTTLED),
    (STAGE_RCPT, 452, "4.5.3 Too many recipients", states.ANSWER_THROTTLED),
    (STAGE_END, 554, "5.2.0 STOREDRV.Submission.Exception: daily limit exceeded", states.ANSWER_QUOTA),
    (STAGE_MAIL, 550, "5.4.5 Daily user sending quota exceeded", states.ANSWER_QUOTA),
    (STAGE_AUTH, 535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant",
     states.ANSWER_CONFIGURATION),
    (STAGE_AUTH, 535, "5.7.8 Authentication credentials invalid", states.ANSWER_CONFIGURATION),
    (STAGE_AUTH, 534, "5.7.9 Application-specific password required", states.ANSWER_CONFIGURATION),
    (STAGE_MAIL, 530, "5.7.0 Authentication required", states.ANSWER_CONFIGURATION),
    (STAGE_EHLO, 504, "5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname",
     states.ANSWER_CONFIGURATION),
    (STAGE_HANDSHAKE, None, "certificate verify failed: self-signed certificate", states.ANSWER_CONFIGURATION),
    (STAGE_TOKEN, None, "the token server answered invalid_grant", states.ANSWER_CONFIGURATION),
    (STAGE_RCPT, 451, "4.3.0 Try again later", states.ANSWER_TRANSIENT),
    (STAGE_CONNECT, None, "Connect call failed", states.ANSWER_TRANSIENT),
    (STAGE_DATA, None, "Timed out waiting for server response", states.ANSWER_TRANSIENT),
    (STAGE_AUTH, 454, "4.7.0 Temporary authentication failure", states.ANSWER_THROTTLED),
    (STAGE_AFTER_END, None, "Connection lost", states.ANSWER_UNCLEAR),
])
def test_each_answer_has_its_class(stage, code, text, kind):
    assert classify(stage, code, text).kind == kind


def test_a_throttling_reply_gives_its_hinted_wait():
    assert classify(STAGE_RCPT, 450, "4.7.1 Rate limited, try again in 120 seconds").hint_seconds == 120
    assert classify(STAGE_END, 421, "4.7.0 wait 2 minutes").hint_seconds == 120
    assert classify(STAGE_RCPT, 451, "4.3.0 try again in 120 seconds").hint_seconds is None  # transient


def test_the_server_queue_id_is_read_from_an_accepting_reply():
    assert queue_id("2.0.0 Ok: queued as 4F2A1") == "4F2A1"
    assert queue_id("OK id=1u2v3w-000ABC-1x") == "1u2v3w-000ABC-1x"
    assert queue_id("2.0.0 OK") is None


def test_the_quota_resets_at_the_configured_hour_on_the_products_clock():
    backoff = Backoff(timedelta(minutes=1), timedelta(hours=1), minute_seconds=60.0, quota_reset_hour=7)
    now = datetime(2026, 12, 2, 6, 30, tzinfo=timezone.utc)
    assert backoff.quota_wait(now, None) == timedelta(minutes=30)
    assert backoff.quota_wait(now.replace(hour=8), None) == timedelta(hours=22, minutes=30)
    assert backoff.quota_wait(now, 600) == timedelta(minutes=10)  # the provider's hint first
    # With a shortened minute (tests), the same wait in product minutes.
    assert Backoff(timedelta(minutes=1), timedelta(hours=1), minute_seconds=0.6,
                   quota_reset_hour=7).quota_wait(now, None) == timedelta(seconds=18)


# --- the handling, through the engine --------------------------------------------------------


def attempts(app, message_id) -> list[DeliveryAttempt]:
    with app.app_context():
        rows = db.session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.message_id == message_id)
                                  .order_by(DeliveryAttempt.id)).all()
        db.session.expunge_all()
        return rows


def message(app, message_id) -> OutgoingMessage:
    with app.app_context():
        row = db.session.get(OutgoingMessage, message_id)
        db.session.expunge(row)
        return row


def status(app, partition_id) -> dict:
    with app.app_context():
        answer = sender_status(partition_id)
        db.session.rollback()
        return answer


def test_a_refused_login_makes_one_attempt_pauses_the_route_notifies_once_and_a_fixing_save_resumes_it(
        app, seed, make_node, wakes):
    pid = seed["partition_id"]
    with app.app_context():
        wrong, right = encrypt_secret("wrong-password"), encrypt_secret("right-password")
    with SmtpServer(users={"relay": "right-password"}) as server:
        configure(app, pid, server, sleep_minutes=0, smtp_auth=True, smtp_username="relay", smtp_password_enc=wrong)
        ids = queue_messages(app, pid, 3)
        make_node()
        start(app, pid)
        wait_until(lambda: status(app, pid)["route"], what="the route paused")
        # Past several wakes: nothing more was tried, nothing failed.
        wakes.wait(3)
        assert [len(attempts(app, i)) for i in ids] == [1, 0, 0]
        first = attempts(app, ids[0])[0]
        assert first.answer == states.ANSWER_CONFIGURATION and first.code == 535
        assert statuses(app, ids) == {states.DEFERRED: 1, states.QUEUED: 2}
        assert message(app, ids[1]).last_error is None  # untouched
        shown = status(app, pid)
        assert shown["light"] == "yellow" and shown["delivering"] is False
        assert shown["route"]["paused"] and "535" in shown["reason"] and "Save" in shown["reason"]
        # The monitor tells the administrators once, however many rounds see the pause.
        with app.app_context():
            run_round(pid, "test", force=True)
            run_round(pid, "test", force=True)
            told = db.session.scalar(select(func.count()).select_from(Notification)
                                     .where(Notification.kind == ROUTE_PAUSED_KIND))
        assert told == 1
        assert server.messages == []

        configure(app, pid, smtp_password_enc=right)  # a Save: a new settings version
        server.wait_for(3)
        wait_until(lambda: statuses(app, ids) == {states.SENT: 3}, what="all three sent after the save")
    assert status(app, pid)["route"] is None
    assert [len(attempts(app, i)) for i in ids] == [2, 1, 1]


def test_a_refused_ehlo_name_pauses_the_route_and_the_configured_name_is_accepted(app, seed, make_node, wakes):
    pid = seed["partition_id"]
    with SmtpServer(ehlo_requires_fqdn=True) as server:
        configure(app, pid, server, sleep_minutes=0, smtp_ehlo_name="")
        [message_id] = queue_messages(app, pid, 1)
        make_node()
        start(app, pid)
        wait_until(lambda: status(app, pid)["route"], what="the route paused for the EHLO name")
        wakes.wait(2)
        [refused] = attempts(app, message_id)
        assert refused.answer == states.ANSWER_CONFIGURATION and refused.code == 504
        assert message(app, message_id).status == states.DEFERRED  # not failed

        configure(app, pid, smtp_ehlo_name="mail.acme.test")
        server.wait_for(1)
        wait_until(lambda: message(app, message_id).status == states.SENT, what="sent under the EHLO name")
    assert "." not in server.ehlo_names[0] and server.ehlo_names[-1] == "mail.acme.test"


def test_throttling_waits_the_hinted_time_and_does_not_use_up_the_lifetime(app, seed, make_node):
    pid = seed["partition_id"]
    minute = app.config["MAILSENDER_MINUTE_SECONDS"]
    # The provider hints 7 minutes, more than the 5-minute minimum: the hint is waited.
    with SmtpServer(rcpt_replies={TO: ["450 4.7.1 Rate limited, try again in 420 seconds", "250 OK"]}) as server:
        configure(app, pid, server, sleep_minutes=0)
        [message_id] = queue_messages(app, pid, 1)
        # A lifetime that ends before the throttling wait (at least 5 product minutes) is over.
        with app.app_context():
            row = db.session.get(OutgoingMessage, message_id)
            row.expires_at = row.queued_at + timedelta(seconds=3 * minute)
            ends = row.expires_at
            db.session.commit()
        make_node()
        start(app, pid)
        server.wait_for(1)
        wait_until(lambda: message(app, message_id).status == states.SENT, what="sent after the throttling")
    first, second = attempts(app, message_id)
    assert first.answer == states.ANSWER_THROTTLED and second.answer == states.ANSWER_ACCEPTED
    assert (second.at - first.at).total_seconds() >= 7 * minute
    assert message(app, message_id).expires_at > ends


def test_a_quota_holds_the_route_until_it_resets_then_resumes(app, seed, make_node, wakes):
    pid = seed["partition_id"]
    # "Try again in 120 seconds": the hold lasts 2 product minutes.
    reply = "554 5.2.0 STOREDRV.Submission.Exception: daily sending limit exceeded, try again in 120 seconds"
    with SmtpServer(mail_replies=[reply, "250 OK"]) as server:
        configure(app, pid, server, sleep_minutes=0)
        ids = queue_messages(app, pid, 2)
        make_node()
        start(app, pid)
        held = wait_until(lambda: status(app, pid)["route"], what="the route held")
        assert held["paused"] is False and held["until"]
        assert [len(attempts(app, i)) for i in ids] == [1, 0]
        assert attempts(app, ids[0])[0].answer == states.ANSWER_QUOTA
        assert status(app, pid)["light"] == "yellow"
        server.wait_for(2)
        wait_until(lambda: statuses(app, ids) == {states.SENT: 2}, what="both sent after the reset")
    assert [len(attempts(app, i)) for i in ids] == [2, 1]
    assert status(app, pid)["route"] is None


def test_a_relay_that_allows_two_connections_drains_four_senders_backlog_with_no_deferral(app, seed, make_node):
    pid = seed["partition_id"]
    with SmtpServer(max_connections=2, data_delay=0.05) as server:
        configure(app, pid, server, sleep_minutes=0, batch_size=5)
        ids = queue_messages(app, pid, 40)
        make_node(MAILSENDER_SENDERS=4)
        start(app, pid)
        server.wait_for(40)
        wait_until(lambda: statuses(app, ids) == {states.SENT: 40}, what="all 40 sent")
        turned_away = server.counts["turned_away"]
    with app.app_context():
        outcomes = db.session.execute(select(DeliveryAttempt.outcome, func.count())
                                      .group_by(DeliveryAttempt.outcome)).all()
    # The refusals happened, and cost no message a deferral: every attempt was a delivery.
    assert turned_away >= 1
    assert dict(outcomes) == {states.ATTEMPT_ACCEPTED: 40}


def test_after_several_refused_messages_in_a_row_a_fresh_connection_is_opened(app, seed, make_node):
    pid = seed["partition_id"]
    refused = [f"nobody{n}@example.test" for n in range(4)]
    with SmtpServer(rcpt_replies={address: ["550 5.1.1 User unknown"] for address in refused}) as server:
        configure(app, pid, server, sleep_minutes=0, batch_size=10)
        ids = [queue_messages(app, pid, 1, to=(address,))[0] for address in refused]
        ids += queue_messages(app, pid, 1)
        make_node()
        start(app, pid)
        server.wait_for(1)
        wait_until(lambda: statuses(app, ids) == {states.FAILED: 4, states.SENT: 1}, what="all settled")
        # Three refused messages, then a new connection: the server saw two sessions' worth of EHLO.
        assert len(server.ehlo_names) >= 2


def test_throttling_halves_the_routes_rate_for_a_while(app, seed, make_node):
    # Each message takes at least 0.3 s (the server answers DATA that late). After the first
    # message's throttling answer, each next one is followed by a pause as long as it took:
    # the deliveries come at least twice that far apart, for the throttling wait (here an hour
    # of 0.2 s minutes, longer than the test).
    pid = seed["partition_id"]
    throttled = "busy@example.test"
    with SmtpServer(data_delay=0.3, rcpt_replies={throttled: ["450 4.7.1 Rate limited"]}) as server:
        configure(app, pid, server, sleep_minutes=0, batch_size=10)
        first = queue_messages(app, pid, 1, to=(throttled,))
        rest = queue_messages(app, pid, 4)
        make_node(MAILSENDER_THROTTLE_MINUTES=60)
        start(app, pid)
        server.wait_for(4)
        wait_until(lambda: statuses(app, rest) == {states.SENT: 4}, what="the others sent")
    assert attempts(app, first[0])[0].answer == states.ANSWER_THROTTLED
    times = [attempts(app, message_id)[0].at for message_id in rest]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= 0.55, gaps
