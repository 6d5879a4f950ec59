"""SQLite as the embedded default: WAL, busy timeout, and writers that wait for each other."""
import threading

import pytest
from sqlalchemy import text

from webapp.core.database import db
from webapp.core.models import AuditEvent


@pytest.mark.sqlite_only("SQLite's WAL, locks and checkpoints")
def test_sqlite_runs_in_wal_with_foreign_keys_and_a_busy_timeout(app):
    with app.app_context():
        assert db.engine.dialect.name == "sqlite"
        assert db.session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert db.session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert db.session.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


@pytest.mark.sqlite_only("SQLite's WAL, locks and checkpoints")
def test_two_sqlite_writers_wait_for_each_other_instead_of_failing(app, seed):
    # Each thread reads then writes in one transaction, the pattern that fails at once with
    # "database is locked" when transactions begin deferred.
    errors: list[Exception] = []
    barrier = threading.Barrier(4)

    def writer(number: int) -> None:
        try:
            with app.app_context():
                barrier.wait()
                for step in range(10):
                    count = db.session.query(AuditEvent).count()
                    db.session.add(AuditEvent(partition_id=seed["partition_id"], action=f"w{number}.{step}",
                                              details={"seen": count}))
                    db.session.commit()
                db.session.remove()
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with app.app_context():
        assert db.session.query(AuditEvent).filter(AuditEvent.action.like("w%")).count() == 40


@pytest.mark.sqlite_only("SQLite's WAL, locks and checkpoints")
def test_a_checkpoint_copies_what_a_writer_without_automatic_checkpoints_left_in_the_wal(app, seed):
    # The bookkeeping process writes this way; the senders' threads run the checkpoints.
    import sqlite3

    from webapp.core.database import checkpoint_wal

    def in_the_database_file() -> int:
        # immutable: the file alone, as if the WAL were not there.
        with sqlite3.connect(f"file:{db.engine.url.database}?immutable=1", uri=True) as reader:
            return reader.execute("SELECT count(*) FROM audit_event WHERE action LIKE 'step %'").fetchone()[0]

    with app.app_context():
        checkpoint_wal(db.engine)
        with db.engine.connect() as writer:
            writer.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            writer.commit()
            for step in range(20):
                writer.execute(AuditEvent.__table__.insert().values(partition_id=seed["partition_id"],
                                                                    action=f"step {step}", details={}))
                writer.commit()
        assert in_the_database_file() == 0
        checkpoint_wal(db.engine)
        assert in_the_database_file() == 20


def test_a_checkpoint_that_cannot_run_is_only_logged(tmp_path, caplog):
    # Upkeep after a claim: its failure must not undo the claim's work.
    from sqlalchemy import create_engine

    from webapp.core.database import checkpoint_wal

    checkpoint_wal(create_engine(f"sqlite:///{tmp_path}/no-such-folder/mailsender.sqlite"))
    assert "WAL checkpoint failed" in caplog.text
