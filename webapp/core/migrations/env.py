"""Alembic's environment: the migrations run on the connection webapp.core.migrations.upgrade() passes.

Run by Alembic as a script: its imports are absolute.
"""
from alembic import context

from webapp.core import models  # noqa: F401  (fills the metadata)
from webapp.core.database import db

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through webapp.core.migrations.upgrade(), which passes a connection.")

context.configure(
    connection=connection,
    target_metadata=db.metadata,
    # SQLite alters tables by copying them; batch mode does that for us.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
