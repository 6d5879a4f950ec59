"""Every state change of a message is one INFO line with its keys: queued (where it is queued,
this process), claimed and sent, deferred (code and wait) or failed (code), written by the
node's bookkeeping process to its standard error, through a real delivery to a server that
answers 4xx and 5xx."""
from __future__ import annotations

import json
import logging
import signal
import time

import pytest

from tests.scheduler.conftest import configure, queue_messages, start, wait_until
from tests.scheduler.test_processes import NodeProcess, holding
from tests.smtp_servers import SmtpServer

LATER, NEVER, FINE = "later@example.test", "never@example.test", "fine@example.test"


class ChildLines:
    """The JSON lines the bookkeeping process writes to its standard error (capfd), gathered as
    they come."""

    def __init__(self, capfd):
        self.capfd = capfd
        self.lines: list[dict] = []
        self.other: list[str] = []

    def read(self) -> list[dict]:
        for line in self.capfd.readouterr().err.splitlines():
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.other.append(line)
        return self.lines

    def wait_for(self, condition, timeout: float = 60.0, what: str = "lines") -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.read()):
                return self.lines
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; lines so far: {self.lines} {self.other}")


def _about(lines: list[dict], message_id: int, logger: str) -> list[dict]:
    return [line for line in lines if line.get("message_id") == message_id and line["logger"] == logger]


@pytest.mark.databases
def test_each_message_state_change_is_one_line_with_its_keys(app, seed, make_node, capfd, caplog):
    caplog.set_level(logging.INFO, logger="mailsender")
    pid = seed["partition_id"]
    replies = {LATER: ["451 4.3.0 Try later", "250 OK"], NEVER: ["550 5.1.1 No such user"]}
    with SmtpServer(rcpt_replies=replies) as server:
        configure(app, pid, server, sleep_minutes=0)
        later, = queue_messages(app, pid, 1, to=(LATER,))
        never, = queue_messages(app, pid, 1, to=(NEVER,))
        fine, = queue_messages(app, pid, 1, to=(FINE,))
        app.config.update(MAILSENDER_LOG_FORMAT="json", MAILSENDER_BACKOFF_JITTER=0.0)
        make_node()
        start(app, pid)
        child = ChildLines(capfd)
        settled = {later: "sent", never: "failed", fine: "sent"}
        lines = child.wait_for(lambda lines: all(
            any(line.get("status") == status for line in _about(lines, message, "mailsender.delivery"))
            for message, status in settled.items()), what="every message settled")

    queued = [r for r in caplog.records if r.name == "mailsender.outbox" and r.getMessage() == "message queued"]
    assert [(r.message_id, r.partition, r.levelname) for r in queued] == [(m, pid, "INFO") for m in settled]

    assert {line["level"] for line in lines if line["logger"] in ("mailsender.claims", "mailsender.delivery")} \
        == {"INFO"}
    for message in settled:
        claimed = _about(lines, message, "mailsender.claims")
        assert claimed and all(line["message"] == "message claimed" for line in claimed)
        assert all(line["partition"] == pid and line["node"] == "test-node" and line["sender"] == f"{pid}/0"
                   for line in claimed)
    assert len(_about(lines, later, "mailsender.claims")) == 2, "claimed again after its deferral"

    later_lines = _about(lines, later, "mailsender.delivery")
    assert [line["message"] for line in later_lines] == ["message deferred", "message sent"]
    deferred, sent = later_lines
    # The first wait: one product minute (0.2 s here), no jitter; told as the engine decided it.
    assert deferred["code"] == 451 and 0 < deferred["wait_seconds"] <= 0.2
    assert deferred["retry_at"] and "Try later" in deferred["error"]
    assert {"node": "test-node", "partition": pid, "sender": f"{pid}/0"}.items() <= sent.items()
    assert "code" not in sent

    [failed] = _about(lines, never, "mailsender.delivery")
    assert failed["message"] == "message failed" and failed["code"] == 550 and "No such user" in failed["error"]
    assert "wait_seconds" not in failed
    assert [line["message"] for line in _about(lines, fine, "mailsender.delivery")] == ["message sent"]


def test_the_bookkeeping_process_writes_text_lines_when_told_to(app, seed, make_node, capfd):
    pid = seed["partition_id"]
    with SmtpServer() as server:
        configure(app, pid, server, sleep_minutes=0)
        [message_id] = queue_messages(app, pid, 1)
        app.config.update(MAILSENDER_LOG_FORMAT="text")
        make_node()
        start(app, pid)
        child = ChildLines(capfd)
        deadline = time.monotonic() + 60
        while not any("mailsender.delivery: message sent" in line for line in child.other):
            assert time.monotonic() < deadline, f"no text line for the sent message: {child.other}"
            child.read()
            time.sleep(0.05)
    [sent] = [line for line in child.other if "mailsender.delivery: message sent" in line]
    assert f" INFO mailsender.delivery: message sent message_id={message_id} node=test-node partition={pid}" in sent
    assert child.lines == [], "no JSON line"


def test_a_serving_node_told_text_writes_text_lines_from_both_its_processes(app, seed, db_url, tmp_path):
    pid = seed["partition_id"]
    node = NodeProcess(db_url, tmp_path, "text-node")
    node.env.update(MAILSENDER_LOG_FORMAT="text")
    with SmtpServer() as server:
        configure(app, pid, server, sleep_minutes=0)
        [message_id] = queue_messages(app, pid, 1)
        node.start()
        try:
            wait_until(lambda: holding(app, "text-node", senders=1), timeout=120, what="the node up")
            start(app, pid)
            server.wait_for(1)
            wait_until(lambda: "mailsender.delivery: message sent" in node.output(), what="the sent line")
        finally:
            node.signal(signal.SIGTERM)
            assert node.wait() == 0
    printed = node.output()
    assert " INFO mailsender.engine: node text-node started" in printed  # the serving process
    assert f"mailsender.delivery: message sent message_id={message_id} node=text-node" in printed  # its bookkeeper
    assert not [line for line in printed.splitlines() if line.startswith("{")]
