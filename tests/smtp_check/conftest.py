"""Fixtures for the Test button and its API: bearer headers, and saving settings as Save does."""
from __future__ import annotations

import pytest

from webapp.core.database import db
from webapp.core.settings.store import update_settings


@pytest.fixture
def save(app, seed):
    """save(**settings): stores settings through the one validator, as the Save button does."""

    def save_settings(**fields):
        with app.app_context():
            result = update_settings(seed["partition_id"], fields, "test")
            assert result.ok, result.errors
            db.session.commit()

    return save_settings
