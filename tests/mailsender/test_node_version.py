"""Each node's version and start time, as a real node writes them: in the status API beside every
field it had, and in the Status section's line for the node."""
from __future__ import annotations

import html
from datetime import datetime
from importlib import metadata

import pytest

from scheduler.node import Node as EngineNode
from scheduler.status import sender_status
from tests.scheduler.conftest import wait_until
from webapp.core.clock import utcnow
from webapp.core.database import db

pytestmark = pytest.mark.databases

NODE_FIELDS = {"name", "state", "defined", "running", "started_at", "version", "last_seen",
               "last_seen_seconds_ago", "stopped_at", "errors"}


@pytest.fixture
def engine(app, seed):
    """A real node on this app, listed once it holds its name."""
    app.config.update(MAILSENDER_SENDERS=1, MAILSENDER_MONITOR=False)
    before = utcnow().replace(microsecond=0)
    running = EngineNode(app)
    running.start()

    def listed():
        with app.app_context():
            try:
                return sender_status(seed["partition_id"])["nodes"]
            finally:
                db.session.rollback()

    wait_until(listed, timeout=60, what="the node listed")
    yield before
    running.stop(timeout=10)


def test_the_status_api_gives_each_nodes_version_and_start_time_and_keeps_every_field(client, admin_api, engine):
    [node] = client.get("/api/v1/mail-sender/status", headers=admin_api).json["nodes"]
    assert set(node) == NODE_FIELDS
    assert node["version"] == metadata.version("mailsender")
    started = datetime.fromisoformat(node["started_at"])
    assert engine <= started <= utcnow()
    assert (node["name"], node["state"]) == ("test-node", "running")


def test_the_status_section_shows_the_nodes_version_and_start_time(admin_client, seed, engine):
    section = html.unescape(admin_client.get("/admin/mail-sender/status", headers={"HX-Request": "true"}).text)
    with admin_client.application.app_context():
        [node] = sender_status(seed["partition_id"])["nodes"]
    row = section[section.index('data-node="test-node"'):]
    row = row[:row.index("</tr>")]
    assert f'version <span class="node-version">{metadata.version("mailsender")}</span>' in row
    shown = node["started_at"][:19].replace("T", " ")
    assert f'started <span class="node-started"><time datetime="{node["started_at"]}">{shown} UTC</time></span>' in row
