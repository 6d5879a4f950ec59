"""Keyset pages: the stuck list in queue order, stable while messages arrive; the message lists
on indexes that match their filters."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from tests.monitor.conftest import ago, queued
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import DEFERRED, QUEUED

pytestmark = pytest.mark.databases


def stuck_ids(client, headers, limit: int, cursor: str | None = None) -> tuple[list[int], str | None]:
    answer = client.get(f"/api/v1/monitor?limit={limit}" + (f"&cursor={cursor}" if cursor else ""),
                        headers=headers).json
    return [m["id"] for m in answer["stuck"]], answer["next"]


def test_the_stuck_list_pages_in_queue_order_stable_while_messages_arrive(app, client, seed, admin_api):
    pid = seed["partition_id"]
    # Ids and queue times in different orders: a requeued message keeps its id.
    late = queued(app, pid, 1, queued_at=ago(4000))
    early = queued(app, pid, 1, queued_at=ago(9000))
    middle = queued(app, pid, 1, status=DEFERRED, attempt_count=5, queued_at=ago(6000))
    first, cursor = stuck_ids(client, admin_api, 2)
    assert first == early + middle
    # Arriving meanwhile: one before the page's end in queue order (not shown again, not in the
    # next page), one after it (on the next page).
    before = queued(app, pid, 1, queued_at=ago(8000))
    after = queued(app, pid, 1, queued_at=ago(3000))
    rest, cursor = stuck_ids(client, admin_api, 2, cursor)
    assert rest == late + after and cursor is None
    everything, _ = stuck_ids(client, admin_api, 10)
    assert everything == early + before + middle + late + after


def _plan(statement) -> str:
    compiled = statement.compile(db.engine, compile_kwargs={"literal_binds": True})
    if db.engine.dialect.name == "sqlite":
        rows = db.session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")).all()
        return "\n".join(str(row[-1]) for row in rows)
    db.session.execute(text("SET LOCAL enable_seqscan = off"))  # a test table is too small to tell
    return "\n".join(row[0] for row in db.session.execute(text(f"EXPLAIN {compiled}")))


@pytest.mark.parametrize("agent, status, index", [
    (False, None, "ix_outgoing_list"),
    (False, QUEUED, "ix_outgoing_list_status"),
    (True, None, "ix_outgoing_list_user"),
    (True, QUEUED, "ix_outgoing_list_user_status"),
])
def test_each_list_filter_pages_on_its_own_index_without_sorting(app, seed, agent, status, index):
    from webapp.core.models import User
    from webapp.core.outbox import visible_messages

    queued(app, seed["partition_id"], 3)
    with app.app_context():
        user = db.session.get(User, seed["agent_id" if agent else "admin_id"])
        for order in (OutgoingMessage.id, OutgoingMessage.id.desc()):
            plan = _plan(visible_messages(user, status).where(OutgoingMessage.id > 1).order_by(order).limit(26))
            assert re.search(rf"\b{index}\b", plan), plan
            assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
        db.session.rollback()
