"""The version a node records: the installed package's, else pyproject.toml's, with no git asked."""
import tomllib
from importlib import metadata
from pathlib import Path

from webapp.core import version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_an_installed_product_gives_its_package_version():
    assert version.product_version() == metadata.version("mailsender")


def test_a_checkout_that_was_never_installed_gives_the_version_in_pyproject(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    with open(PYPROJECT, "rb") as project:
        expected = tomllib.load(project)["project"]["version"]
    assert version.product_version.__wrapped__() == expected


def test_without_either_the_version_is_unknown(monkeypatch, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    monkeypatch.setattr(version, "_PYPROJECT", tmp_path / "missing.toml")
    assert version.product_version.__wrapped__() == "unknown"
