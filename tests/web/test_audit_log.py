"""The audit log, over the API and in the window: newest first, keyset pages that neither repeat
nor skip an event while new ones are written, one action's events, administrators only."""
from __future__ import annotations

from sqlalchemy import select

from tests.conftest import add_other_partition
from webapp.core import audit
from webapp.core.database import db
from webapp.core.models import AuditEvent


def _write(app, partition_id: int, actions: list[str]) -> list[int]:
    with app.app_context():
        events = [audit.record("tester", action, partition_id=partition_id, n=i) for i, action in enumerate(actions)]
        db.session.commit()
        return [event.id for event in events]


def _all_pages(client, headers, **params) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = client.get("/api/v1/audit", headers=headers, query_string=query)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json["items"])
        cursor = answer.json["next"]
        if cursor is None:
            return pages


def test_pages_run_newest_first_and_new_events_neither_repeat_nor_shift_them(app, client, seed, admin_api):
    pid = seed["partition_id"]
    with app.app_context():
        before = db.session.scalars(select(AuditEvent.id).where(AuditEvent.partition_id == pid)).all()
    written = _write(app, pid, [f"test.step{i % 3}" for i in range(12)])
    first = client.get("/api/v1/audit", headers=admin_api, query_string={"limit": 5}).json
    assert [event["id"] for event in first["items"]] == sorted(written, reverse=True)[:5]
    # Events written between two pages go on top; the next page continues where the first ended.
    _write(app, pid, ["test.later"] * 4)
    seen = [event["id"] for event in first["items"]]
    cursor = first["next"]
    while cursor:
        page = client.get("/api/v1/audit", headers=admin_api, query_string={"limit": 5, "cursor": cursor}).json
        seen += [event["id"] for event in page["items"]]
        cursor = page["next"]
    expected = sorted(written + list(before), reverse=True)
    assert seen == expected  # every event once, none of the later ones, in order


def test_one_actions_events_and_their_fields(app, client, seed, admin_api):
    pid = seed["partition_id"]
    ids = _write(app, pid, ["test.a", "test.b", "test.a", "test.b", "test.a"])
    pages = _all_pages(client, admin_api, action="test.a", limit=2)
    assert [len(page) for page in pages] == [2, 1]
    events = [event for page in pages for event in page]
    assert [event["id"] for event in events] == [ids[4], ids[2], ids[0]]
    assert events[0]["actor"] == "tester" and events[0]["action"] == "test.a"
    assert events[0]["details"] == {"n": 4} and events[0]["at"]


def test_another_partitions_events_are_not_shown(app, client, seed, admin_api):
    with app.app_context():
        other, _ = add_other_partition("Other", "info@other.test")
        db.session.commit()
        other_id = other.id
    _write(app, other_id, ["test.elsewhere"])
    events = [event for page in _all_pages(client, admin_api) for event in page]
    assert events and all(event["action"] != "test.elsewhere" for event in events)


def test_agents_may_not_read_it_and_bad_paging_names_the_field(client, seed, admin_api, agent_api):
    assert client.get("/api/v1/audit", headers=agent_api).status_code == 403
    bad = client.get("/api/v1/audit", headers=admin_api, query_string={"cursor": "x1"})
    assert bad.status_code == 400 and "cursor" in bad.json["fields"]
    long = client.get("/api/v1/audit", headers=admin_api, query_string={"action": "a" * 101})
    assert long.status_code == 400 and "action" in long.json["fields"]


def test_the_window_pages_older_events_and_filters_by_an_action(app, admin_client, seed):
    pid = seed["partition_id"]
    app.config["PAGE_SIZE"] = 3
    ids = _write(app, pid, ["test.window"] * 4 + ["test.other"])
    page = admin_client.get("/admin/audit")
    assert page.status_code == 200
    assert f'id="event-{ids[4]}"' in page.text and 'href="/admin/audit"' in page.text  # the nav link
    assert f'id="event-{ids[1]}"' not in page.text and 'id="audit-older"' in page.text
    filtered = admin_client.get("/admin/audit?action=test.window", headers={"HX-Request": "true"})
    assert filtered.text.lstrip().startswith('<section class="section" id="audit-events"')
    assert f'id="event-{ids[4]}"' not in filtered.text and f'id="event-{ids[3]}"' in filtered.text
    older = admin_client.get(f"/admin/audit?action=test.window&before={ids[1]}", headers={"HX-Request": "true"})
    assert f'id="event-{ids[0]}"' in older.text and f'id="event-{ids[1]}"' not in older.text
    assert "older ones" in older.text and 'id="audit-older"' not in older.text


def test_agents_see_no_audit_log(agent_client):
    assert agent_client.get("/admin/audit").status_code in (302, 403)
    assert "Audit log" not in agent_client.get("/outbox").text


def test_a_page_reads_the_index_that_starts_with_its_filter(app, seed):
    from sqlalchemy.dialects import postgresql, sqlite

    with app.app_context():
        dialect = db.engine.dialect.name
        statement = str(select(AuditEvent.id).where(AuditEvent.partition_id == 1, AuditEvent.action == "x",
                                                    AuditEvent.id < 10**9).order_by(AuditEvent.id.desc()).limit(26)
                        .compile(dialect=sqlite.dialect() if dialect == "sqlite" else postgresql.dialect(),
                                 compile_kwargs={"literal_binds": True}))
        connection = db.session.connection()
        if dialect == "sqlite":
            plan = " ".join(str(row[-1]) for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement))
            assert "ix_audit_event_partition_action" in plan and "TEMP B-TREE" not in plan, plan
        else:
            # On a table this small the planner may take either index; what matters is that no sort
            # of the partition's events is needed.
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement))
            assert "Index Scan Backward using ix_audit_event_partition" in plan and "Sort" not in plan, plan
        db.session.rollback()
