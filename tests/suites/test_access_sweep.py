"""Who may call what: every route of the app, every method, swept from app.url_map.

A route added to the app is swept as soon as it exists, and the sweep fails until ROUTES says
whom it is for. Each (route, method) is asked:
- anonymously (no credentials, a bearer token nobody issued, a revoked one, a disabled user's
  token or session, a session a password change ended): a browser route sends to the login
  page (htmx: 401 with a notice retargeted to the page's notice area), an API route answers 401 in JSON;
- by an agent, where it is for administrators: 403;
- with the ids of another partition in its URL: 404, where the same call with the caller's own
  ids finds them; and by an agent with another department's (or user's) mailbox, message or token: 403 or 404;
- with a cookie session and no CSRF token (or another session's), where it changes state: 400,
  the API too.
Ids that travel in a body or a query (the incoming message answered, a From mailbox, a parent
department, a monitor selection) are listed in BODY_IDS; each is refused with nothing written,
or, where the call only shows a page, shows nothing of the object.

The requests made are counted, asserted per check, and shown in the terminal summary.
"""
from __future__ import annotations

import itertools
import re
import time
from collections import Counter

import pytest
from sqlalchemy import select

from tests.agents.conftest import OTHER_AGENT_PASSWORD, world  # noqa: F401  (fixture)
from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, api_token, csrf_from, login
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.directory import tokens as token_rules
from webapp.core.directory.lookups import root_department
from webapp.core.directory.users import create_user
from webapp.core.models import (
    ApiToken,
    Case,
    Department,
    IncomingMessage,
    Mailbox,
    Node,
    OutgoingMessage,
    Partition,
    User,
)
from webapp.core.states import FAILED, ORIGINATION, SENT

PUBLIC, USER, ADMIN = "public", "user", "admin"

# Whom each endpoint is for. Browser or API follows from the path (/api/ answers JSON).
ROUTES = {
    "static": PUBLIC, "auth.favicon": PUBLIC, "auth.login": PUBLIC, "auth.logout": PUBLIC, "api.create_token": PUBLIC,
    "api.openapi": PUBLIC, "health.healthz": PUBLIC, "health.readyz": PUBLIC,
    # Not a user's: a bearer of MAILSENDER_METRICS_TOKEN, else loopback (tests/web/test_metrics.py).
    "metrics.metrics": PUBLIC,

    "auth.home": USER, "account.index": USER, "account.change_password": USER, "account.tokens": USER,
    "account.create_token": USER, "account.revoke_token": USER,
    "compose.index": USER, "compose.refresh": USER, "compose.send": USER,
    "outbox.index": USER, "outbox.list_section": USER, "outbox.raw_copy": USER,
    "preferences.index": USER, "preferences.save": USER,
    "api.me": USER, "api.change_my_password": USER, "api.get_preferences": USER, "api.put_preferences": USER,
    "api.list_departments": USER, "api.get_department": USER, "api.list_mailboxes": USER, "api.get_mailbox": USER,
    "api.submit_message": USER, "api.list_messages": USER, "api.get_message": USER, "api.cancel_message": USER,
    "compose.sent": USER, "compose.undo": USER,
    "api.list_tokens": USER, "api.revoke_token": USER,

    "demo.captured": ADMIN,
    "directory.index": ADMIN, "directory.departments": ADMIN, "directory.create_department": ADMIN,
    "directory.update_department": ADMIN, "directory.delete_department": ADMIN, "directory.mailboxes": ADMIN,
    "directory.create_mailbox": ADMIN, "directory.update_mailbox": ADMIN, "directory.users": ADMIN,
    "directory.create_user": ADMIN, "directory.update_user": ADMIN,
    "mailsender.index": ADMIN, "mailsender.status": ADMIN, "mailsender.start": ADMIN, "mailsender.stop": ADMIN,
    "mailsender.forget": ADMIN, "api.forget_mail_sender_node": ADMIN,
    "mailsender.parameters": ADMIN, "mailsender.save_parameters": ADMIN, "mailsender.test_section": ADMIN,
    "mailsender.monitor_settings": ADMIN, "mailsender.save_monitor_settings": ADMIN,
    "mailsender.test_parameters": ADMIN, "mailsender.oauth2_authorize": ADMIN, "mailsender.oauth2_callback": ADMIN,
    "monitor.section": ADMIN, "monitor.banner": ADMIN, "monitor.remove": ADMIN, "monitor.requeue": ADMIN,
    "monitor.send_again": ADMIN, "monitor.mark_sent": ADMIN,
    "api.create_department": ADMIN, "api.update_department": ADMIN, "api.delete_department": ADMIN,
    "api.create_mailbox": ADMIN, "api.update_mailbox": ADMIN,
    "api.list_users": ADMIN, "api.get_user": ADMIN, "api.create_user": ADMIN, "api.update_user": ADMIN,
    "api.record_incoming": ADMIN, "api.get_mail_sender_settings": ADMIN, "api.put_mail_sender_settings": ADMIN,
    "api.start_senders": ADMIN, "api.stop_senders": ADMIN, "api.get_mail_sender_status": ADMIN,
    "api.test_mail_sender_settings": ADMIN, "api.get_monitor": ADMIN,
    "api.remove_message": ADMIN, "api.requeue_message": ADMIN, "api.send_again_message": ADMIN,
    "api.mark_sent_message": ADMIN,
}

# What each argument of a rule names; an argument not here fails the sweep until it is added.
ARGUMENT_KINDS = {"department_id": "department", "mailbox_id": "mailbox", "user_id": "user",
                  "token_id": "token", "message_id": "message", "filename": "static file", "name": "node"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
# In the names of the objects a caller must not see: Beta's for everyone, Sales' for the agent.
BETA_MARKERS, SALES_MARKERS = ("zq-beta", "beta.test"), ("zq-sales",)
_ARGUMENT = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


# --- the count, in the terminal summary ---------------------------------------------------


class Tally:
    """Requests made per check; shown once at the end of the run."""

    def __init__(self):
        self.requests = Counter()
        self.seconds = Counter()

    def pytest_terminal_summary(self, terminalreporter):
        if self.requests:
            terminalreporter.write_sep("-", "access sweep")
            for check, count in sorted(self.requests.items()):
                terminalreporter.write_line(f"{check}: {count} requests in {self.seconds[check]:.1f} s")
            terminalreporter.write_line(f"in all: {sum(self.requests.values())} requests")


TALLY = Tally()


@pytest.fixture
def tally(request):
    if not request.config.pluginmanager.is_registered(TALLY):
        request.config.pluginmanager.register(TALLY, "access-sweep-tally")
    started = time.monotonic()
    counted = Counter()
    yield counted
    name = request.node.originalname
    TALLY.requests[name] += sum(counted.values())
    TALLY.seconds[name] += time.monotonic() - started


# --- the app, its routes, and who calls them ------------------------------------------------


@pytest.fixture
def app(app, tmp_path):
    """The app with the demo's page too (registered by `make run` only), so that it is swept."""
    from webapp.views import demo

    captured = tmp_path / "captured"
    captured.mkdir()
    app.config["DEMO_CAPTURE_DIR"] = str(captured)
    app.register_blueprint(demo.bp)
    return app


def routes(app) -> list[tuple[object, str]]:
    """Every (rule, method) of the app but HEAD and OPTIONS, which Flask answers itself."""
    return [(rule, method) for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]


def is_api(rule) -> bool:
    return rule.rule.startswith("/api/")


def arguments(rule) -> list[str]:
    return _ARGUMENT.findall(rule.rule)


def kinds_of(rule) -> set[str]:
    return {ARGUMENT_KINDS[name] for name in arguments(rule)}


def path_of(rule, ids: dict) -> str:
    """The rule's path with each argument filled from `ids` (kind → id)."""
    return _ARGUMENT.sub(lambda m: str(ids[ARGUMENT_KINDS[m.group(1)]]), rule.rule)


class Caller:
    """A browser or API client of one user (or nobody), counting what it asks."""

    def __init__(self, app, counted: Counter, *, username=None, password=None, bearer=None, csrf=True):
        self.client = app.test_client()
        self.counted = counted
        self.headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        if username:
            assert login(self.client, username, password).status_code == 302
        self.token = csrf_from(self.client.get("/login" if not username else "/account").text) if csrf else None

    def __call__(self, method: str, path: str, *, htmx=False, csrf=True, csrf_token=None, json=None, data=None,
                 query=None):
        headers = dict(self.headers)
        if htmx:
            headers["HX-Request"] = "true"
        token = csrf_token or (self.token if csrf else None)
        if token and method in STATE_CHANGING:
            headers["X-CSRFToken"] = token
        if json is None and data is None and method in STATE_CHANGING:
            json = {} if path.startswith("/api/") else None
            data = None if path.startswith("/api/") else {}
        self.counted[method] += 1
        return self.client.open(path, method=method, headers=headers, json=json, data=data, query_string=query)


def described(rule, method: str, response) -> str:
    text = response.get_data(as_text=True)[:200]
    return f"{method} {rule.rule} ({rule.endpoint}) answered {response.status_code}: {text}"


def test_every_route_is_classified_and_the_table_names_no_route_that_is_gone(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert sorted(endpoints - set(ROUTES)) == [], "routes with no class in ROUTES: say whom they are for"
    assert sorted(set(ROUTES) - endpoints) == [], "ROUTES names endpoints the app no longer has"
    for rule in app.url_map.iter_rules():
        assert is_api(rule) == rule.endpoint.startswith("api."), f"{rule.rule} is API by its path, not its blueprint"
        unknown = set(arguments(rule)) - set(ARGUMENT_KINDS)
        assert not unknown, f"{rule.rule}: say in ARGUMENT_KINDS what {unknown} names"


# --- the objects: Acme's own, another department's, and Beta's ------------------------------


class Objects:
    """Rows to put in URLs: Beta's (another partition), the Sales department's and salesagent's
    (the agent's colleagues), and fresh ones of Acme's for each call that must find its id."""

    def __init__(self, app, world):
        self.app, self.world = app, world
        self.serial = itertools.count(1)
        with app.app_context():
            beta = db.session.get(Partition, world["beta_partition_id"])
            beta_root = root_department(beta.id)
            beta_admin = create_user(beta, "zq-beta-admin", ADMIN_PASSWORD, "admin", email="admin@beta.test")
            beta_department = Department(partition_id=beta.id, name="Zq-Beta team", parent_id=beta_root.id)
            db.session.add(beta_department)
            token_rules.issue_token(beta_admin)
            beta_sent = self._message(beta.id, beta_admin.id, SENT, "Zq-Beta sent")
            beta_failed = self._message(beta.id, beta_admin.id, FAILED, "Zq-Beta failed")
            beta_incoming = self._incoming(beta.id, world["beta_mailbox_id"], "Zq-Beta question")
            sales_agent = db.session.get(User, world["sales_agent_id"])
            token_rules.issue_token(sales_agent)
            sales_sent = self._message(world["partition_id"], sales_agent.id, SENT, "Zq-Sales sent")
            sales_incoming = self._incoming(world["partition_id"], world["sales_id"], "Zq-Sales question")
            db.session.flush()
            self.beta = {
                "department": beta_department.id, "mailbox": world["beta_mailbox_id"], "user": beta_admin.id,
                "token": self._token_of(beta_admin.id), "message": beta_sent, "failed message": beta_failed,
                "incoming": beta_incoming, "root": beta_root.id, "static file": "app.css",
                # Nodes serve every partition: the name of one that is not listed stands in.
                "node": "zq-beta-node",
            }
            self.other_department = {
                "mailbox": world["sales_id"], "message": sales_sent, "token": self._token_of(sales_agent.id),
                "incoming": sales_incoming,
            }
            db.session.commit()

    @staticmethod
    def _message(partition_id: int, user_id: int, status: str, subject: str) -> int:
        message = OutgoingMessage(partition_id=partition_id, kind=ORIGINATION, user_id=user_id, status=status,
                                  message_id=f"<{subject.replace(' ', '.').lower()}@example.test>",
                                  from_address="sender@example.test", envelope_from="sender@example.test",
                                  to_addresses=["customer@example.org"], subject=subject, body_text=subject,
                                  rendered=f"Subject: {subject}\r\n\r\n{subject}\r\n".encode())
        db.session.add(message)
        db.session.flush()
        return message.id

    @staticmethod
    def _incoming(partition_id: int, mailbox_id: int, subject: str) -> int:
        case = Case(partition_id=partition_id, tracking_id=f"ZQ-{subject.split()[0][3:].upper()}-1", subject=subject)
        db.session.add(case)
        db.session.flush()
        incoming = IncomingMessage(partition_id=partition_id, mailbox_id=mailbox_id, case_id=case.id,
                                   from_address="customer@example.org", subject=subject, body_text=subject)
        db.session.add(incoming)
        db.session.flush()
        return incoming.id

    @staticmethod
    def _token_of(user_id: int) -> int:
        return db.session.scalar(select(ApiToken.id).where(ApiToken.user_id == user_id).order_by(ApiToken.id.desc()))

    def own(self, kinds, actor_id: int) -> dict:
        """A fresh Acme row of each kind, `actor_id`'s own where that matters (tokens, messages)."""
        ids = {"static file": "app.css"}
        with self.app.app_context():
            partition = db.session.get(Partition, self.world["partition_id"])
            root = root_department(partition.id)
            for kind in set(kinds) - {"static file"}:
                n = next(self.serial)
                if kind == "department":
                    row = Department(partition_id=partition.id, name=f"Spare {n}", parent_id=root.id)
                elif kind == "mailbox":
                    row = Mailbox(partition_id=partition.id, address=f"spare{n}@acme.test", department_id=root.id)
                elif kind == "user":
                    row = create_user(partition, f"spare{n}", AGENT_PASSWORD, "agent")
                elif kind == "node":  # one that died: only such a node may be forgotten; known by its name
                    db.session.add(Node(name=f"spare-node-{n}", lease_owner="gone", lease_until=utcnow(),
                                        last_seen=utcnow()))
                    ids[kind] = f"spare-node-{n}"
                    continue
                elif kind == "token":
                    token_rules.issue_token(db.session.get(User, actor_id))
                    ids[kind] = self._token_of(actor_id)
                    continue
                else:
                    ids[kind] = self._message(partition.id, actor_id, SENT, f"Own {n}")
                    continue
                db.session.add(row)
                db.session.flush()
                ids[kind] = row.id
            db.session.commit()
        return ids

    def snapshot(self) -> dict:
        """Every row of every table but the audit trail (which records refusals too)."""
        with self.app.app_context():
            rows = {table.name: sorted(map(repr, db.session.execute(table.select()).all()))
                    for table in db.metadata.sorted_tables if table.name != "audit_event"}
            db.session.rollback()
            return rows


@pytest.fixture
def objects(app, world):
    return Objects(app, world)


@pytest.fixture
def callers(app, world, tally):
    """admin and agent by cookie session and by bearer token, and salesagent by cookie."""

    def make(**kwargs):
        return Caller(app, tally, **kwargs)

    bearer = app.test_client()
    admin_token = api_token(bearer, "admin", ADMIN_PASSWORD)["Authorization"].split()[1]
    agent_token = api_token(bearer, "agent", AGENT_PASSWORD)["Authorization"].split()[1]
    return {
        "admin": make(username="admin", password=ADMIN_PASSWORD),
        "agent": make(username="agent", password=AGENT_PASSWORD),
        "salesagent": make(username="salesagent", password=OTHER_AGENT_PASSWORD),
        "admin bearer": make(bearer=admin_token, csrf=False),
        "agent bearer": make(bearer=agent_token, csrf=False),
    }


def not_leaking(response, who: str) -> bool:
    text = response.get_data(as_text=True).lower()
    markers = BETA_MARKERS + (SALES_MARKERS if who.startswith("agent") else ())
    return not [marker for marker in markers if marker in text]


# --- anonymous --------------------------------------------------------------------------------


def _ended_callers(app, world, tally) -> list[Caller]:
    """Callers whose credentials were good once: a revoked token, a disabled user's session and
    token, and a session that a change of the user's password ended."""
    from webapp.core.directory import users as user_rules

    bearer = app.test_client()
    revoked = api_token(bearer, "agent", AGENT_PASSWORD)["Authorization"].split()[1]
    with app.app_context():
        partition = db.session.get(Partition, world["partition_id"])
        create_user(partition, "leaver", AGENT_PASSWORD, "agent")
        create_user(partition, "changer", AGENT_PASSWORD, "agent")
        db.session.commit()
    leaver_token = api_token(bearer, "leaver", AGENT_PASSWORD)["Authorization"].split()[1]
    ended = [Caller(app, tally, bearer=revoked), Caller(app, tally, bearer=leaver_token),
             Caller(app, tally, username="leaver", password=AGENT_PASSWORD),
             Caller(app, tally, username="changer", password=AGENT_PASSWORD)]
    with app.app_context():
        db.session.scalars(select(ApiToken).where(ApiToken.user_id == world["agent_id"])
                           .order_by(ApiToken.id.desc())).first().revoked_at = db.func.now()
        db.session.scalars(select(User).where(User.username == "leaver")).one().disabled = True
        changer = db.session.scalars(select(User).where(User.username == "changer")).one()
        user_rules.change_own_password(changer, AGENT_PASSWORD, "changed-pass-1")
        db.session.commit()
    return ended


def test_anonymous_callers_are_sent_to_log_in_or_answered_401(app, world, objects, tally):
    nobody = [Caller(app, tally), Caller(app, tally, bearer="ms_" + "x" * 40), *_ended_callers(app, world, tally)]
    ids = objects.own(ARGUMENT_KINDS.values(), world["admin_id"])
    before = objects.snapshot()
    expected = 0
    for rule, method in routes(app):
        if ROUTES[rule.endpoint] == PUBLIC:
            continue
        path = path_of(rule, ids)
        for caller in nobody:
            if is_api(rule):
                response = caller(method, path)
                assert response.status_code == 401 and response.is_json and response.json["error"], \
                    described(rule, method, response)
                expected += 1
                continue
            response = caller(method, path)
            assert response.status_code == 302 and response.location.startswith("/login"), \
                described(rule, method, response)
            response = caller(method, path, htmx=True)
            assert response.status_code == 401 and response.headers["HX-Retarget"] == "#session-notice", \
                described(rule, method, response)
            expected += 2
    assert objects.snapshot() == before
    assert sum(tally.values()) == expected >= 6 * 70


def test_public_routes_answer_without_a_login(app, tally):
    caller = Caller(app, tally, csrf=False)
    assert caller("GET", "/login").status_code == 200
    assert caller("GET", "/static/app.css").status_code == 200
    assert caller("GET", "/favicon.ico").status_code == 200
    assert caller("GET", "/api/v1/openapi.json").status_code == 200
    assert caller("GET", "/healthz").status_code == caller("GET", "/readyz").status_code == 200
    assert caller("POST", "/api/v1/tokens", json={"username": "nobody", "password": "x"}).status_code == 401


# --- agents on administrators' routes ---------------------------------------------------------


def test_an_agent_is_refused_every_administrators_route_with_403(app, world, objects, callers, tally):
    ids = objects.own(ARGUMENT_KINDS.values(), world["agent_id"])
    before = objects.snapshot()
    expected = 0
    for rule, method in routes(app):
        if ROUTES[rule.endpoint] != ADMIN:
            continue
        path = path_of(rule, ids)
        for name in (("agent bearer", "agent") if is_api(rule) else ("agent",)):
            response = callers[name](method, path)
            assert response.status_code == 403, f"{name}: " + described(rule, method, response)
            if is_api(rule):
                assert response.is_json and response.json["error"]
            expected += 1
    assert objects.snapshot() == before
    assert sum(tally.values()) == expected >= 50


# --- ids of another partition, another department, another user -------------------------------


def _callers_for(rule) -> list[str]:
    """Who may call the rule, each way in: an API route by bearer token and by cookie session."""
    people = ("admin", "agent") if ROUTES[rule.endpoint] == USER else ("admin",)
    ways = (" bearer", "") if is_api(rule) else ("",)
    return [person + way for person in people for way in ways]


def test_another_partitions_ids_are_404_where_ones_own_are_found(app, world, objects, callers, tally):
    before = objects.snapshot()
    swept = 0
    for rule, method in routes(app):
        if not arguments(rule) or rule.endpoint == "static":
            continue
        for name in _callers_for(rule):
            caller = callers[name]
            response = caller(method, path_of(rule, objects.beta))
            assert response.status_code == 404 and not_leaking(response, name), \
                f"{name}: " + described(rule, method, response)
            swept += 1
    assert objects.snapshot() == before, "a call with another partition's id changed something"
    for rule, method in routes(app):
        if not arguments(rule) or rule.endpoint == "static":
            continue
        for name in _callers_for(rule):
            actor = world["admin_id"] if name.startswith("admin") else world["agent_id"]
            response = callers[name](method, path_of(rule, objects.own(kinds_of(rule), actor)))
            assert response.status_code != 404, f"{name}, own ids: " + described(rule, method, response)
    assert swept >= 25


def test_an_agent_gets_403_or_404_for_another_departments_mailbox_and_anothers_message_or_token(
        app, world, objects, callers, tally):
    before = objects.snapshot()
    swept = 0
    for rule, method in routes(app):
        kinds = kinds_of(rule)
        if ROUTES[rule.endpoint] != USER or not kinds or not kinds <= set(objects.other_department):
            continue
        for name in (("agent bearer", "agent") if is_api(rule) else ("agent",)):
            response = callers[name](method, path_of(rule, objects.other_department))
            assert response.status_code in (403, 404) and not_leaking(response, name), \
                f"{name}: " + described(rule, method, response)
            swept += 1
    assert objects.snapshot() == before
    assert swept >= 6


# Ids in a body or a query: (who, method, path, what to send). "{name}" is the id of that object
# (objects.beta, or objects.other_department for "sales …"); the call must be refused with nothing
# written, or, where it only shows a page ("shows only", and every GET), show nothing of the object.
BODY_IDS = {
    "reply to another department's incoming (API)": (
        "agent bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "reply", "incoming_id": "{sales incoming}", "to": ["c@example.org"], "body_text": "x"}}),
    "forward another department's incoming (API)": (
        "agent bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "forward", "incoming_id": "{sales incoming}", "to": ["friend@example.org"]}}),
    "collaborate on another department's incoming (API)": (
        "agent bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "collaborate", "incoming_id": "{sales incoming}", "to": ["friend@example.org"]}}),
    "redirect another department's incoming (API)": (
        "agent bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "redirect", "incoming_id": "{sales incoming}", "to": ["friend@example.org"]}}),
    "reply to another department's incoming (Compose)": (
        "agent", "POST", "/compose",
        {"data": {"kind": "reply", "incoming_id": "{sales incoming}", "to": "customer@example.org", "body_text": "x"}}),
    "redirect another department's incoming (Compose)": (
        "agent", "POST", "/compose",
        {"data": {"kind": "redirect", "incoming_id": "{sales incoming}", "to": "friend@example.org"}}),
    "reply to another partition's incoming (API, admin)": (
        "admin bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "reply", "incoming_id": "{incoming}", "to": ["customer@example.org"], "body_text": "x"}}),
    "redirect another partition's incoming (Compose, admin)": (
        "admin", "POST", "/compose",
        {"data": {"kind": "redirect", "incoming_id": "{incoming}", "to": "friend@example.org"}}),
    "From another department's mailbox (API)": (
        "agent bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "origination", "from_mailbox_id": "{sales mailbox}", "to": ["c@example.org"]}}),
    "From another partition's mailbox (API, admin)": (
        "admin bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "origination", "from_mailbox_id": "{mailbox}", "to": ["c@example.org"], "subject": "x"}}),
    "From another department's mailbox (Compose)": (
        "agent", "POST", "/compose",
        {"data": {"kind": "origination", "from_mailbox_id": "{sales mailbox}", "to": "c@example.org", "subject": "x"}}),
    "preference for another department's mailbox (API)": (
        "agent bearer", "PUT", "/api/v1/me/preferences", {"json": {"origination_from_mailbox_id": "{sales mailbox}"}}),
    "From another department's mailbox (API, admin)": (
        "admin bearer", "POST", "/api/v1/messages",
        {"json": {"kind": "origination", "from_mailbox_id": "{sales mailbox}", "to": ["c@example.org"]}}),
    "preference for another department's mailbox (API, admin)": (
        "admin bearer", "PUT", "/api/v1/me/preferences", {"json": {"origination_from_mailbox_id": "{sales mailbox}"}}),
    "preference for another partition's mailbox (API, admin)": (
        "admin bearer", "PUT", "/api/v1/me/preferences", {"json": {"reply_from_mailbox_id": "{mailbox}"}}),
    "preference for another department's mailbox (page)": (
        "agent", "POST", "/preferences", {"data": {"origination_from_mailbox_id": "{sales mailbox}"}}),
    "incoming on another partition's mailbox": (
        "admin bearer", "POST", "/api/v1/incoming", {"json": {"mailbox_id": "{mailbox}", "from": "c@example.org"}}),
    "mailbox in another partition's department (API)": (
        "admin bearer", "POST", "/api/v1/mailboxes",
        {"json": {"address": "new@acme.test", "department_id": "{department}"}}),
    "mailbox moved to another partition's department (API)": (
        "admin bearer", "PATCH", "/api/v1/mailboxes/{acme support}", {"json": {"department_id": "{root}"}}),
    "department under another partition's (API)": (
        "admin bearer", "POST", "/api/v1/departments", {"json": {"name": "New", "parent_id": "{department}"}}),
    "department moved under another partition's (API)": (
        "admin bearer", "PATCH", "/api/v1/departments/{acme sales department}", {"json": {"parent_id": "{root}"}}),
    "user in another partition's department (API)": (
        "admin bearer", "POST", "/api/v1/users",
        {"json": {"username": "newbie", "password": "new-pass-12", "role": "agent",
                  "department_ids": ["{department}"]}}),
    "user moved to another partition's department (API)": (
        "admin bearer", "PATCH", "/api/v1/users/{acme agent}", {"json": {"department_ids": ["{department}"]}}),
    "mailbox in another partition's department (page)": (
        "admin", "POST", "/admin/directory/mailboxes",
        {"data": {"address": "new@acme.test", "department_id": "{department}"}}),
    "mailbox moved to another partition's department (page)": (
        "admin", "POST", "/admin/directory/mailboxes/{acme support}",
        {"data": {"address": "support@acme.test", "department_id": "{root}", "priority": "3"}}),
    "department under another partition's (page)": (
        "admin", "POST", "/admin/directory/departments", {"data": {"name": "New", "parent_id": "{department}"}}),
    "department moved under another partition's (page)": (
        "admin", "POST", "/admin/directory/departments/{acme sales department}",
        {"data": {"name": "Sales", "parent_id": "{root}"}}),
    "user in another partition's department (page)": (
        "admin", "POST", "/admin/directory/users",
        {"data": {"username": "newbie", "password": "new-pass-12", "role": "agent", "department_ids": "{department}"}}),
    "user moved to another partition's department (page)": (
        "admin", "POST", "/admin/directory/users/{acme agent}",
        {"data": {"username": "agent", "role": "agent", "department_ids": "{department}"}}),
    "edit another partition's department (page)": (
        "admin", "GET", "/admin/directory/departments", {"query": {"edit": "{department}"}}),
    "edit another partition's mailbox (page)": (
        "admin", "GET", "/admin/directory/mailboxes", {"query": {"edit": "{mailbox}"}}),
    "edit another partition's user (page)": ("admin", "GET", "/admin/directory/users", {"query": {"edit": "{user}"}}),
    "another partition's user's tokens (API)": (
        "admin bearer", "GET", "/api/v1/tokens", {"query": {"user_id": "{user}"}}),
    "requeue another partition's message (monitor)": (
        "admin", "POST", "/admin/mail-sender/monitor/requeue", {"data": {"id": "{failed message}"}, "htmx": True}),
    "remove another partition's message (monitor)": (
        "admin", "POST", "/admin/mail-sender/monitor/remove", {"data": {"id": "{failed message}"}, "htmx": True}),
    "remove another partition's message, confirmed (monitor)": (
        "admin", "POST", "/admin/mail-sender/monitor/remove",
        {"data": {"id": "{failed message}", "confirmed": "yes"}, "htmx": True}),
    "requeue another partition's message (API)": (
        "admin bearer", "POST", "/api/v1/messages/{failed message}/requeue", {}),
    "send again another partition's message (monitor)": (
        "admin", "POST", "/admin/mail-sender/monitor/send-again", {"data": {"id": "{failed message}"}, "htmx": True}),
    "mark another partition's message sent (monitor)": (
        "admin", "POST", "/admin/mail-sender/monitor/mark-sent", {"data": {"id": "{failed message}"}, "htmx": True}),
    "send again another partition's message (API)": (
        "admin bearer", "POST", "/api/v1/messages/{failed message}/send-again", {}),
    "cancel another partition's message (API)": (
        "admin bearer", "POST", "/api/v1/messages/{failed message}/cancel", {}),
    "another partition's message selected (monitor)": (
        "admin", "GET", "/admin/mail-sender/monitor", {"query": {"id": "{failed message}"}, "htmx": True}),
    "another department's incoming chosen (Compose)": (
        "agent", "GET", "/compose", {"query": {"kind": "reply", "incoming": "{sales incoming}"}}),
    "another partition's incoming chosen (Compose, admin)": (
        "admin", "GET", "/compose", {"query": {"kind": "forward", "incoming": "{incoming}"}}),
    "another department's incoming chosen (Compose form)": (
        "agent", "POST", "/compose/form", {"data": {"kind": "collaborate", "incoming_id": "{sales incoming}"},
                                           "shows only": True}),
    "the system default From in another partition (settings)": (
        "admin bearer", "PUT", "/api/v1/mail-sender/settings", {"json": {"origination_from_mailbox_id": "{mailbox}"}}),
}


def _filled(value, ids: dict):
    if isinstance(value, dict):
        return {key: _filled(item, ids) for key, item in value.items()}
    if isinstance(value, list):
        return [_filled(item, ids) for item in value]
    if isinstance(value, str) and "{" in value:
        whole = re.fullmatch(r"\{([^}]+)\}", value)
        if whole:
            return ids[whole.group(1)]
        return re.sub(r"\{([^}]+)\}", lambda m: str(ids[m.group(1)]), value)
    return value


@pytest.mark.parametrize("case", BODY_IDS)
def test_an_id_in_a_body_or_query_that_is_not_the_callers_is_refused_and_nothing_written(
        app, world, objects, callers, tally, case):
    who, method, path, request = BODY_IDS[case]
    ids = {**objects.beta, **{f"sales {kind}": value for kind, value in objects.other_department.items()},
           "acme support": world["support_id"], "acme sales department": world["sales_department_id"],
           "acme agent": world["agent_id"]}
    before = objects.snapshot()
    request = _filled(request, ids)
    query = request.get("query")
    response = callers[who](method, _filled(path, ids), json=request.get("json"), data=request.get("data"),
                            query=query, htmx=request.get("htmx", False))
    # A page that only shows a choice may answer 200, as long as it shows nothing of the object.
    shows_only = method == "GET" or request.get("shows only")
    refusals = (200, 403, 404) if shows_only else (403, 404, 409, 422)
    assert response.status_code in refusals, described_path(method, path, response)
    assert not_leaking(response, who), described_path(method, path, response)
    assert objects.snapshot() == before, f"{case}: something was written"


def described_path(method, path, response) -> str:
    return f"{method} {path} answered {response.status_code}: {response.get_data(as_text=True)[:300]}"


# --- CSRF -------------------------------------------------------------------------------------


def test_a_cookie_session_that_changes_state_without_its_csrf_token_is_400_the_api_too(
        app, world, objects, callers, tally):
    ids = objects.own(ARGUMENT_KINDS.values(), world["admin_id"])
    before = objects.snapshot()
    foreign_token = callers["agent"].token
    expected = 0
    for rule, method in routes(app):
        if method not in STATE_CHANGING or rule.endpoint == "api.create_token":
            continue
        for token in (None, foreign_token):
            response = callers["admin"](method, path_of(rule, ids), csrf=False, csrf_token=token)
            assert response.status_code == 400, f"CSRF token {token and 'of another session'}: " + \
                described(rule, method, response)
            if is_api(rule):
                assert response.is_json and "CSRF" in response.json["error"]
            expected += 1
    anonymous = Caller(app, tally, csrf=False)
    for path in ("/login", "/logout"):
        assert anonymous("POST", path, data={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 400
        expected += 1
    assert objects.snapshot() == before
    assert sum(tally.values()) == expected >= 2 * 40
