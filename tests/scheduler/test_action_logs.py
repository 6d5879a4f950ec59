"""The state changes made outside a delivery are logged once each too, and only once committed:
a message queued, its claim given back, an administrator's remove and requeue, a cancellation."""
from __future__ import annotations

import logging

import pytest

from scheduler import claims, message_actions, store
from tests.scheduler.conftest import queue_messages, start, wait_until
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.outbox import enqueue
from webapp.core.settings.store import get_settings
from webapp.core.states import ORIGINATION, QUEUED, REMOVED

pytestmark = pytest.mark.databases


def _lines(caplog, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("mailsender.") and r.getMessage() == message]


def test_a_message_queued_is_logged_once_committed_and_never_if_rolled_back(app, seed, caplog):
    caplog.set_level(logging.INFO, logger="mailsender")
    pid = seed["partition_id"]
    with app.app_context():
        message = OutgoingMessage(partition_id=pid, kind=ORIGINATION, from_address="info@acme.test",
                                  envelope_from="info@acme.test", to_addresses=["customer@example.test"],
                                  subject="Never mind", body_text="Not queued after all.\n")
        enqueue(message, get_settings(pid))
        assert _lines(caplog, "message queued") == []
        db.session.rollback()
    [kept] = queue_messages(app, pid, 1)
    assert [(r.message_id, r.partition, r.kind) for r in _lines(caplog, "message queued")] == [(kept, pid, ORIGINATION)]


def test_claims_given_back_are_logged_per_message_with_the_claims_keys(app, seed, caplog):
    caplog.set_level(logging.INFO, logger="mailsender")
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 2)
    owner = f"node-b/abc123/{pid}/1"
    with app.app_context():
        with db.engine.connect() as connection:
            assert sorted(claims.claim_ids(connection, pid, owner, 10, priority_enabled=False,
                                           lease_seconds=60)) == ids
        assert store.release(owner, ids) == 2
        db.session.commit()
    released = _lines(caplog, "message released")
    assert sorted((r.message_id, r.partition, r.node, r.sender, r.status) for r in released) \
        == [(message_id, pid, "node-b", f"{pid}/1", QUEUED) for message_id in ids]


def test_an_administrators_remove_and_requeue_are_logged_and_a_refused_one_is_not(app, seed, caplog):
    caplog.set_level(logging.INFO, logger="mailsender")
    pid = seed["partition_id"]
    [message_id] = queue_messages(app, pid, 1)
    with app.app_context():
        message_actions.remove("admin", pid, message_id)
        with pytest.raises(message_actions.ActionRefused):
            message_actions.remove("admin", pid, message_id)
        message_actions.requeue("admin", pid, message_id)
    removed = _lines(caplog, "message removed")
    assert [(r.message_id, r.partition, r.status, r.previous_status, r.by) for r in removed] \
        == [(message_id, pid, REMOVED, QUEUED, "admin")]
    requeued = [r for r in _lines(caplog, "message queued") if getattr(r, "action", None) == "requeue"]
    assert [(r.message_id, r.previous_status) for r in requeued] == [(message_id, REMOVED)]


def test_a_claim_owner_gives_the_node_partition_and_sender_keys():
    assert store.owner_context("mail-1/9f8e/3/2") == {"node": "mail-1", "partition": 3, "sender": "3/2"}
    assert store.owner_context("site/mail-1/9f8e/3/2")["node"] == "site/mail-1"
    assert store.owner_context("odd") == {"sender": "odd"}


def test_a_senders_failed_batch_is_logged_with_its_keys(app, seed, make_node, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="mailsender")
    pid = seed["partition_id"]

    def broken(batch, settings, slice_size=None):
        raise RuntimeError("rendering broke")

    monkeypatch.setattr(claims, "refresh_rendering", broken)
    queue_messages(app, pid, 1)
    make_node()
    start(app, pid)
    wait_until(lambda: [r for r in caplog.records if r.getMessage().endswith("batch failed")], what="the failure")
    failed = next(r for r in caplog.records if r.getMessage().endswith("batch failed"))
    assert (failed.levelname, failed.node, failed.partition, failed.sender) == ("ERROR", "test-node", pid, f"{pid}/0")
