"""Two real node processes on one database: each round runs on one of them, so one notification."""
from __future__ import annotations

import pytest

from tests.monitor.conftest import notifications, queued, state
from tests.scheduler.conftest import configure, wait_until
from tests.scheduler.test_processes import NodeProcess, holding
from tests.smtp_servers import SmtpServer
from webapp.core.states import DEFERRED


@pytest.fixture
def node_processes(db_url, tmp_path):
    """`flask --app webapp serve` processes with their monitor on (the engine's tests turn it off)."""
    started: list[NodeProcess] = []

    def launch(name: str) -> NodeProcess:
        process = NodeProcess(db_url, tmp_path, name)
        process.env["MAILSENDER_MONITOR"] = "1"
        # No message may become stuck by age (60 minutes are 12 s) while a slow machine runs this.
        process.env["MAILSENDER_STUCK_AGE_MINUTES"] = "100000"
        started.append(process.start())
        return process

    yield launch
    for process in started:
        process.end()


@pytest.mark.databases
def test_two_node_processes_send_one_notification_between_them(app, seed, node_processes):
    pid = seed["partition_id"]
    with SmtpServer() as server:
        configure(app, pid, server, monitor_sleep_minutes=1, monitor_pending_threshold=1)
        alpha, beta = node_processes("alpha"), node_processes("beta")
        wait_until(lambda: holding(app, "alpha", "beta", senders=1), timeout=120, what="both nodes up")
        rounds_by, rounds_at = set(), set()
        queued(app, pid, 1, status=DEFERRED, attempt_count=3)  # stuck, and with the next one: above 1
        queued(app, pid, 1)
        server.wait_for(2)

        def many_rounds_later():
            seen = state(app, pid)
            rounds_by.add(seen.last_run_node)
            rounds_at.add(seen.last_run_at)
            return len(rounds_at) > 10

        # Many rounds later (a round every 0.2 s, both nodes looking every 0.1 s), still two.
        wait_until(many_rounds_later, what="ten more rounds")
        arrived = list(server.messages)
    assert len(arrived) == 2, alpha.output() + beta.output()
    assert sorted(n.kind for n in notifications(app)) == ["stuck", "threshold"]
    assert rounds_by <= {"alpha", "beta"} and rounds_by
