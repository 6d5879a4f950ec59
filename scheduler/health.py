"""Whether this process is alive, and ready for work: what /healthz and /readyz answer.

Alive: the database answers, and where the process runs a node (`flask --app webapp serve`),
its scheduler, its SMTP loop and its bookkeeping process run (Node.failing). Ready: alive, and
the node holds the lease on its name and has started its senders (Node.not_ready).

A process that runs no node (the app under a WSGI server of its own) serves the web alone:
it is alive and ready while the database answers, since that is all its pages need. The
answer says so (`runs_node`), so that a deployment that meant to run senders there can tell.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine

from webapp.core.database import READ_ONLY, db

from .node import process_node

log = logging.getLogger("mailsender.engine")

# A database cut off without a word (a partition) would hold a query for minutes: the check
# answers "failing" after this long, well inside what a prober waits.
DATABASE_ANSWER_SECONDS = 3.0


@dataclass(frozen=True)
class Check:
    """What a check found: whether this process runs a node, and why it fails ([]: it passes)."""

    runs_node: bool
    reasons: list[str]

    @property
    def ok(self) -> bool:
        return not self.reasons


def alive() -> Check:
    """Inside an app context: the database answers, and this process's node (if any) runs."""
    node = process_node()
    reasons = [] if node is None else node.failing()
    problem = database_problem(db.engine)
    if problem:
        reasons.insert(0, problem)
    return Check(node is not None, reasons)


def ready() -> Check:
    """Inside an app context: alive, and the node (if any) holds its name and runs its senders."""
    check = alive()
    node = process_node()
    if node is None or check.reasons:
        return check
    return Check(True, node.not_ready())


# One query in flight per database: a prober that asks again while the database keeps the last
# one waiting waits for that one, rather than piling up threads that wait for ever.
_asking: dict[Engine, concurrent.futures.Future] = {}
_asking_lock = threading.Lock()


def database_problem(engine: Engine, timeout: float | None = None) -> str | None:
    """None when the database answers a query within `timeout` seconds; else why not, in words
    that name no host or database (the answer is public; the log has the error)."""
    timeout = DATABASE_ANSWER_SECONDS if timeout is None else timeout
    with _asking_lock:
        asking = _asking.get(engine)
        if asking is None:
            asking = _asking[engine] = concurrent.futures.Future()
            threading.Thread(target=_ask, args=(engine, asking), name="mailsender-health", daemon=True).start()
    try:
        asking.result(timeout)
    except concurrent.futures.TimeoutError:
        return f"the database did not answer within {timeout:g} s"
    except Exception as error:
        return f"the database does not answer ({type(error).__name__})"
    return None


def _ask(engine: Engine, answer: concurrent.futures.Future) -> None:
    try:
        # A transaction that only reads: on SQLite it waits for no writer (database.READ_ONLY).
        with engine.connect() as connection:
            connection.execution_options(**READ_ONLY).execute(text("SELECT 1"))
    except Exception as error:
        log.warning("health check: the database does not answer: %s: %s", type(error).__name__, error)
        answer.set_exception(error)
    else:
        answer.set_result(None)
    finally:
        with _asking_lock:
            if _asking.get(engine) is answer:
                del _asking[engine]
