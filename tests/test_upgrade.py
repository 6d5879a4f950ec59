"""`flask --app webapp init` upgrades a database in place: from the first revision, filled with
data, through every later one to head, the data intact; and a second init changes nothing.

The chain is read from the script directory, so that each migration added is walked too. The
rows are written through the models' columns that exist at the first revision, with the
models' defaults, so that the test holds while the initial migration is regenerated."""
from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, Table, create_engine, func, inspect, select, text

from tests.conftest import empty_postgres_database
from webapp.core.database import db
from webapp.core.migrations import alembic_config
from webapp.core.security import hash_password
from webapp.core.states import ORIGINATION, QUEUED, ROLE_AGENT

pytestmark = pytest.mark.databases

PASSWORD = "agent-before-upgrade-1"
SUBJECT = "Queued before the upgrade"


@pytest.fixture
def db_url(request, tmp_path):
    """An EMPTY database (no schema at all): a new SQLite file, or a new PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'upgraded.sqlite'}"
        return
    with empty_postgres_database("mailsender_upgrade") as url:
        yield url


def revisions_first_to_head() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "the migrations must form one chain"
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade_to(engine, revision: str) -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def current_revision(engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


_PLACEHOLDERS = {str: "", int: 0, bool: False, float: 0.0, dict: {}, list: [], bytes: b""}


def insert(connection, table_name: str, **values) -> int | None:
    """A row of `table_name` as the database has it now: the models' columns (and defaults) where
    they exist yet; a required column the models no longer have gets a placeholder."""
    model = db.metadata.tables[table_name]
    present = {column["name"]: column for column in inspect(connection).get_columns(table_name)}
    columns = [column._copy() for column in model.columns if column.name in present]
    for column_name, reflected in present.items():
        if column_name in model.columns:
            continue
        columns.append(Column(column_name, reflected["type"]))
        if not reflected["nullable"] and reflected.get("default") is None and column_name not in values:
            values[column_name] = _PLACEHOLDERS[reflected["type"].python_type]
    table = Table(table_name, MetaData(), *columns)
    result = connection.execute(table.insert().values(**values))
    key = result.inserted_primary_key
    return key[0] if key else None


def fill(app, engine) -> dict:
    """A partition with its root department, an agent, and a queued message of theirs."""
    now = datetime.now(timezone.utc)
    with app.app_context():
        password_hash = hash_password(PASSWORD)
    with engine.begin() as connection:
        partition_id = insert(connection, "partition", name="Acme", created_at=now, senders_wanted_at=now)
        insert(connection, "department", partition_id=partition_id, name="Acme", parent_id=None)
        user_id = insert(connection, "user_account", partition_id=partition_id, username="agent1",
                         email="agent1@acme.test", role=ROLE_AGENT, password_hash=password_hash,
                         created_at=now)
        message_id = insert(connection, "outgoing_message", partition_id=partition_id, status=QUEUED,
                            kind=ORIGINATION, user_id=user_id, message_id="<before-upgrade@acme.test>",
                            from_address="support@acme.test", envelope_from="support@acme.test",
                            to_addresses=["customer@example.test"], subject=SUBJECT, queued_at=now)
        insert(connection, "message_content", message_id=message_id, body_text="Hello from the old schema.")
        insert(connection, "message_recipient", message_id=message_id, address="customer@example.test", role="to")
    return {"partition_id": partition_id, "user_id": user_id, "message_id": message_id}


def assert_intact(engine, ids: dict) -> None:
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM partition")).scalars().all() == ["Acme"]
        user = connection.execute(text("SELECT partition_id, username, role FROM user_account WHERE id = :id"),
                                  {"id": ids["user_id"]}).one()
        assert tuple(user) == (ids["partition_id"], "agent1", ROLE_AGENT)
        message = connection.execute(text("SELECT status, user_id, subject FROM outgoing_message WHERE id = :id"),
                                     {"id": ids["message_id"]}).one()
        assert tuple(message) == (QUEUED, ids["user_id"], SUBJECT)
        assert connection.execute(text("SELECT body_text FROM message_content WHERE message_id = :id"),
                                  {"id": ids["message_id"]}).scalar_one() == "Hello from the old schema."


def row_counts(engine) -> dict:
    with engine.connect() as connection:
        return {table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for table in db.metadata.sorted_tables}


def test_init_upgrades_a_filled_database_from_the_first_revision_to_head(app, runner, db_url):
    chain = revisions_first_to_head()
    engine = create_engine(db_url)
    try:
        upgrade_to(engine, chain[0])
        assert current_revision(engine) == chain[0]
        ids = fill(app, engine)
        # Every step on its own first, as a database left at any revision would take it.
        for revision in chain[1:-1]:
            upgrade_to(engine, revision)
            assert current_revision(engine) == revision
            assert_intact(engine, ids)

        result = runner.invoke(args=["init"])
        assert result.exit_code == 0, (result.output, result.exc_info)
        assert current_revision(engine) == head() == chain[-1]
        assert_intact(engine, ids)
        with engine.connect() as connection:
            # The partition there was is the first one: init made no other, and put its admin in it.
            admin_partition = connection.execute(
                text("SELECT partition_id FROM user_account WHERE username = 'admin'")).scalar_one()
        assert admin_partition == ids["partition_id"]

        # The upgraded rows work through the application: the agent logs in and sees the message.
        client = app.test_client()
        answer = client.post("/api/v1/tokens", json={"username": "agent1", "password": PASSWORD})
        assert answer.status_code == 201, answer.text
        shown = client.get(f"/api/v1/messages/{ids['message_id']}",
                           headers={"Authorization": f"Bearer {answer.json['token']}"})
        assert shown.status_code == 200, shown.text
        assert shown.json["subject"] == SUBJECT and shown.json["status"] == QUEUED

        counts = row_counts(engine)
        again = runner.invoke(args=["init"])
        assert again.exit_code == 0, again.output
        assert "Created user" not in again.output
        assert current_revision(engine) == head()
        assert row_counts(engine) == counts
        assert_intact(engine, ids)
    finally:
        engine.dispose()


REBUILD_PARTITION = '''"""a later migration that alters the partition table (rebuilt by copying, on SQLite)"""
from alembic import op
import sqlalchemy as sa

revision = "rebuild_partition"
down_revision = {head!r}
branch_labels = None
depends_on = None


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("partition", recreate="always" if sqlite else "auto") as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade():
    pass
'''


def test_a_migration_that_rebuilds_a_referenced_table_keeps_the_rows_referencing_it(app, runner, db_url,
                                                                                    tmp_path, monkeypatch):
    # Every table of a partition references it ON DELETE CASCADE: dropping the old copy of the
    # table while foreign keys are enforced would empty them all.
    engine = create_engine(db_url)
    try:
        upgrade_to(engine, head())
        ids = fill(app, engine)
        later = tmp_path / "later_versions"
        later.mkdir()
        (later / "rebuild_partition.py").write_text(REBUILD_PARTITION.format(head=head()))
        import webapp.core.migrations as migrations

        def with_the_later_migration(connection=None):
            config = alembic_config(connection)
            config.set_main_option("path_separator", "os")
            config.set_main_option("version_locations", os.pathsep.join([f"{migrations.HERE}/versions", str(later)]))
            return config

        monkeypatch.setattr(migrations, "alembic_config", with_the_later_migration)
        result = runner.invoke(args=["init"])
        assert result.exit_code == 0, (result.output, result.exc_info)
        assert current_revision(engine) == "rebuild_partition"
        assert "note" in {column["name"] for column in inspect(engine).get_columns("partition")}
        assert_intact(engine, ids)
    finally:
        engine.dispose()
