"""Shared fixtures: app, client, runner, seeded users, both databases, a live server for the browser.

Strict mode (MAILSENDER_STRICT_TESTS=1, set by CI) turns every skip into a failure, so a
missing browser or database can never pass unnoticed.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from webapp import create_app
from webapp.core.database import db

STRICT = os.environ.get("MAILSENDER_STRICT_TESTS") == "1"
CHROMIUM = os.environ.get("MAILSENDER_CHROMIUM", "/usr/bin/chromium")
ADMIN_PASSWORD = "admin-pass-1"
AGENT_PASSWORD = "agent-pass-1"
SECRET_KEY = Fernet.generate_key().decode("ascii")


def need(condition: bool, why: str) -> None:
    """Skip when a real part is missing here; in strict mode, fail instead."""
    if not condition:
        if STRICT:
            pytest.fail(f"strict mode: {why}")
        pytest.skip(why)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"strict mode: skipped tests fail ({report.longrepr})"


def pytest_terminal_summary(terminalreporter):
    # A skip for a missing browser or database is never silent: one line per reason, with a count.
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped, and why")
        for reason, count in sorted(reasons.items(), key=lambda pair: -pair[1]):
            terminalreporter.write_line(f"{count} skipped: {reason}")


def pytest_collection_modifyitems(config, items):
    # Browser tests run last: Playwright's sync API leaves an event loop running in the main
    # thread for the rest of the session, where asyncio.run() in later tests would refuse to start.
    items.sort(key=lambda item: "/tests/browser/" in str(item.path))


# Every test that uses a database runs once on each: SQLite, and the real PostgreSQL. A developer
# may narrow a run to one of them (MAILSENDER_TEST_DATABASES=sqlite); CI never does.
DATABASES = [name for name in os.environ.get("MAILSENDER_TEST_DATABASES", "sqlite,postgresql").split(",") if name]


def pytest_generate_tests(metafunc):
    if "db_url" not in metafunc.fixturenames:
        return
    if any(mark.args and mark.args[0] == "db_url" for mark in metafunc.definition.iter_markers("parametrize")):
        return  # the test names its database itself
    only = metafunc.definition.get_closest_marker("sqlite_only")
    metafunc.parametrize("db_url", ["sqlite"] if only else DATABASES, indirect=True)


# --- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A migrated SQLite file, made once and copied for each test."""
    from webapp.core.migrations import upgrade

    path = tmp_path_factory.mktemp("template") / "template.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@contextlib.contextmanager
def empty_postgres_database(prefix: str):
    """A new, empty database on the real PostgreSQL (its URL), dropped afterwards."""
    server_url = os.environ.get("TEST_DATABASE_URL")
    need(bool(server_url), "TEST_DATABASE_URL is not set: PostgreSQL tests need a server")
    url = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # a down server is a missing real part, not a test failure
        need(False, f"PostgreSQL at {url.host}:{url.port} does not answer: {error}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_database():
    """A database of our own on the real PostgreSQL, migrated once and dropped at the end."""
    from webapp.core.migrations import upgrade

    with empty_postgres_database("mailsender_test") as url:
        engine = create_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


def _truncate_all(database_url: str) -> None:
    engine = create_engine(database_url)
    tables = ", ".join(f'"{table.name}"' for table in db.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def db_url(request, tmp_path, sqlite_template):
    """The database URL for one test: a fresh SQLite file, or the emptied PostgreSQL database."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_database")
        _truncate_all(url)
        return url
    path = tmp_path / "mailsender.sqlite"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


# --- the app ------------------------------------------------------------------------------


@pytest.fixture
def app_config(db_url, tmp_path):
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": db_url,
        "MAILSENDER_SECRET_KEY": SECRET_KEY,
        "SECRET_KEY": "test-session-key",
        "NODE_NAME": "test-node",
        "MAILSENDER_MINUTE_SECONDS": 0.2,
        # No undo hold unless a test asks for one (tests/compose/test_send_later.py): a message
        # submitted is claimable at once, as the tests of delivery expect.
        "MAILSENDER_UNDO_SECONDS": 0,
        "PASSWORD_TIME_COST": 1,
        "PASSWORD_MEMORY_KIB": 8192,
    }


@pytest.fixture
def app(app_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MAILSENDER_INSTANCE", str(tmp_path / "instance"))
    app = create_app(app_config)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def seed(app):
    """A partition with one administrator and one agent, both in the root department."""
    from webapp.core.directory.departments import create_partition
    from webapp.core.directory.users import create_user

    with app.app_context():
        partition = create_partition("Acme")
        admin = create_user(partition, "admin", ADMIN_PASSWORD, "admin", email="admin@acme.test")
        agent = create_user(partition, "agent", AGENT_PASSWORD, "agent", email="agent@acme.test")
        db.session.commit()
        return {"partition_id": partition.id, "admin_id": admin.id, "agent_id": agent.id}


def add_support_and_sales(partition_id: int, support: tuple[str, str], sales: tuple[str, str]):
    """Inside an app context: a "Sales" department under the root, a support mailbox in the root
    and a sales mailbox in Sales, each given as (address, display name). Flushed, not committed."""
    from webapp.core.directory.lookups import root_department
    from webapp.core.models import Department, Mailbox

    root = root_department(partition_id)
    department = Department(partition_id=partition_id, name="Sales", parent_id=root.id)
    db.session.add(department)
    db.session.flush()
    support_box = Mailbox(partition_id=partition_id, address=support[0], name=support[1], department_id=root.id)
    sales_box = Mailbox(partition_id=partition_id, address=sales[0], name=sales[1], department_id=department.id)
    db.session.add_all([support_box, sales_box])
    db.session.flush()
    return support_box, sales_box


def add_other_partition(name: str, mailbox_address: str):
    """Inside an app context: another partition with one mailbox in its root department.
    Flushed, not committed. Returns (partition, mailbox)."""
    from webapp.core.directory.departments import create_partition
    from webapp.core.directory.lookups import root_department
    from webapp.core.models import Mailbox

    partition = create_partition(name)
    db.session.flush()
    mailbox = Mailbox(partition_id=partition.id, address=mailbox_address, department_id=root_department(partition.id).id)
    db.session.add(mailbox)
    db.session.flush()
    return partition, mailbox


# --- helpers for requests -----------------------------------------------------------------

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"|"X-CSRFToken": "([^"]+)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1) or match.group(2)


def login(client, username: str, password: str):
    page = client.get("/login")
    return client.post(
        "/login", data={"username": username, "password": password, "csrf_token": csrf_from(page.text)}
    )


@pytest.fixture
def admin_client(client, seed):
    response = login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 302
    return client


@pytest.fixture
def agent_client(client, seed):
    response = login(client, "agent", AGENT_PASSWORD)
    assert response.status_code == 302
    return client


def api_token(client, username: str, password: str) -> dict:
    """Authorization headers for a fresh bearer token."""
    response = client.post("/api/v1/tokens", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json['token']}"}


@pytest.fixture
def admin_api(client, seed):
    """Bearer headers of the seeded administrator."""
    return api_token(client, "admin", ADMIN_PASSWORD)


@pytest.fixture
def agent_api(client, seed):
    """Bearer headers of the seeded agent."""
    return api_token(client, "agent", AGENT_PASSWORD)


# --- a live server for the browser --------------------------------------------------------


class LiveServer:
    def __init__(self, app):
        from werkzeug.serving import make_server

        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def live_server(app, seed):
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (Debian's `chromium` package)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


def browser_login(page, live_server, username: str, password: str) -> None:
    page.goto(f"{live_server.url}/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
