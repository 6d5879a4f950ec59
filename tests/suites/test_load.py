"""Load suite (issue 17): SQLite, one node with 4 senders draining a backlog to Postfix's
smtp-sink while 4 client threads post messages and read pages and the API over real HTTP.

For MAILSENDER_LOAD_SECONDS (20 by default) the clients work; then every message, queued before
or posted during the load, must arrive. Asserted: no answer 5xx, no "database is locked" in any
answer or log (this process's and the bookkeeping process's), and no message lost or sent twice.
The drain rate under load is printed in the terminal summary, never asserted: a busy machine
drains slower, and that is no failure.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import func, select

from tests.conftest import AGENT_PASSWORD, ADMIN_PASSWORD, LiveServer, add_support_and_sales, need
from tests.scheduler.conftest import configure, make_node, queue_messages, start, wait_until, wakes  # noqa: F401
from tests.smtp_servers import SmtpServer
from webapp.core.database import db
from webapp.core.models import OutgoingMessage

SECONDS = float(os.environ.get("MAILSENDER_LOAD_SECONDS", "20"))
CLIENTS = 4
SENDERS = 4
# Enough waiting mail for the senders to be still draining when the load ends (about 200 a
# second drain here on an idle machine), so that the rate measured is the rate under load.
BACKLOG = int(300 * SECONDS)
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
LOCKED = "database is locked"


class Figures:
    """The run's figures, shown once at the end."""

    def __init__(self):
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter):
        if self.lines:
            terminalreporter.write_sep("-", "load suite")
            for line in self.lines:
                terminalreporter.write_line(line)


FIGURES = Figures()


@pytest.fixture
def figures(request):
    if not request.config.pluginmanager.is_registered(FIGURES):
        request.config.pluginmanager.register(FIGURES, "load-suite-figures")
    return FIGURES


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MAILSENDER_SENDERS": SENDERS, "MAILSENDER_MONITOR": False,
            "MAILSENDER_SMTP_COMMAND_TIMEOUT": 30.0}


class SmtpSink:
    """Postfix's smtp-sink on loopback, writing each message it takes to a folder (-d), so that
    every Message-ID can be counted afterwards."""

    host = "127.0.0.1"

    def __init__(self):
        self.folder = ""
        self.port = SmtpServer.free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "SmtpSink":
        # Outside pytest's own folders, which the unprivileged user it runs as could not enter.
        self.folder = tempfile.mkdtemp(prefix="smtp-sink-")
        os.chmod(self.folder, 0o777)
        # -d: one file per message (the template through strftime, then a random suffix); -u:
        # the user it runs as (it will not run as root); a listen backlog of 256.
        user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "")
        self.process = subprocess.Popen(
            [SMTP_SINK, "-u", user, "-d", f"{self.folder}/%H%M%S.", f"{self.host}:{self.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(self._listening, what="smtp-sink listening")
        return self

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"smtp-sink ended: {self.process.stderr.read().decode(errors='replace')}")
        try:
            with socket.create_connection((self.host, self.port), timeout=5):
                return True
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.folder, ignore_errors=True)

    def message_ids(self) -> list[str]:
        found = []
        for name in os.listdir(self.folder):
            with open(os.path.join(self.folder, name), "rb") as taken:
                match = re.search(rb"^Message-ID:\s*(\S+)", taken.read(), re.IGNORECASE | re.MULTILINE)
            if match:
                found.append(match.group(1).decode("ascii", "replace"))
        return found


class Client(threading.Thread):
    """One client: posts a message, then reads a page and the API, over and over until `until`."""

    def __init__(self, number: int, base: str, agent: dict, admin: dict, page: requests.Session, until: float):
        super().__init__(name=f"load-client-{number}", daemon=True)
        self.number, self.base, self.agent, self.admin, self.until = number, base, agent, admin, until
        self.page = page
        self.answers: Counter[int] = Counter()
        self.problems: list[str] = []
        self.posted: list[int] = []

    def run(self) -> None:
        http = requests.Session()
        count = 0
        while time.monotonic() < self.until:
            count += 1
            body = {"kind": "origination", "to": [f"load{self.number}-{count}@example.test"],
                    "subject": f"Load {self.number}/{count}", "body_text": "Under load.\n"}
            response = self._note(http.post(f"{self.base}/api/v1/messages", json=body, headers=self.agent,
                                            timeout=120))
            if response.status_code == 201:
                self.posted.append(response.json()["id"])
            self._note(http.get(f"{self.base}/api/v1/messages", headers=self.agent, timeout=120))
            self._note(http.get(f"{self.base}/api/v1/mail-sender/status", headers=self.admin, timeout=120))
            self._note(self.page.get(f"{self.base}/admin/mail-sender", timeout=120))

    def _note(self, response: requests.Response) -> requests.Response:
        self.answers[response.status_code] += 1
        if response.status_code >= 500 or LOCKED in response.text:
            self.problems.append(f"{response.request.method} {response.request.url}: {response.status_code} "
                                 f"{response.text[:300]}")
        return response


def _admin_session(base: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/login", timeout=120)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = session.post(f"{base}/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                                 "csrf_token": token}, allow_redirects=False, timeout=120)
    assert answer.status_code == 302, answer.text
    return session


def _bearer(base: str, username: str, password: str) -> dict:
    answer = requests.post(f"{base}/api/v1/tokens", json={"username": username, "password": password}, timeout=120)
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def _sent(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(OutgoingMessage)
                                 .where(OutgoingMessage.status == "sent")) or 0


def test_senders_drain_while_clients_post_and_read_with_no_error_and_nothing_lost(
        app, seed, make_node, caplog, capfd, figures):
    need(os.path.exists(SMTP_SINK), f"no smtp-sink at {SMTP_SINK} (Debian's postfix package)")
    caplog.set_level(logging.WARNING, logger="werkzeug")  # a line per request is no news
    pid = seed["partition_id"]
    with app.app_context():
        support, _ = add_support_and_sales(pid, ("support@acme.test", "Acme Support"),
                                           ("sales@acme.test", "Acme Sales"))
        support_id = support.id
        db.session.commit()
    with SmtpSink() as sink, LiveServer(app) as web:
        configure(app, pid, sink, origination_from_mailbox_id=support_id, monitor_enabled=False, batch_size=50,
                  sleep_minutes=0)
        backlog = queue_messages(app, pid, BACKLOG)
        agent = _bearer(web.url, "agent", AGENT_PASSWORD)
        admin = _bearer(web.url, "admin", ADMIN_PASSWORD)
        page = _admin_session(web.url)
        make_node()
        start(app, pid)

        began = time.monotonic()
        sent_before = _sent(app)
        clients = [Client(n, web.url, agent, admin, page, began + SECONDS) for n in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(SECONDS + 300)
        took = time.monotonic() - began
        sent_under_load = _sent(app) - sent_before
        assert not any(client.is_alive() for client in clients), "a client hung"

        posted = [i for client in clients for i in client.posted]
        everything = backlog + posted
        wait_until(lambda: _sent(app) == len(everything), timeout=600, what="every message sent")
        with app.app_context():
            expected = set(db.session.scalars(select(OutgoingMessage.message_id)))
        wait_until(lambda: len(sink.message_ids()) >= len(everything), timeout=120, what="every message at the sink")
        arrived = Counter(sink.message_ids())

    answers = sum((client.answers for client in clients), Counter())
    problems = [p for client in clients for p in client.problems]
    logged = capfd.readouterr()
    locked_in_logs = [r.getMessage() for r in caplog.records if LOCKED in r.getMessage()]
    locked_in_logs += [line for line in (logged.out + logged.err).splitlines() if LOCKED in line]
    figures.lines += [
        f"{SECONDS:g} s of load ({took:.1f} s with the clients' last requests), {CLIENTS} clients, {SENDERS} senders",
        f"requests: {sum(answers.values())} ({dict(sorted(answers.items()))}); posted {len(posted)}",
        f"drain under load: {sent_under_load} sent in {took:.1f} s = {sent_under_load / took:.1f} messages/s",
        f"5xx: {sum(n for code, n in answers.items() if code >= 500)}; '{LOCKED}': "
        f"{len(locked_in_logs) + sum(LOCKED in p for p in problems)}; "
        f"lost: {len(expected - set(arrived))}; sent twice: {sum(n - 1 for n in arrived.values())}",
    ]
    assert problems == []
    assert locked_in_logs == []
    assert set(answers) <= {200, 201}, answers
    assert len(expected) == len(everything)
    assert expected <= set(arrived), f"{len(expected - set(arrived))} messages lost"
    assert all(n == 1 for n in arrived.values()), "a message arrived twice"
