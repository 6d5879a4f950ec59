"""The retention purge on SQLite alone: its write lock (tests/monitor/test_retention.py has the rest)."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from scheduler.monitor import retention
from tests.monitor.test_retention import purge
from webapp.core.database import db


@pytest.mark.sqlite_only("SQLite's write lock")
def test_a_look_at_a_purge_not_due_waits_for_no_writer(app, seed, db_url):
    """Every node looks every few seconds: on SQLite a look that is not due reads only, and
    goes by while another connection holds the write lock."""
    pid = seed["partition_id"]
    app.config["MAILSENDER_PURGE_MINUTES"] = 1440
    purge(app, pid)  # the mark: the next purge is a product day away
    writer = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    answered = []

    def look():
        with app.app_context():
            answered.append(retention.run_purge(pid, "other"))
            db.session.remove()

    try:
        thread = threading.Thread(target=look)
        thread.start()
        thread.join(timeout=20)  # the busy timeout is 30 s: a look that needed the lock would wait it out
        assert answered == [None]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        thread.join(timeout=60)
