"""Fault suite (issue 17): one test per SMTP fault, against real servers, through the real engine.

Each row drives a node of this process (tests/scheduler/conftest.py) against aiosmtpd
(tests/smtp_servers.py SmtpServer, scripted replies) or a scripted asyncio server for what
aiosmtpd will not do (ScriptedSmtpServer: 421 at greeting, drops and stalls), with a product
minute of MINUTE seconds so that retries come fast. Each asserts the message's end state, the
codes stored, the number of attempts (DeliveryAttempt rows, and deliveries) and that every retry
waited at least the backoff after the delivery before it (scheduler/outcomes.py Backoff).

Each row's figures (attempts, the waits between deliveries in product minutes) are printed in
the terminal summary.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from scheduler.outcomes import Backoff
from scheduler.status import sender_status
from tests.scheduler.conftest import configure, make_node, queue_messages, start, wait_until, wakes  # noqa: F401
from tests.smtp_servers import ScriptedSmtpServer, SmtpServer, TlsAuthority
from webapp.core import states
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, MessageRecipient, OutgoingMessage

# A product minute here: backoff waits of 1, 2, 4 s, far above the engine's own delays.
MINUTE = 1.0
# A command timeout for the stalls: a stalled server is given up on after this long.
STALL_TIMEOUT = 1.0
# How much sooner than its backoff a retry's attempt row may be stamped: the row's time is
# taken when it is written, a moment after the retry time was set, and the next row's as late.
SLACK_SECONDS = 0.2
TO = "customer@example.test"
# The states the delivery issue adds (DESIGN.md): a recipient unclear after a connection lost
# past the end of data, and its message held for review.
HELD = states.HELD
RCPT_UNCLEAR = states.RCPT_UNCLEAR
IN_PROGRESS = (states.QUEUED, states.SENDING, states.DEFERRED)


# --- the figures, shown once at the end of the run ---------------------------------------------


@dataclass
class Row:
    end: str = ""
    codes: list = field(default_factory=list)
    attempts: int = 0
    deliveries: int = 0
    waits: list = field(default_factory=list)  # product minutes between deliveries
    backoff: list = field(default_factory=list)  # the backoff's least waits, product minutes


class Tally:
    """Per fault: end state, attempts and the waits between them; shown once at the end."""

    def __init__(self):
        self.rows: dict[str, Row] = {}

    def pytest_terminal_summary(self, terminalreporter):
        if not self.rows:
            return
        terminalreporter.write_sep("-", "fault suite")
        for name, row in self.rows.items():
            waits = (f"waits {', '.join(f'{w:.2f}' for w in row.waits)} min (backoff at least "
                     f"{', '.join(f'{w:g}' for w in row.backoff)} min)") if row.waits else "no retry"
            terminalreporter.write_line(
                f"{name}: {row.end}; codes {row.codes}; attempts {row.attempts} in deliveries {row.deliveries}; "
                f"{waits}")


TALLY = Tally()


@pytest.fixture
def tally(request):
    if not request.config.pluginmanager.is_registered(TALLY):
        request.config.pluginmanager.register(TALLY, "fault-suite-tally")
    return TALLY


# --- the engine, set up for faults -------------------------------------------------------------


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MAILSENDER_SENDERS": 1, "MAILSENDER_MONITOR": False, "MAILSENDER_MINUTE_SECONDS": MINUTE,
            "MAILSENDER_SMTP_COMMAND_TIMEOUT": 30.0}


@pytest.fixture
def backoff(app):
    return Backoff.configured(app.config)


@pytest.fixture
def drive(app, seed, make_node):
    """Queues `count` messages to `to`, points the partition at `server` and starts a node."""
    def run(server, count: int = 1, to=(TO,), node_config=None, **settings) -> list[int]:
        pid = seed["partition_id"]
        configure(app, pid, server, sleep_minutes=0, **settings)
        ids = queue_messages(app, pid, count, to=to)
        make_node(**(node_config or {}))
        start(app, pid)
        return ids

    return run


def message(app, message_id) -> OutgoingMessage:
    with app.app_context():
        row = db.session.get(OutgoingMessage, message_id)
        db.session.expunge(row)
        return row


def attempts(app, message_id) -> list[DeliveryAttempt]:
    with app.app_context():
        rows = db.session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.message_id == message_id)
                                  .order_by(DeliveryAttempt.id)).all()
        db.session.expunge_all()
        return rows


def recipients(app, message_id) -> dict[str, tuple[str, int | None]]:
    with app.app_context():
        return {r.address: (r.status, r.code) for r in db.session.scalars(
            select(MessageRecipient).where(MessageRecipient.message_id == message_id))}


def deliveries(rows: list[DeliveryAttempt]) -> list[list[DeliveryAttempt]]:
    """The attempt rows grouped by delivery: one delivery's transactions (a 452 splits the list
    at once) are written together, with one time."""
    grouped: list[list[DeliveryAttempt]] = []
    for row in rows:
        if grouped and grouped[-1][0].at == row.at:
            grouped[-1].append(row)
        else:
            grouped.append([row])
    return grouped


def end_state(app, message_id) -> str:
    return message(app, message_id).status


def settled(app, message_id) -> bool:
    return end_state(app, message_id) not in IN_PROGRESS


def record(tally, name: str, app, message_id, backoff: Backoff) -> Row:
    """The row's figures, noted before anything is asserted (an xfail row shows what happens today)."""
    rows = attempts(app, message_id)
    grouped = deliveries(rows)
    row = Row(end=end_state(app, message_id), codes=[r.code for r in rows], attempts=len(rows),
              deliveries=len(grouped))
    for number, (earlier, later) in enumerate(zip(grouped, grouped[1:]), start=1):
        row.waits.append((later[0].at - earlier[0].at).total_seconds() / MINUTE)
        row.backoff.append(backoff.wait(number).total_seconds() / MINUTE)
    tally.rows[name] = row
    return row


def assert_waits_follow_the_backoff(row: Row) -> None:
    """No retry without a wait: each delivery came at least the backoff's wait after the one before."""
    for number, (waited, least) in enumerate(zip(row.waits, row.backoff), start=1):
        assert waited * MINUTE >= least * MINUTE - SLACK_SECONDS, f"retry {number} waited {waited:.2f} min"


def after_a_retry_would_have_come(app, message_id, backoff: Backoff, wakes) -> None:
    """Waits past the time a retry after the message's last attempt would be due, then for the
    sender to look again: a retry that did not come by then was not made."""
    rows = attempts(app, message_id)
    due = time.monotonic() + backoff.wait(len(deliveries(rows)) or 1).total_seconds()
    wait_until(lambda: time.monotonic() >= due, what="the retry's time")
    wakes.wait()


# --- the rows ----------------------------------------------------------------------------------


def test_421_on_connect_defers_and_bills_one_attempt_per_refused_connection(app, drive, backoff, tally):
    # Three messages wait while the server turns two connections away: a connection that cannot
    # be made is one event for the route, not an attempt per waiting message.
    with ScriptedSmtpServer(faults=["421 at greeting", "421 at greeting"]) as server:
        ids = drive(server, count=3)
        arrived = server.wait_for(3)
        wait_until(lambda: all(end_state(app, i) == states.SENT for i in ids), what="all three sent")
    rows = {i: attempts(app, i) for i in ids}
    figures = [record(tally, f"421 on connect (message {n})", app, i, backoff) for n, i in enumerate(ids, 1)]
    refused = [r for i in ids for r in rows[i] if r.code == 421]
    assert len(refused) == 2, [(i, [(r.outcome, r.code) for r in rows[i]]) for i in ids]
    assert all(r.outcome == states.ATTEMPT_DEFERRED for r in refused)
    assert sorted(m.message_id for m in arrived) == sorted(message(app, i).message_id for i in ids)
    for figure in figures:
        assert figure.codes[-1] == 250
        assert_waits_follow_the_backoff(figure)


def test_451_per_recipient_is_retried_with_the_backoff_until_accepted(app, drive, backoff, tally):
    busy = "451 4.3.0 Mailbox busy"
    with SmtpServer(rcpt_replies={TO: [busy, busy, "250 OK"]}) as server:
        [message_id] = drive(server)
        wait_until(lambda: settled(app, message_id), what="the message settled")
        arrived = server.wait_for(1)
    row = record(tally, "451 per recipient", app, message_id, backoff)
    assert row.end == states.SENT and len(arrived) == 1
    assert row.codes == [451, 451, 250] and row.deliveries == 3
    assert [a.answer for a in attempts(app, message_id)] == [states.ANSWER_TRANSIENT] * 2 + [states.ANSWER_ACCEPTED]
    assert recipients(app, message_id) == {TO: (states.RCPT_ACCEPTED, 250)}
    assert_waits_follow_the_backoff(row)


def test_452_per_recipient_before_any_accepted_is_a_deferral(app, drive, backoff, tally):
    with SmtpServer(rcpt_replies={TO: ["452 4.2.2 Mailbox full", "250 OK"]}) as server:
        [message_id] = drive(server)
        wait_until(lambda: settled(app, message_id), what="the message settled")
        server.wait_for(1)
    row = record(tally, "452 per recipient", app, message_id, backoff)
    assert row.end == states.SENT and row.codes == [452, 250] and row.deliveries == 2
    assert_waits_follow_the_backoff(row)


def test_550_fails_at_once_and_is_never_retried(app, drive, backoff, tally, wakes):
    with SmtpServer(rcpt_replies={TO: ["550 5.1.1 No such user"]}) as server:
        [message_id] = drive(server)
        wait_until(lambda: settled(app, message_id), what="the message settled")
        after_a_retry_would_have_come(app, message_id, backoff, wakes)
        assert server.messages == [] and server.rcpt_count(TO) == 1
    row = record(tally, "550", app, message_id, backoff)
    assert row.end == states.FAILED and row.codes == [550] and row.attempts == 1
    assert attempts(app, message_id)[0].answer == states.ANSWER_RECIPIENT_PERMANENT
    assert recipients(app, message_id) == {TO: (states.RCPT_FAILED, 550)}
    assert "No such user" in message(app, message_id).last_error


def test_554_after_data_fails_at_once_and_is_never_retried(app, drive, backoff, tally, wakes):
    with SmtpServer(data_replies=["554 5.6.0 Message rejected as spam"]) as server:
        [message_id] = drive(server)
        wait_until(lambda: settled(app, message_id), what="the message settled")
        after_a_retry_would_have_come(app, message_id, backoff, wakes)
        assert server.messages == [] and server.commands.count("DATA") == 1
    row = record(tally, "554 after DATA", app, message_id, backoff)
    assert row.end == states.FAILED and row.codes == [554] and row.attempts == 1
    assert attempts(app, message_id)[0].answer == states.ANSWER_MESSAGE_PERMANENT
    assert recipients(app, message_id) == {TO: (states.RCPT_FAILED, 554)}


def _lost_after_the_end_of_data(app, drive, backoff, tally, wakes, fault: str, name: str, node_config=None):
    """The server read the whole message, then the connection was lost before its reply: the
    server may have taken it. With "hold for review": the recipient unclear and the message held,
    never sent again on its own (a retry would duplicate it)."""
    with ScriptedSmtpServer(faults=[fault]) as server:
        [message_id] = drive(server, node_config=node_config, after_unclear="hold")
        server.wait_for(1)
        wait_until(lambda: settled(app, message_id) or len(attempts(app, message_id)) > 1,
                   what="the message settled or tried again")
        if end_state(app, message_id) == HELD:
            after_a_retry_would_have_come(app, message_id, backoff, wakes)
        copies = len(server.messages)
    row = record(tally, name, app, message_id, backoff)
    assert row.end == HELD and row.attempts == 1, row
    assert recipients(app, message_id) == {TO: (RCPT_UNCLEAR, None)}
    assert attempts(app, message_id)[0].answer == states.ANSWER_UNCLEAR
    assert copies == 1


def test_a_drop_right_after_the_payload_leaves_the_recipient_unclear_and_the_message_held(
        app, drive, backoff, tally, wakes):
    _lost_after_the_end_of_data(app, drive, backoff, tally, wakes, "drop after the payload",
                                "drop after DATA's payload (hold for review)")


def test_after_an_unclear_drop_retry_once_sends_it_again_with_the_same_message_id_after_the_wait(
        app, drive, backoff, tally):
    # The default: retried once, after "Unclear retry wait" (here 2 product minutes), with the same
    # Message-ID, so that a provider that had it can drop the copy, and a blip loses no reply.
    with ScriptedSmtpServer(faults=["drop after the payload", None]) as server:
        [message_id] = drive(server, unclear_retry_minutes=2)
        arrived = server.wait_for(2)
        wait_until(lambda: settled(app, message_id), what="the message settled")
    row = record(tally, "drop after DATA's payload (retry once)", app, message_id, backoff)
    assert row.end == states.SENT and row.deliveries == 2, row
    assert row.waits[0] >= 2.0, row
    assert arrived[0].message_id == arrived[1].message_id is not None
    assert [a.answer for a in attempts(app, message_id)] == [states.ANSWER_UNCLEAR, states.ANSWER_ACCEPTED]


def test_a_second_unclear_outcome_holds_the_message_for_review(app, drive, backoff, tally, wakes):
    with ScriptedSmtpServer(faults=["drop after the payload", "drop after the payload"]) as server:
        [message_id] = drive(server, unclear_retry_minutes=1)
        server.wait_for(2)
        wait_until(lambda: end_state(app, message_id) == HELD, what="the message held")
        after_a_retry_would_have_come(app, message_id, backoff, wakes)
        copies = len(server.messages)
    row = record(tally, "drop after DATA's payload twice (retry once)", app, message_id, backoff)
    assert row.end == HELD and row.deliveries == 2 and copies == 2, row
    assert message(app, message_id).unclear_count == 2


def test_a_stall_at_greeting_past_the_command_timeout_defers_and_the_retry_delivers(app, drive, backoff, tally):
    with ScriptedSmtpServer(faults=["stall at greeting"]) as server:
        [message_id] = drive(server, node_config={"MAILSENDER_SMTP_COMMAND_TIMEOUT": STALL_TIMEOUT})
        wait_until(lambda: settled(app, message_id), what="the message settled")
        arrived = server.wait_for(1)
    row = record(tally, "stall at greeting", app, message_id, backoff)
    assert row.end == states.SENT and len(arrived) == 1
    assert row.codes == [None, 250] and row.deliveries == 2
    first = attempts(app, message_id)[0]
    assert first.outcome == states.ATTEMPT_DEFERRED and "connect" in first.detail
    assert_waits_follow_the_backoff(row)


def test_a_stall_at_rcpt_past_the_command_timeout_defers_and_the_retry_delivers(app, drive, backoff, tally):
    with ScriptedSmtpServer(faults=["stall at RCPT"]) as server:
        [message_id] = drive(server, node_config={"MAILSENDER_SMTP_COMMAND_TIMEOUT": STALL_TIMEOUT})
        wait_until(lambda: settled(app, message_id), what="the message settled")
        arrived = server.wait_for(1)
    row = record(tally, "stall at RCPT", app, message_id, backoff)
    assert row.end == states.SENT and len(arrived) == 1
    assert row.codes == [None, 250] and row.deliveries == 2
    assert "Timed out" in attempts(app, message_id)[0].detail
    assert_waits_follow_the_backoff(row)


def test_a_stall_after_the_payload_leaves_the_recipient_unclear_and_the_message_held(
        app, drive, backoff, tally, wakes):
    _lost_after_the_end_of_data(app, drive, backoff, tally, wakes, "stall after the payload",
                                "stall after the payload (hold for review)",
                                node_config={"MAILSENDER_SMTP_COMMAND_TIMEOUT": STALL_TIMEOUT})


@pytest.fixture
def untrusted():
    """A STARTTLS server whose certificate comes from a CA the engine does not trust."""
    with SmtpServer(tls="starttls", authority=TlsAuthority()) as server:
        yield server


def test_a_self_signed_certificate_is_named_in_the_status(app, seed, drive, untrusted, tally, backoff):
    [message_id] = drive(untrusted, smtp_starttls=True)
    wait_until(lambda: attempts(app, message_id), what="the first attempt")

    def reason():
        with app.app_context():
            status = sender_status(seed["partition_id"])
            db.session.rollback()
        return status if status["delivering"] is False and status["reason"] else None

    status = wait_until(reason, what="the status saying it cannot deliver")
    assert "certificate" in status["reason"].lower() and status["light"] == "yellow", status
    first = attempts(app, message_id)[0]
    assert first.outcome == states.ATTEMPT_DEFERRED and "certificate" in first.detail.lower()
    assert untrusted.messages == [] and untrusted.commands == []


def test_a_self_signed_certificate_pauses_the_route_instead_of_retrying_like_a_busy_server(
        app, seed, drive, untrusted, tally, backoff, wakes):
    [message_id] = drive(untrusted, smtp_starttls=True)
    wait_until(lambda: attempts(app, message_id), what="the first attempt")
    # One attempt, and the message waits for the administrator. Past the first two retries'
    # times, none was made.
    after_a_retry_would_have_come(app, message_id, backoff, wakes)
    after_a_retry_would_have_come(app, message_id, backoff, wakes)
    row = record(tally, "self-signed certificate", app, message_id, backoff)
    assert row.attempts == 1, row
    assert row.end == states.DEFERRED
    assert attempts(app, message_id)[0].answer == states.ANSWER_CONFIGURATION
    with app.app_context():
        route = sender_status(seed["partition_id"])["route"]
    assert route["paused"] and "certificate" in route["reason"].lower()


def test_a_message_above_the_servers_size_fails_at_once_without_being_offered(app, drive, backoff, tally, wakes):
    with SmtpServer(size_limit=200) as server:  # the message is about 290 bytes
        [message_id] = drive(server)
        wait_until(lambda: settled(app, message_id), what="the message settled")
        after_a_retry_would_have_come(app, message_id, backoff, wakes)
        assert server.messages == [] and "MAIL" not in server.commands
    row = record(tally, "SIZE refusal", app, message_id, backoff)
    assert row.end == states.FAILED and row.attempts == 1 and row.codes == [None]
    assert "SIZE limit of 200" in message(app, message_id).last_error


def test_452_too_many_recipients_after_n_splits_at_once_and_counts_one_attempt(app, drive, backoff, tally):
    # Two recipients per transaction; the last is busy once. The split goes at once, in the
    # same delivery; the busy one's retry is the message's second attempt, not its third.
    to = tuple(f"r{n}@example.test" for n in range(4))
    with SmtpServer(max_recipients=2, rcpt_replies={to[3]: ["451 4.3.0 Mailbox busy", "250 OK"]}) as server:
        [message_id] = drive(server, to=to)
        wait_until(lambda: settled(app, message_id), what="the message settled")
        arrived = server.wait_for(3)
    row = record(tally, "452 too many recipients after 2", app, message_id, backoff)
    assert row.end == states.SENT
    assert sorted(a for m in arrived for a in m.rcpt_tos) == sorted(to)
    grouped = deliveries(attempts(app, message_id))
    assert [[r.code for r in delivery] for delivery in grouped] == [[250, 250], [250]]
    assert message(app, message_id).attempt_count == 2
    assert_waits_follow_the_backoff(row)

