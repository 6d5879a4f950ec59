"""/healthz and /readyz, asked with no login: this process's real node (start_node), its real
bookkeeping process killed with SIGKILL, a database that cannot be opened or that stops
answering (a proxy that holds every byte), and a node that waits for the lease on its name."""
from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from scheduler import bookkeeper, health
from scheduler.node import start_node, stop_node
from tests.scheduler.conftest import wait_until
from tests.smtp_servers import SmtpServer
from tests.suites.test_pause_and_crash import Proxy
from webapp import create_app
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.models import Node


@pytest.fixture
def app_config(app_config):
    # A short lease on the name, so that a node that waits for it tries again every 2 s.
    return {**app_config, "MAILSENDER_SENDERS": 1, "MAILSENDER_MONITOR": False,
            "MAILSENDER_NODE_LEASE_SECONDS": 6.0}


@pytest.fixture
def serving():
    """Starts `app`'s node as this process's node, the way `flask serve` does; stops it afterwards."""
    started = []

    def start(app):
        started.append(start_node(app))
        return started[-1]

    yield start
    if started:
        stop_node(timeout=10)


def answer(client, path: str):
    response = client.get(path)
    return response.status_code, response.json


def ok(client, path: str) -> bool:
    return client.get(path).status_code == 200


@pytest.mark.databases
def test_a_running_node_is_alive_and_then_ready_with_no_login_and_no_figures(app, seed, client, serving):
    serving(app)
    assert answer(client, "/healthz") == (200, {"status": "ok", "runs_node": True})
    wait_until(lambda: ok(client, "/readyz"), timeout=60, what="the node ready")
    assert answer(client, "/readyz") == (200, {"status": "ok", "runs_node": True})
    assert client.get("/healthz").headers["Cache-Control"] == "no-store"


@pytest.mark.databases
def test_a_killed_bookkeeping_process_fails_both_until_its_replacement_runs(app, seed, client, serving, monkeypatch):
    # Its replacement comes after a pause: long enough here that a busy machine cannot miss it.
    monkeypatch.setattr(bookkeeper, "RESPAWN_SECONDS", 5.0)
    node = serving(app)
    wait_until(lambda: ok(client, "/readyz"), timeout=60, what="the node ready")
    killed = node.bookkeeper.child_pid
    os.kill(killed, signal.SIGKILL)

    def failing():
        status, body = answer(client, "/healthz")
        return body if status == 503 else None

    body = wait_until(failing, timeout=30, what="/healthz to fail")
    assert body == {"status": "failing", "reason": "the bookkeeper process is not running", "runs_node": True}
    status, body = answer(client, "/readyz")
    assert status == 503 and body["reason"] == "the bookkeeper process is not running"

    wait_until(lambda: ok(client, "/healthz") and ok(client, "/readyz"), timeout=60, what="the replacement")
    assert node.bookkeeper.child_pid not in (None, killed)


def test_a_scheduler_that_runs_no_tick_for_a_lease_fails_healthz_until_it_runs_again(app, seed, client, serving):
    node = serving(app)
    wait_until(lambda: ok(client, "/readyz"), timeout=60, what="the node ready")
    node.scheduler.pause()  # as a scheduler that hangs: no job runs, and the lease is not renewed

    def failing():
        status, body = answer(client, "/healthz")
        return body["reason"] if status == 503 else None

    reason = wait_until(failing, timeout=60, what="/healthz to fail")
    assert reason.startswith("the scheduler has not run the node's control tick for ")
    node.scheduler.resume()
    wait_until(lambda: ok(client, "/healthz") and ok(client, "/readyz"), timeout=60, what="the node back")


@pytest.mark.databases
def test_readyz_fails_while_another_process_holds_the_name_and_passes_once_the_node_takes_it(
        app, seed, client, serving):
    with app.app_context():
        db.session.add(Node(name="test-node", lease_owner="a-twin", lease_until=utcnow() + timedelta(hours=1),
                            lease_host="elsewhere", lease_pid=1, last_seen=utcnow()))
        db.session.commit()
    node = serving(app)
    # Alive all the while: waiting for the name is no failure of this process.
    assert answer(client, "/healthz") == (200, {"status": "ok", "runs_node": True})
    status, body = answer(client, "/readyz")
    assert (status, body["status"]) == (503, "not_ready")
    assert body["reason"] == "the node waits for the lease on its name 'test-node' (another process may hold it)"
    assert not node.active

    with app.app_context():
        db.session.execute(update(Node).where(Node.name == "test-node")
                           .values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    wait_until(lambda: ok(client, "/readyz"), timeout=60, what="the node ready")
    assert node.active and node.senders


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/no-such-folder/mailsender.sqlite",
                                 "postgresql+psycopg://mailsender@127.0.0.1:{port}/mailsender"],
                         ids=["sqlite", "postgresql"])
def test_a_web_process_whose_database_cannot_be_opened_fails_saying_so(app_config, tmp_path, monkeypatch, url):
    monkeypatch.setenv("MAILSENDER_INSTANCE", str(tmp_path / "instance"))
    url = url.format(tmp=tmp_path, port=SmtpServer.free_port())  # nothing listens there
    app = create_app({**app_config, "SQLALCHEMY_DATABASE_URI": url})
    client = app.test_client()
    for path in ("/healthz", "/readyz"):
        status, body = answer(client, path)
        assert status == 503, path
        assert body["reason"] == "the database does not answer (OperationalError)", path
        assert body["runs_node"] is False
    # Neither the address nor the driver's words are given away.
    assert "127.0.0.1" not in client.get("/healthz").text


def test_a_web_process_that_runs_no_node_is_alive_and_ready_while_the_database_answers(client):
    assert answer(client, "/healthz") == (200, {"status": "ok", "runs_node": False})
    assert answer(client, "/readyz") == (200, {"status": "ok", "runs_node": False})


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_node_whose_database_stops_answering_fails_within_the_bound_and_recovers(
        app, app_config, db_url, seed, serving, monkeypatch):
    monkeypatch.setattr(health, "DATABASE_ANSWER_SECONDS", 0.5)
    url = make_url(db_url)
    proxy = Proxy(url.host, url.port or 5432)
    proxied = create_app({**app_config, "SQLALCHEMY_DATABASE_URI": url.set(
        host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)})
    client = proxied.test_client()
    try:
        serving(proxied)
        wait_until(lambda: ok(client, "/readyz"), timeout=60, what="the node ready")
        proxy.black_hole()
        for path in ("/healthz", "/readyz"):
            status, body = answer(client, path)
            assert (status, body["reason"]) == (503, "the database did not answer within 0.5 s"), path
        proxy.forward()
        wait_until(lambda: ok(client, "/healthz") and ok(client, "/readyz"), timeout=60, what="recovery")
    finally:
        proxy.forward()
        stop_node(timeout=10)
        proxy.close()
        with proxied.app_context():
            db.engine.dispose()


def test_over_tls_a_plain_http_probe_is_answered_not_redirected_and_carries_the_headers(
        app_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MAILSENDER_INSTANCE", str(tmp_path / "instance"))
    monkeypatch.setenv("MAILSENDER_HTTPS", "1")
    client = create_app(app_config).test_client()
    assert client.get("/login").status_code == 302  # the rest of the site still goes to HTTPS
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json["status"] == "ok"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert client.get("/readyz").status_code == 200
