"""A save re-renders the queued messages' bytes only when it changes a field they depend on:
an unrelated save (the monitor's threshold, the SMTP password) leaves every byte valid."""
from __future__ import annotations

import pytest

from scheduler import claims
from scheduler.outcomes import Claimed
from tests.scheduler.conftest import queue_messages
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.settings.fields import FIELDS, NON_RENDERING_FIELDS, RENDERING_FIELDS
from webapp.core.settings.store import get_settings, update_settings

pytestmark = pytest.mark.databases


def test_every_field_is_either_one_the_bytes_depend_on_or_not():
    assert set(RENDERING_FIELDS) | set(NON_RENDERING_FIELDS) == {f.name for f in FIELDS}
    assert not set(RENDERING_FIELDS) & set(NON_RENDERING_FIELDS)


def _save(app, partition_id, **fields):
    with app.app_context():
        result = update_settings(partition_id, fields, "test")
        assert result.ok and result.saved, result.errors
        db.session.commit()


def _claimed(app, message_id) -> Claimed:
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        return Claimed(message.id, message.envelope_from, message.rendered, message.rendered_version,
                       message.expires_at, 0, [])


@pytest.mark.parametrize("unrelated", [{"monitor_pending_threshold": 7}, {"smtp_password": "another-1"},
                                       {"batch_size": 3, "sleep_minutes": 2}])
def test_an_unrelated_save_keeps_every_queued_message_valid(app, seed, unrelated, monkeypatch):
    (message_id,) = queue_messages(app, seed["partition_id"], 1)
    _save(app, seed["partition_id"], **unrelated)
    rendered, batch = [], [_claimed(app, message_id)]
    monkeypatch.setattr(claims, "render", lambda message, *a, **k: rendered.append(message.id))
    with app.app_context():
        settings = get_settings(seed["partition_id"])
        assert settings.version > settings.render_version
        claims.refresh_rendering(batch, settings)
    assert rendered == []


@pytest.mark.parametrize("change", [{"column_width": 60}, {"default_charset": "ISO-8859-15"},
                                    {"tracking_id_enabled": True}])
def test_a_save_the_bytes_depend_on_renders_them_again(app, seed, change):
    (message_id,) = queue_messages(app, seed["partition_id"], 1)
    _save(app, seed["partition_id"], **change)
    batch = [_claimed(app, message_id)]
    with app.app_context():
        settings = get_settings(seed["partition_id"])
        assert settings.render_version == settings.version
        claims.refresh_rendering(batch, settings)
        db.session.commit()
        assert db.session.get(OutgoingMessage, message_id).rendered_version == settings.version
    assert batch[0].rendered_version == settings.version


def test_a_claim_renders_at_most_one_slice_and_cuts_the_batch_before_the_next_stale_message(app, seed):
    pid = seed["partition_id"]
    ids = queue_messages(app, pid, 7)
    _save(app, pid, column_width=60)
    batch = [_claimed(app, message_id) for message_id in ids]
    with app.app_context():
        later = claims.refresh_rendering(batch, get_settings(pid), slice_size=3)
        db.session.commit()
        versions = [db.session.get(OutgoingMessage, message_id).rendered_version for message_id in ids]
    assert [m.id for m in batch] == ids[:3] and later == ids[3:]
    version = versions[0]
    assert versions == [version] * 3 + [versions[3]] * 4 and versions[3] != version

