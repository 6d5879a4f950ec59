"""Who may read GET /metrics: a bearer of MAILSENDER_METRICS_TOKEN when one is set, else loopback only."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-token-1"
ELSEWHERE = {"REMOTE_ADDR": "203.0.113.7"}


def families(response) -> set[str]:
    return {family.name for family in text_string_to_metric_families(response.text)}


@pytest.fixture
def token_set(app):
    app.config["MAILSENDER_METRICS_TOKEN"] = TOKEN


def test_with_a_token_set_a_request_without_it_or_with_another_answers_401(app, seed, token_set):
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer métrique"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "mailsender_" not in response.text


def test_with_a_token_set_its_bearer_reads_the_metrics_from_anywhere(app, seed, token_set):
    for environ in ({}, ELSEWHERE):
        response = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                                         environ_base=environ)
        assert response.status_code == 200, environ
        assert "mailsender_queue_messages" in families(response)


def test_without_a_token_only_loopback_clients_read_the_metrics(app, seed):
    assert app.config["MAILSENDER_METRICS_TOKEN"] is None  # the default
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        response = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": address})
        assert response.status_code == 200, address
        assert {"mailsender_queue_messages", "mailsender_queue_pending"} <= families(response)
    for address in ("203.0.113.7", "10.0.0.5", "2001:db8::1", ""):
        response = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": address})
        assert response.status_code == 403, address
        assert "mailsender_" not in response.text


def test_no_login_session_is_needed_nor_does_one_open_the_metrics_to_others(app, seed, admin_client):
    response = admin_client.get("/metrics", environ_base=ELSEWHERE)
    assert response.status_code == 403
