"""The API against its own description: schemathesis generates cases from /api/v1/openapi.json
(valid ones and ones that break it) and sends them to the app in-process, as an administrator
and as an agent, on SQLite and on PostgreSQL. No answer may be a 500, and every answer must be
one the document describes: its status, its content type, its headers and its body.

A bounded run: the seed is fixed, so every run sends the same cases; each operation gets at most
EXAMPLES_PER_OPERATION generated ones besides those of the coverage phase (boundary values, and
methods the path does not take). The cases sent by each role on each database, how long they
took and what they were answered are printed in the terminal summary.
"""
from __future__ import annotations

import tempfile
import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import (
    ADMIN_PASSWORD,
    AGENT_PASSWORD,
    SECRET_KEY,
    add_support_and_sales,
    api_token,
)
from webapp import create_app
from webapp.core.database import db

SEED = 20240601
EXAMPLES_PER_OPERATION = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Left out, with why: the Test connects to the settings' SMTP server (and token server), and
# nothing here may reach the network. Start and stop are in: they only record what the nodes
# should do, and no node runs in the tests.
EXCLUDED_OPERATIONS = ("test_mail_sender_settings",)
PASSWORDS = {"admin": ADMIN_PASSWORD, "agent": AGENT_PASSWORD}

# Cases sent, seconds spent and the statuses answered, by role and database, for the terminal summary.
RUNS: dict[str, dict] = {}


class _Summary:
    """Prints the figures of RUNS at the end of the session."""

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("API schema suite")
        for name, run in sorted(RUNS.items()):
            statuses = ", ".join(f"{status}: {count}" for status, count in sorted(run["statuses"].items()))
            terminalreporter.write_line(f"{name}: {run['cases']} cases in {run['seconds']:.1f} s ({statuses})")
        terminalreporter.write_line(f"in all: {sum(run['cases'] for run in RUNS.values())} cases")


@pytest.fixture(scope="module", autouse=True)
def _summary(pytestconfig):
    if not pytestconfig.pluginmanager.has_plugin("api-schema-summary"):
        pytestconfig.pluginmanager.register(_Summary(), "api-schema-summary")


def _world(app, client, partition_id: int) -> None:
    """Something for every id to find: a department and mailboxes, an incoming message and an
    answer to it from each role."""
    with app.app_context():
        add_support_and_sales(partition_id, ("support@acme.test", "Support"), ("sales@acme.test", "Sales"))
        db.session.commit()
    for role in ("admin", "agent"):
        headers = api_token(client, role, PASSWORDS[role])
        if role == "admin":
            incoming = client.post("/api/v1/incoming", headers=headers, json={
                "mailbox_id": 1, "from": "customer@example.test", "subject": "Help", "body_text": "Hello"})
            assert incoming.status_code == 201, incoming.text
        answer = client.post("/api/v1/messages", headers=headers, json={
            "kind": "reply", "incoming_id": incoming.json["id"], "to": ["customer@example.test"],
            "subject": "Re: Help", "body_text": "Hello again"})
        assert answer.status_code == 201, answer.text


class Caller:
    """Who sends the cases: bearer headers, and what the caller must not do to itself, or every
    case after it would be answered 401 or 403 and test nothing."""

    def __init__(self, run: str, headers: dict, user_id: int, token_id: int):
        self.run, self.headers, self.user_id, self.token_id = run, headers, user_id, token_id

    def locks_itself_out(self, case) -> bool:
        target = case.path_parameters or {}
        if case.operation.path == "/tokens/{token_id}":
            return target.get("token_id") == self.token_id  # revoking its own token
        if case.operation.path == "/users/{user_id}" and case.method == "PATCH":
            return target.get("user_id") == self.user_id  # disabling or demoting itself
        return False


@pytest.fixture(params=["admin", "agent"])
def caller(request, app, client, seed, db_url):
    _world(app, client, seed["partition_id"])
    role = request.param
    headers = api_token(client, role, PASSWORDS[role])
    token_id = max(token["id"] for token in client.get("/api/v1/tokens", headers=headers).json["items"])
    database = "SQLite" if db_url.startswith("sqlite") else "PostgreSQL"
    return Caller(f"{role} on {database}", headers, seed[f"{role}_id"], token_id)


def _document() -> dict:
    """The document as the app serves it. It depends on the routes and the configuration only,
    so an app of its own, without a database, serves the same one as each test's app."""
    with tempfile.TemporaryDirectory() as instance, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAILSENDER_INSTANCE", instance)
        app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://",
                          "MAILSENDER_SECRET_KEY": SECRET_KEY, "SECRET_KEY": "document-only"})
        return app.test_client().get("/api/v1/openapi.json").json


# Loaded when the module is: schemathesis makes one test per operation as pytest collects them
# (its fixture-based loader does not work with pytest 9.2, which renamed Node._nodeid).
schema = schemathesis.openapi.from_dict(_document(), config=schemathesis.Config.from_dict({
    "seed": SEED,
    "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "deterministic": True,
                   "database": "none", "with-security-parameters": False},
    "phases": {"stateful": {"enabled": False}},
})).exclude(operation_id=list(EXCLUDED_OPERATIONS))


# One app and caller for each operation, role and database, shared by that operation's cases;
# no deadline and no too_slow check, so that a busy machine fails nothing.
@schema.parametrize()
@pytest.mark.databases
@settings(deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_every_answer_is_described_and_none_is_a_500(case, app, caller):
    run = RUNS.setdefault(caller.run, {"cases": 0, "seconds": 0.0, "statuses": Counter()})
    if caller.locks_itself_out(case):
        return
    started = time.perf_counter()
    response = case.call(app=app, headers=caller.headers)
    run["cases"] += 1
    run["seconds"] += time.perf_counter() - started
    run["statuses"][response.status_code] += 1
    case.validate_response(response, checks=CHECKS, headers=caller.headers, transport_kwargs={"app": app})
