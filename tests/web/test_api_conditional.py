"""The API's GETs carry an ETag: a poll that sends it back gets a bodiless 304 while nothing
changed, and the new answer, with a new tag, once something has."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/api/v1/mail-sender/status", "/api/v1/monitor",
                                  "/api/v1/messages?status=queued&limit=50", "/api/v1/audit"])
def test_an_unchanged_answer_is_a_304_without_a_body(client, admin_api, path):
    first = client.get(path, headers=admin_api)
    assert first.status_code == 200 and first.headers["ETag"]
    again = client.get(path, headers={**admin_api, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    stale = client.get(path, headers={**admin_api, "If-None-Match": '"not-this-one"'})
    assert stale.status_code == 200 and stale.json == first.json


def test_a_change_gives_the_new_answer_and_a_new_tag(client, admin_api):
    first = client.get("/api/v1/mail-sender/status", headers=admin_api)
    assert client.post("/api/v1/mail-sender/start", headers=admin_api).status_code == 200
    after = client.get("/api/v1/mail-sender/status", headers={**admin_api, "If-None-Match": first.headers["ETag"]})
    assert after.status_code == 200 and after.headers["ETag"] != first.headers["ETag"]


def test_refusals_carry_no_tag(client, agent_api):
    refused = client.get("/api/v1/mail-sender/status", headers=agent_api)
    assert refused.status_code == 403 and "ETag" not in refused.headers
