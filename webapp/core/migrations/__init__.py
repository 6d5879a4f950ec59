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
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            with connection.begin():
                command.upgrade(alembic_config(connection), "head")
            return
        # Batch mode alters an SQLite table by copying it and dropping the old one; with foreign
        # keys on, that drop would delete every row referencing it (ON DELETE CASCADE). The pragma
        # does nothing inside a transaction, so it is set on the driver's connection before one.
        driver = connection.connection.driver_connection
        keys_were_on = driver.execute("PRAGMA foreign_keys").fetchone()[0]
        driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                command.upgrade(alembic_config(connection), "head")
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migrations left rows whose foreign keys point nowhere: {broken[:5]}")
        finally:
            driver.execute(f"PRAGMA foreign_keys={'ON' if keys_were_on else 'OFF'}")
