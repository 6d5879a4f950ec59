"""GET /metrics of a running node that delivered to real SMTP servers: the counters say what the
server got, the attempts what it answered, the gauges what the database holds."""
from __future__ import annotations

import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from scheduler.metrics import QUEUE_STATES
from scheduler.sender import claim_owner, owner_partition
from tests.scheduler.conftest import configure, queue_messages, start, wait_until
from tests.smtp_servers import ScriptedSmtpServer, SmtpServer
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, OutgoingMessage
from webapp.core.states import PENDING_STATES

OK, REFUSED, LATER = "customer@example.test", "nobody@example.test", "busy@example.test"
# A deferred message waits this many product minutes: it is not tried again during a test.
NO_RETRY = {"MAILSENDER_BACKOFF_FIRST_MINUTES": 100_000.0, "MAILSENDER_BACKOFF_MAX_MINUTES": 100_000.0}


def scrape(app) -> dict[tuple, float]:
    """Every sample of /metrics, by (name, labels as a sorted tuple)."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200, response.text
    assert response.content_type.startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted((key, str(label)) for key, label in labels.items()))))


def settled(samples: dict, partition_id: int) -> dict[str, float]:
    return {dict(labels)["status"]: count for (name, labels), count in samples.items()
            if name == "mailsender_messages_settled_total" and dict(labels)["partition"] == str(partition_id)}


def attempts(samples: dict, partition_id: int) -> dict[str, float]:
    return {dict(labels)["class"]: count for (name, labels), count in samples.items()
            if name == "mailsender_smtp_attempts_total" and dict(labels)["partition"] == str(partition_id)}


def attempt_rows_by_class(app) -> dict[str, int]:
    """The DeliveryAttempt rows as the database has them, by their code's hundred."""
    with app.app_context():
        codes = db.session.scalars(select(DeliveryAttempt.code)).all()
    found: dict[str, int] = {}
    for code in codes:
        key = f"{code // 100}xx" if code is not None else "none"
        found[key] = found.get(key, 0) + 1
    return found


def counted_in_the_database(app, partition_id: int) -> dict[str, int]:
    with app.app_context():
        return dict(db.session.execute(
            select(OutgoingMessage.status, func.count()).where(OutgoingMessage.partition_id == partition_id)
            .group_by(OutgoingMessage.status)).all())


@pytest.mark.databases
def test_the_metrics_say_what_the_server_got_and_answered_and_what_the_queue_holds(app, seed, make_node):
    pid = seed["partition_id"]
    replies = {REFUSED: ["550 5.1.1 No such user here"], LATER: ["451 4.3.0 Try again later"]}
    with SmtpServer(rcpt_replies=replies) as server:
        configure(app, pid, server)
        queue_messages(app, pid, 3, to=(OK,))
        queue_messages(app, pid, 1, to=(REFUSED,), subject="Refused")
        queue_messages(app, pid, 1, to=(LATER,), subject="Later")
        make_node(**NO_RETRY)
        start(app, pid)

        server.wait_for(3)
        # Counted when the bookkeeper's commit is answered: a moment after the rows are written.
        wait_until(lambda: sum(settled(scrape(app), pid).values()) == 5, what="five outcomes counted")
        samples = scrape(app)  # its gauges read after those commits

    delivered = len(server.messages)
    assert delivered == 3
    in_database = counted_in_the_database(app, pid)
    assert in_database == {"sent": 3, "failed": 1, "deferred": 1}
    assert settled(samples, pid) == {"sent": delivered, "failed": 1, "deferred": 1}

    assert attempts(samples, pid) == {"2xx": 3, "5xx": 1, "4xx": 1} == attempt_rows_by_class(app)

    for state in QUEUE_STATES:
        assert value(samples, "mailsender_queue_messages", partition=pid, state=state) == in_database.get(state, 0)
    pending = sum(in_database.get(state, 0) for state in PENDING_STATES)
    assert value(samples, "mailsender_queue_pending", partition=pid) == pending == 1
    assert value(samples, "mailsender_queue_stuck", partition=pid) == 0

    assert value(samples, "mailsender_delivery_latency_seconds_count", partition=pid) == delivered
    assert value(samples, "mailsender_delivery_latency_seconds_sum", partition=pid) > 0
    assert value(samples, "mailsender_delivery_latency_seconds_bucket", partition=pid, le="+Inf") == delivered
    assert value(samples, "mailsender_smtp_transaction_seconds_count", partition=pid) == 5
    assert value(samples, "mailsender_smtp_transaction_seconds_sum", partition=pid) > 0
    assert value(samples, "mailsender_claim_seconds_count", partition=pid) >= 1

    assert value(samples, "mailsender_senders_defined", node="test-node", partition=pid) == 1
    assert value(samples, "mailsender_senders_running", node="test-node", partition=pid) == 1
    assert value(samples, "mailsender_bookkeeper_queue_depth", node="test-node") >= 0


def test_a_message_withheld_in_training_mode_is_counted_as_training_and_never_attempted(app, seed, make_node):
    pid = seed["partition_id"]
    with SmtpServer() as server:
        configure(app, pid, server, training_enabled=True, company_domains=["acme.test"])
        queue_messages(app, pid, 1, to=(OK,))  # outside the company: withheld
        queue_messages(app, pid, 1, to=("colleague@acme.test",), subject="Inside")
        make_node(**NO_RETRY)
        start(app, pid)
        server.wait_for(1)
        wait_until(lambda: sum(settled(scrape(app), pid).values()) == 2, what="both outcomes counted")
        samples = scrape(app)
    assert counted_in_the_database(app, pid) == {"training": 1, "sent": 1}
    assert settled(samples, pid) == {"training": 1, "sent": 1}
    assert attempts(samples, pid) == {"2xx": 1}
    assert [received.rcpt_tos for received in server.messages] == [["colleague@acme.test"]]


def test_a_server_that_is_not_listening_is_counted_as_a_connection_error(app, seed, make_node):
    pid = seed["partition_id"]
    configure(app, pid, smtp_host="127.0.0.1", smtp_port=SmtpServer.free_port())
    queue_messages(app, pid, 2, to=(OK,))
    make_node(**NO_RETRY)
    start(app, pid)

    samples = wait_until(lambda: (found := scrape(app)) and settled(found, pid).get("deferred") == 2 and found,
                         what="both deferred")
    # One attempt, at the connection; the second message waits untried, and is no attempt.
    assert attempts(samples, pid) == {"connection_error": 1} and attempt_rows_by_class(app) == {"none": 1}
    assert value(samples, "mailsender_smtp_transaction_seconds_count", partition=pid) is None
    assert value(samples, "mailsender_delivery_latency_seconds_count", partition=pid) is None


def test_a_message_larger_than_the_servers_size_limit_is_counted_as_not_sent(app, seed, make_node):
    pid = seed["partition_id"]
    with SmtpServer(size_limit=100) as server:
        configure(app, pid, server)
        queue_messages(app, pid, 1, to=(OK,))
        make_node(**NO_RETRY)
        start(app, pid)
        samples = wait_until(lambda: (found := scrape(app)) and settled(found, pid).get("failed") == 1 and found,
                             what="the message failed")
    assert attempts(samples, pid) == {"not_sent": 1} and not server.commands


def test_a_server_that_stops_answering_is_counted_as_a_timeout(app, seed, make_node):
    pid = seed["partition_id"]
    with ScriptedSmtpServer(faults=["stall at RCPT"]) as server:
        configure(app, pid, smtp_host=server.host, smtp_port=server.port)
        queue_messages(app, pid, 1, to=(OK,))
        make_node(MAILSENDER_SMTP_COMMAND_TIMEOUT=0.5, **NO_RETRY)
        start(app, pid)
        samples = wait_until(lambda: (found := scrape(app)) and settled(found, pid).get("deferred") == 1 and found,
                             what="the message deferred")
    assert attempts(samples, pid) == {"timeout": 1}


def test_the_bookkeeper_queue_depth_counts_the_jobs_its_process_has_not_answered(app, seed, make_node):
    pid = seed["partition_id"]
    with SmtpServer() as server:
        configure(app, pid, server)
        queue_messages(app, pid, 1, to=(OK,))
        node = make_node()
        depth = lambda: value(scrape(app), "mailsender_bookkeeper_queue_depth", node="test-node")  # noqa: E731
        child = node.bookkeeper.child_pid
        os.kill(child, signal.SIGSTOP)  # the sender's claim waits in its pipe, unanswered
        try:
            start(app, pid)
            wait_until(lambda: depth() >= 1, what="a job waiting for the bookkeeper")
            assert not server.messages
        finally:
            os.kill(child, signal.SIGCONT)
        server.wait_for(1)
        wait_until(lambda: depth() == 0 and settled(scrape(app), pid) == {"sent": 1}, what="every job answered")


def test_a_claim_owner_names_its_partition_whatever_the_node_is_called():
    assert owner_partition(claim_owner("node-a", "0123abcd", 42, 3)) == 42
    assert owner_partition(claim_owner("rack/7", "0123abcd", 5, 0)) == 5
