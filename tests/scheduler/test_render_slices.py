"""After a save that changes every queued message's bytes, the backlog is rendered again in slices,
one per claim (scheduler/claims.py RENDER_SLICE), and every message goes with the new bytes."""
from __future__ import annotations

from scheduler import claims
from tests.scheduler.conftest import configure, queue_messages, start, statuses, wait_until
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.settings.store import get_settings, update_settings


def _save(app, partition_id, **fields):
    with app.app_context():
        result = update_settings(partition_id, fields, "test")
        assert result.ok and result.saved, result.errors
        db.session.commit()


def test_after_a_byte_changing_save_a_backlog_drains_in_slices_and_every_message_goes_rerendered(
        app, seed, make_node, monkeypatch):
    pid = seed["partition_id"]
    sizes = []
    real = claims.refresh_rendering

    def counted(batch, settings, slice_size=None):
        later = real(batch, settings, slice_size=4)
        sizes.append(len(batch))
        return later

    monkeypatch.setattr(claims, "refresh_rendering", counted)
    with SmtpServer() as server:
        configure(app, pid, server, sleep_minutes=0, batch_size=10)
        ids = queue_messages(app, pid, 12, subject="A subject long enough to be wrapped at a narrow width")
        _save(app, pid, column_width=20)
        make_node()
        start(app, pid)
        arrived = server.wait_for(12)
        wait_until(lambda: statuses(app, ids) == {"sent": 12}, what="all sent")
    assert max(sizes) <= 4 and len(set(server.message_ids())) == 12 == len(arrived)
    with app.app_context():
        version = get_settings(pid).render_version
        assert {db.session.get(OutgoingMessage, i).rendered_version for i in ids} == {version}
