"""The product's version, as each node records it with its row (scheduler/node.py)."""
from __future__ import annotations

import functools
import pathlib
import tomllib
from importlib import metadata

PACKAGE = "mailsender"
UNKNOWN = "unknown"
_PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"


@functools.cache
def product_version() -> str:
    """The installed package's version; from a checkout that was never installed (no package
    metadata, and no git needed), the version pyproject.toml gives; else "unknown"."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        pass
    try:
        with open(_PYPROJECT, "rb") as project:
            return str(tomllib.load(project)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return UNKNOWN
