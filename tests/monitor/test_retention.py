"""The retention purge: what is old enough goes, in slices, on one node a round; the window shows it.

Ages are product days (1440 product minutes; a minute is 0.2 s here, so a day is 288 s): rows
are written with old timestamps, nobody waits for a day to pass.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import event, func, select

from scheduler.monitor import retention
from tests.conftest import ADMIN_PASSWORD, api_token
from tests.monitor.conftest import ago, queued
from tests.scheduler.conftest import wait_until
from webapp import create_app
from webapp.core.database import db
from webapp.core.models import (
    AuditEvent,
    DeliveryAttempt,
    MessageContent,
    MessageRecipient,
    Notification,
    OutgoingMessage,
    PurgeState,
)
from webapp.core.states import (
    CANCELLED,
    CHANNEL_OK,
    CHANNEL_PENDING,
    DEFERRED,
    FAILED,
    HELD,
    QUEUED,
    REMOVED,
    SENDING,
    SENT,
    TRAINING,
)

pytestmark = pytest.mark.databases

DAY = 24 * 60 * 0.2  # a product day here, in seconds
HX = {"HX-Request": "true"}


def days_ago(count: float):
    return ago(count * DAY)


def ended(app, pid: int, status: str, finished_days_ago: float, count: int = 1, **values) -> list[int]:
    """Messages in `status` that ended that many product days ago, each with one delivery attempt."""
    ids = queued(app, pid, count, status=status, finished_at=days_ago(finished_days_ago), **values)
    with app.app_context():
        for message_id in ids:
            db.session.add(DeliveryAttempt(message_id=message_id, node="n", outcome="accepted", code=250))
        db.session.commit()
    return ids


def left(app, model, column, ids) -> set[int]:
    with app.app_context():
        return set(db.session.scalars(select(column).where(column.in_(ids))))


def purge(app, pid: int, node: str = "test-node", **options):
    with app.app_context():
        return retention.run_purge(pid, node, force=True, **options)


def add_audit(app, pid: int, at, action="test.old") -> int:
    with app.app_context():
        row = AuditEvent(partition_id=pid, at=at, actor="test", action=action)
        db.session.add(row)
        db.session.commit()
        return row.id


def add_notification(app, pid: int, created_at, webhook_status=CHANNEL_OK) -> int:
    with app.app_context():
        row = Notification(partition_id=pid, kind="threshold", created_at=created_at, subject="s",
                           webhook_status=webhook_status)
        db.session.add(row)
        db.session.commit()
        return row.id


def purge_events(app, pid: int) -> list[AuditEvent]:
    with app.app_context():
        rows = db.session.scalars(select(AuditEvent).where(AuditEvent.partition_id == pid,
                                                            AuditEvent.action == retention.AUDIT_ACTION)).all()
        db.session.expunge_all()
        return rows


def test_old_sent_failed_and_removed_messages_go_with_their_content_recipients_and_attempts(app, seed):
    pid = seed["partition_id"]
    old = [*ended(app, pid, SENT, 91), *ended(app, pid, FAILED, 200), *ended(app, pid, REMOVED, 95)]
    young = [*ended(app, pid, SENT, 89), *ended(app, pid, FAILED, 1), *ended(app, pid, REMOVED, 0)]
    report = purge(app, pid)
    assert (report.messages, report.attempts, report.recipients) == (3, 3, 3)
    assert left(app, OutgoingMessage, OutgoingMessage.id, old) == set()
    for model in (MessageContent, MessageRecipient, DeliveryAttempt):
        assert left(app, model, model.message_id, old) == set()
        assert left(app, model, model.message_id, young) == set(young)
    assert left(app, OutgoingMessage, OutgoingMessage.id, young) == set(young)


def test_messages_that_may_still_be_sent_or_are_kept_stay_whatever_their_age(app, seed):
    pid = seed["partition_id"]
    kept = [*ended(app, pid, QUEUED, 1000), *ended(app, pid, DEFERRED, 1000), *ended(app, pid, HELD, 1000),
            *ended(app, pid, SENDING, 1000, claim_owner="gone/1/0", lease_until=ago(5)),
            *ended(app, pid, TRAINING, 1000), *ended(app, pid, CANCELLED, 1000)]
    # Queued long ago and never ended: no finished_at at all.
    kept += queued(app, pid, 2, queued_at=days_ago(1000))
    gone = ended(app, pid, SENT, 1000)
    report = purge(app, pid)
    assert report.messages == 1
    assert left(app, OutgoingMessage, OutgoingMessage.id, kept + gone) == set(kept)
    assert left(app, MessageContent, MessageContent.message_id, kept) == set(kept)
    assert left(app, DeliveryAttempt, DeliveryAttempt.message_id, kept) == set(kept[:6])


def test_the_keeping_times_are_the_settings_in_product_days(app, seed):
    pid = seed["partition_id"]
    app.config.update(MAILSENDER_RETAIN_DAYS=0.5, MAILSENDER_AUDIT_RETAIN_DAYS=2, MAILSENDER_NOTIFICATION_RETAIN_DAYS=3)
    [message_old], [message_young] = ended(app, pid, SENT, 0.6), ended(app, pid, SENT, 0.4)
    audit_old, audit_young = add_audit(app, pid, days_ago(2.1)), add_audit(app, pid, days_ago(1.9))
    note_old, note_young = add_notification(app, pid, days_ago(3.1)), add_notification(app, pid, days_ago(2.9))
    report = purge(app, pid)
    assert (report.messages, report.audit_events, report.notifications) == (1, 1, 1)
    assert left(app, OutgoingMessage, OutgoingMessage.id, [message_old, message_young]) == {message_young}
    assert left(app, AuditEvent, AuditEvent.id, [audit_old, audit_young]) == {audit_young}
    assert left(app, Notification, Notification.id, [note_old, note_young]) == {note_young}


def test_a_keeping_time_of_zero_keeps_that_kind_for_ever(app, seed):
    pid = seed["partition_id"]
    app.config.update(MAILSENDER_RETAIN_DAYS=0, MAILSENDER_AUDIT_RETAIN_DAYS=0)
    message = ended(app, pid, SENT, 10_000)
    event_id = add_audit(app, pid, days_ago(10_000))
    note = add_notification(app, pid, days_ago(10_000))
    report = purge(app, pid)
    assert (report.messages, report.audit_events, report.notifications) == (0, 0, 1)
    assert left(app, OutgoingMessage, OutgoingMessage.id, message) == set(message)
    assert left(app, AuditEvent, AuditEvent.id, [event_id]) == {event_id}
    assert left(app, Notification, Notification.id, [note]) == set()


def test_old_audit_events_and_notifications_go_by_their_own_keeping_times(app, seed):
    pid = seed["partition_id"]
    # The defaults: messages and notifications 90 days, audit events 365.
    old_event, young_event = add_audit(app, pid, days_ago(366)), add_audit(app, pid, days_ago(200))
    old_note, young_note = add_notification(app, pid, days_ago(91)), add_notification(app, pid, days_ago(89))
    retrying = add_notification(app, pid, days_ago(400), webhook_status=CHANNEL_PENDING)
    report = purge(app, pid)
    assert (report.audit_events, report.notifications) == (1, 1)
    assert left(app, AuditEvent, AuditEvent.id, [old_event, young_event]) == {young_event}
    assert left(app, Notification, Notification.id, [old_note, young_note, retrying]) == {young_note, retrying}


def test_another_partitions_rows_are_left_to_its_own_purge(app, seed):
    from webapp.core.directory.departments import create_partition

    with app.app_context():
        other = create_partition("Other").id
        db.session.commit()
    theirs = ended(app, other, SENT, 1000)
    their_event = add_audit(app, other, days_ago(1000))
    purge(app, seed["partition_id"])
    assert left(app, OutgoingMessage, OutgoingMessage.id, theirs) == set(theirs)
    assert left(app, AuditEvent, AuditEvent.id, [their_event]) == {their_event}
    assert purge(app, other).messages == 1


class Transactions:
    """The rows each transaction deleted from a table, per commit (an engine event listener)."""

    def __init__(self, engine, table: str):
        self.engine, self.table = engine, table
        self.per_commit: list[int] = []
        self._open = 0

    def _deleted(self, _connection, cursor, statement, *_args):
        if statement.lstrip().upper().startswith(f"DELETE FROM {self.table.upper()} "):
            self._open += cursor.rowcount

    def _commit(self, _connection):
        if self._open:
            self.per_commit.append(self._open)
        self._open = 0

    def __enter__(self):
        event.listen(self.engine, "after_cursor_execute", self._deleted)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *_exc):
        event.remove(self.engine, "after_cursor_execute", self._deleted)
        event.remove(self.engine, "commit", self._commit)


def test_a_purge_deletes_in_slices_a_transaction_each(app, seed):
    pid = seed["partition_id"]
    ids = ended(app, pid, SENT, 100, count=10)
    events = [add_audit(app, pid, days_ago(400)) for _ in range(4)]
    with app.app_context():
        engine = db.engine
    with Transactions(engine, "outgoing_message") as messages, Transactions(engine, "audit_event") as audits:
        report = purge(app, pid, slice_size=3)
    assert messages.per_commit == [3, 3, 3, 1]
    assert audits.per_commit == [3, 1]
    assert (report.messages, report.audit_events, report.slices) == (10, 4, 6)
    assert left(app, OutgoingMessage, OutgoingMessage.id, ids) == set()
    with app.app_context():
        assert db.session.scalar(select(func.count()).where(AuditEvent.action == "test.old")) == 0
    assert events


def test_the_ids_of_purged_messages_and_notifications_are_never_given_again(app, seed):
    pid = seed["partition_id"]
    purged = ended(app, pid, SENT, 100, count=3)
    note = add_notification(app, pid, days_ago(100))
    purge(app, pid)  # every message and notification there was, the newest too
    [new] = queued(app, pid, 1)
    assert new > max(purged)
    assert add_notification(app, pid, ago(0)) > note


def test_the_slice_is_the_setting_by_default(app, seed):
    pid = seed["partition_id"]
    app.config["MAILSENDER_PURGE_SLICE"] = 4
    ended(app, pid, FAILED, 100, count=9)
    assert purge(app, pid).slices == 3


def test_a_purge_told_to_stop_stops_between_slices_and_the_next_goes_on(app, seed):
    pid = seed["partition_id"]
    ids = ended(app, pid, SENT, 100, count=5)
    asked = []

    def keep_going():
        asked.append(1)
        return len(asked) <= 1  # one slice, then stop

    first = purge(app, pid, slice_size=2, keep_going=keep_going)
    assert (first.messages, first.slices, first.stopped) == (2, 1, True)
    assert len(left(app, OutgoingMessage, OutgoingMessage.id, ids)) == 3
    assert purge(app, pid, slice_size=2).messages == 3


def test_a_purge_that_removed_something_is_audited_and_one_that_removed_nothing_is_not(app, seed):
    pid = seed["partition_id"]
    assert purge(app, pid).removed == 0
    assert purge_events(app, pid) == []
    ended(app, pid, REMOVED, 100, count=2)
    add_notification(app, pid, days_ago(100))
    purge(app, pid, node="alpha")
    [entry] = purge_events(app, pid)
    assert entry.actor == retention.AUDIT_ACTOR
    assert entry.details["messages"] == 2 and entry.details["attempts"] == 2 and entry.details["notifications"] == 1
    assert entry.details["node"] == "alpha"


def test_one_node_purges_a_round_however_many_race_for_it(app, seed, app_config):
    pid = seed["partition_id"]
    app.config["MAILSENDER_PURGE_MINUTES"] = 1440  # the next round is a product day away
    ended(app, pid, SENT, 100, count=4)
    apps = [app, create_app(app_config)]
    start = threading.Barrier(len(apps))
    results: dict[str, object] = {}

    def race(one, name):
        with one.app_context():
            start.wait(timeout=30)
            results[name] = retention.run_purge(pid, name)
            db.session.remove()

    threads = [threading.Thread(target=race, args=(one, f"node-{n}")) for n, one in enumerate(apps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        winners = [name for name, report in results.items() if report is not None]
        assert len(results) == 2 and len(winners) == 1
        assert results[winners[0]].messages == 4
        [entry] = purge_events(app, pid)
        assert entry.details["node"] == winners[0]
        with app.app_context():
            assert db.session.scalar(select(PurgeState.last_run_node).where(PurgeState.partition_id == pid)) \
                == winners[0]
            assert db.session.scalar(select(func.count()).select_from(PurgeState)) == 1
            # The round is taken: nobody purges again before the interval has passed.
            assert retention.run_purge(pid, "node-0") is None and retention.run_purge(pid, "node-1") is None
    finally:
        with apps[1].app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_purge_is_due_again_once_the_interval_has_passed(app, seed):
    pid = seed["partition_id"]
    app.config["MAILSENDER_PURGE_MINUTES"] = 1440
    with app.app_context():
        assert retention.run_purge(pid, "alpha") is not None
        assert retention.run_purge(pid, "beta") is None
        db.session.execute(PurgeState.__table__.update().values(
            last_run_at=ago(1441 * 0.2)))  # 1441 product minutes ago
        db.session.commit()
        assert retention.run_purge(pid, "beta") is not None


def test_the_monitor_section_and_the_api_show_the_last_purge(app, seed, admin_client):
    pid = seed["partition_id"]
    headers = api_token(admin_client, "admin", ADMIN_PASSWORD)
    assert admin_client.get("/api/v1/monitor", headers=headers).json["last_purge"] is None
    section = admin_client.get("/admin/mail-sender/monitor", headers=HX).text
    assert 'id="monitor-last-purge" data-removed=""' in section and "not yet" in section
    assert ("Kept: sent, failed and removed messages 90 days, audit events 365 days, notifications 90 days;"
            in section)
    ended(app, pid, SENT, 100, count=2)
    ended(app, pid, FAILED, 100)
    add_audit(app, pid, days_ago(400))
    purge(app, pid, node="alpha", slice_size=2)
    body = admin_client.get("/api/v1/monitor", headers=headers).json["last_purge"]
    assert body["node"] == "alpha" and body["at"] and body["slices"] == 3
    assert body["removed"] == {"messages": 3, "attempts": 3, "recipients": 3, "audit_events": 1, "notifications": 0}
    described = admin_client.get("/api/v1/openapi.json").json["components"]["schemas"]["Monitor"]
    Draft202012Validator(described["properties"]["last_purge"]).validate(body)
    section = admin_client.get("/admin/mail-sender/monitor", headers=HX).text
    assert 'data-removed="10"' in section
    assert ("removed 3 messages (with 3 delivery attempts and 3 recipients), 1 audit event and 0 notifications"
            in section)
    assert "UTC</time> on alpha:" in section
    # A purge with nothing to remove says so.
    purge(app, pid, node="beta")
    section = admin_client.get("/admin/mail-sender/monitor", headers=HX).text
    assert 'data-removed="0"' in section and "nothing was old enough to remove" in section
    assert admin_client.get("/api/v1/monitor", headers=headers).json["last_purge"]["removed"]["messages"] == 0


def test_a_running_node_purges_on_its_own(app, seed, make_node):
    pid = seed["partition_id"]
    old = ended(app, pid, SENT, 100, count=3)
    young = ended(app, pid, SENT, 1)
    make_node()
    wait_until(lambda: not left(app, OutgoingMessage, OutgoingMessage.id, old), what="the old messages purged")
    assert left(app, OutgoingMessage, OutgoingMessage.id, young) == set(young)
    with app.app_context():
        state = db.session.scalars(select(PurgeState).where(PurgeState.partition_id == pid)).one()
        assert state.last_run_node == "test-node"
    wait_until(lambda: purge_events(app, pid), what="the purge's audit entry")


def test_a_product_day_is_1440_product_minutes(app):
    from webapp.core.clock import days

    with app.app_context():
        assert days(2) == timedelta(seconds=2 * DAY)

