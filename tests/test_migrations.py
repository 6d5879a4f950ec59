"""The migrations build exactly the schema of webapp/core/models.py, and init upgrades with them."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from webapp.core.database import db

pytestmark = pytest.mark.databases


def test_migrated_schema_matches_the_models(app):
    with app.app_context():
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, db.metadata)
        assert differences == []


def test_every_partition_owned_table_carries_partition_id(app):
    # Tables reached only through their parent row (recipients, attempts, links) are the exceptions,
    # and failed logins, whose username may name no user of any partition.
    through_parent = {"message_recipient", "message_content", "delivery_attempt", "user_department", "node",
                      "partition", "alembic_version", "login_failure"}
    with app.app_context():
        inspector = inspect(db.engine)
        for table in inspector.get_table_names():
            if table in through_parent:
                continue
            columns = {column["name"] for column in inspector.get_columns(table)}
            assert "partition_id" in columns, table


def test_the_template_of_a_new_revision_imports_modules_that_exist():
    import importlib
    import pathlib

    import webapp.core.migrations as migrations

    template = pathlib.Path(migrations.__file__).with_name("script.py.mako").read_text()
    imported = [line.split()[1] for line in template.splitlines() if line.startswith("import ")]
    assert "webapp.core.models" in imported
    for name in imported:
        importlib.import_module(name)
