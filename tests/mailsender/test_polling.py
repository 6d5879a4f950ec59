"""A polled section that has not changed answers 204 (which htmx leaves alone), not the section;
a changed one answers 200 with the section, carrying the tag that its next poll sends back."""
from __future__ import annotations

import re

import pytest

from tests.monitor.conftest import put, queued
from tests.scheduler.conftest import configure

HTMX = {"HX-Request": "true"}


def poll(client, path: str, tag: str | None = None):
    headers = {**HTMX, **({"If-None-Match": tag} if tag else {})}
    return client.get(path, headers=headers)


def carried_tag(html: str) -> str:
    """The If-None-Match that the section's root element makes htmx send."""
    found = re.search(r"hx-headers='\{\"If-None-Match\": \"(\\\"[0-9a-f]+\\\")\"\}'", html)
    assert found, "the section carries no tag"
    return found.group(1).replace('\\"', '"')


@pytest.mark.parametrize("path", ["/admin/mail-sender/status", "/admin/mail-sender/monitor/banner",
                                  "/admin/mail-sender/monitor"])
def test_an_unchanged_section_answers_204_and_a_changed_one_200(app, seed, admin_client, path):
    first = poll(admin_client, path)
    assert first.status_code == 200 and first.headers["ETag"] == carried_tag(first.text)
    again = poll(admin_client, path, first.headers["ETag"])
    assert again.status_code == 204 and again.data == b""

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', admin_client.get("/admin/mail-sender").text).group(1)
    admin_client.post("/admin/mail-sender/start", headers={**HTMX, "X-CSRFToken": csrf})
    configure(app, seed["partition_id"], monitor_pending_threshold=1)
    queued(app, seed["partition_id"], 2)
    changed = poll(admin_client, path, first.headers["ETag"])
    assert changed.status_code == 200 and changed.headers["ETag"] != first.headers["ETag"]
    assert changed.headers["ETag"] == carried_tag(changed.text)


def test_the_window_page_gives_each_polled_section_its_tag(admin_client):
    page = admin_client.get("/admin/mail-sender").text
    for section in ("status", "monitor-banner", "monitor"):
        root = re.search(rf'<[a-z]+ [^>]*id="{section}"[^>]*>', page, re.S).group(0)
        tag = carried_tag(root)
        path = {"status": "/admin/mail-sender/status", "monitor-banner": "/admin/mail-sender/monitor/banner",
                "monitor": "/admin/mail-sender/monitor"}[section]
        assert poll(admin_client, path, tag).status_code == 204, section


def test_a_polled_outbox_list_answers_204_until_a_message_moves(app, seed, admin_client):
    ids = queued(app, seed["partition_id"], 1)
    first = poll(admin_client, "/outbox/list")
    assert first.status_code == 200 and first.headers["ETag"] == carried_tag(first.text)
    assert poll(admin_client, "/outbox/list", first.headers["ETag"]).status_code == 204
    put(app, ids[0], status="deferred", attempt_count=1, last_error="451 try later")
    assert poll(admin_client, "/outbox/list", first.headers["ETag"]).status_code == 200
