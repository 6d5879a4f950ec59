"""Alembic migrations: `upgrade()` brings a database to the schema of webapp/core/models.py."""
from __future__ import annotations

import os

from alembic import command
from alembic.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", HERE)
    config.attributes["connection"] = connection
    return config


def upgrade(engine) -> None:
    """Creates or upgrades the schema on this engine; a current schema is left as it is."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
