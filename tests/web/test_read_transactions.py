"""On SQLite a GET reads in a transaction that waits for no writer: with the write lock held
from outside (as a sender's commit holds it), the window and the API's reads still answer."""
from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, api_token, login
from webapp.core.database import WriteInsideRead, db
from webapp.core.models import UserSession

READS = ("/admin/mail-sender", "/outbox", "/api/v1/mail-sender/status", "/api/v1/monitor",
         "/api/v1/messages?status=queued&limit=50", "/api/v1/me")
SECTIONS = ("/admin/mail-sender/status", "/admin/mail-sender/monitor", "/admin/mail-sender/monitor/banner")


class WriteLockHolder:
    """Holds SQLite's write lock from another connection until told to let go (at most `longest` s)."""

    def __init__(self, path: str, longest: float = 120.0):
        self.path, self.longest = path, longest
        self.holding, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self):
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        self.holding.set()
        self.release.wait(self.longest)
        connection.execute("ROLLBACK")
        connection.close()

    def __enter__(self):
        self.thread.start()
        assert self.holding.wait(10)
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(10)


@pytest.mark.sqlite_only("SQLite's write lock and its read transactions")
def test_the_windows_reads_answer_while_a_writer_holds_the_lock(app, client, seed, db_url):
    login(client, "admin", ADMIN_PASSWORD)
    bearer = api_token(app.test_client(), "agent", AGENT_PASSWORD)
    with WriteLockHolder(db_url.removeprefix("sqlite:///")):
        # Were any of these to wait for the lock, it would wait out the 30 s busy timeout and fail.
        answers = {url: client.get(url).status_code for url in READS}
        answers.update({url: client.get(url, headers={"HX-Request": "true"}).status_code for url in SECTIONS})
        answers["bearer /api/v1/messages"] = app.test_client().get("/api/v1/messages", headers=bearer).status_code
    assert answers == {**{url: 200 for url in READS + SECTIONS}, "bearer /api/v1/messages": 200}


@pytest.mark.sqlite_only("SQLite's write lock and its read transactions")
def test_a_write_inside_a_read_fails_loudly_in_tests(app, seed):
    from webapp.core.database import begin_read

    with app.app_context():
        begin_read()
        with pytest.raises(WriteInsideRead):
            db.session.execute(UserSession.__table__.delete())


def test_a_due_renewal_is_written_apart_and_the_read_goes_on(app, client, seed, monkeypatch):
    from webapp.core import clock
    from webapp.core.directory import users

    login(client, "agent", AGENT_PASSWORD)
    with app.app_context():
        before = db.session.scalar(select(UserSession.last_seen_at))
        later = before + users.session_idle_limit() / 30
    monkeypatch.setattr(clock, "utcnow", lambda: later)
    assert client.get("/outbox").status_code == 200
    with app.app_context():
        assert db.session.scalar(select(UserSession.last_seen_at)) == later
