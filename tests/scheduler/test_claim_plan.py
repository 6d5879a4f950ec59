"""The claim's selection reads its index in claim order, with priority on as with it off: no
sort of every due message of the partition while the write lock is held."""
from __future__ import annotations

import pytest

from scheduler.claims import _claim_selection
from webapp.core.database import db


@pytest.mark.sqlite_only("SQLite's EXPLAIN QUERY PLAN")
@pytest.mark.parametrize("priority_enabled, index", [(False, "ix_outgoing_claim"),
                                                     (True, "ix_outgoing_claim_priority")])
def test_the_claims_selection_reads_its_index_in_order(app, seed, priority_enabled, index):
    with app.app_context():
        selection = _claim_selection(db.engine.dialect, priority_enabled)
        parameters = selection.parameters({"claim_partition": seed["partition_id"], "claim_limit": 500})
        connection = db.session.connection().connection.driver_connection
        plan = [row[-1] for row in connection.execute("EXPLAIN QUERY PLAN " + selection.sql, parameters)]
        db.session.rollback()
    # One search of the index per way of being due; the union's own order of at most 3 × 500 rows is
    # the only sort.
    searches = [line for line in plan if line.startswith("SEARCH") and "outgoing_message" in line]
    assert len(searches) == 3 and all(f"USING COVERING INDEX {index} " in line or f"USING INDEX {index} " in line
                                      for line in searches), plan
    assert sum("TEMP B-TREE" in line for line in plan) <= 1, plan
