"""Rewrites the initial migration from webapp/core/models.py: `make schema`.

Only while no release has shipped: after the first one, add a new revision instead
(`alembic revision --autogenerate` through alembic_config()).
"""
import os
import tempfile

from alembic import command
from sqlalchemy import create_engine

from webapp.core.migrations import HERE, alembic_config

INITIAL = os.path.join(HERE, "versions", "0001_initial.py")


def main() -> None:
    if os.path.exists(INITIAL):
        os.remove(INITIAL)
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{folder}/empty.sqlite")
        with engine.begin() as connection:
            command.revision(alembic_config(connection), message="initial schema",
                             autogenerate=True, rev_id="0001")
    generated = [name for name in os.listdir(os.path.join(HERE, "versions")) if name.startswith("0001_")]
    os.rename(os.path.join(HERE, "versions", generated[0]), INITIAL)
    print(f"wrote {INITIAL}")


if __name__ == "__main__":
    main()
