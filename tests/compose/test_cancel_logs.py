"""A message submitted through the API is logged queued, and its cancellation inside the undo
hold is logged cancelled: one line each, with the message's keys, and nothing of its body."""
from __future__ import annotations

import logging

import pytest

from tests.agents.conftest import world  # noqa: F401  (fixture)
from tests.compose.test_send_later import from_support, hold, submit  # noqa: F401  (fixture)


@pytest.mark.databases
def test_a_submitted_message_and_its_cancellation_are_one_line_each(app, client, world, agent_api, from_support,
                                                                      caplog):
    caplog.set_level(logging.DEBUG)
    hold(app, 600)
    sent = submit(client, agent_api, body_text="The order number is 55-1234.\n")
    assert client.post(f"/api/v1/messages/{sent['id']}/cancel", headers=agent_api).status_code == 200
    assert client.post(f"/api/v1/messages/{sent['id']}/cancel", headers=agent_api).status_code == 409
    lines = [(r.getMessage(), r.message_id, r.partition) for r in caplog.records
             if r.name == "mailsender.outbox"]
    assert lines == [("message queued", sent["id"], world["partition_id"]),
                     ("message cancelled", sent["id"], world["partition_id"])]
    [queued] = [r for r in caplog.records if r.getMessage() == "message queued"]
    assert queued.not_before is not None, "queued to wait out the undo hold"
    assert "55-1234" not in caplog.text
