"""The engine's Prometheus metrics: what this node's senders did, and the queue as it stands.

Where each figure is observed, so that it is right:
- attempts by reply class and the SMTP transaction's duration: on the node's asyncio loop, as
  each send returns (Sender.deliver), whatever becomes of its outcome afterwards;
- the claim's duration: on the sender's scheduler thread, around the claim it waits for;
- messages settled (sent, failed, deferred, training, held) and the delivery latency (queue time
  to the server's acceptance): on the loop again, when the bookkeeper answers that the outcome is
  committed. The bookkeeper's child process settles and writes the outcomes, but observes
  nothing: it says in its answer what each outcome became (bookkeeper.Answer.statuses), so an
  outcome not written (its claim lost to another sender) is not counted, and nothing is counted
  twice;
- senders defined and running, and the bookkeeper's queue depth: read off the node at scrape time;
- the queue's gauges: read from the database at scrape time (QueueGauges), the same on every node.

So every counter and histogram lives in the node's own process (the web process, which runs
the node beside waitress's threads: one process per node), and prometheus_client's metrics are
thread-safe: no multiprocess mode (PROMETHEUS_MULTIPROC_DIR) is needed, and none is used.
Each node keeps its own registry (NodeMetrics.registry), so a node's counters start at zero
with the node, as Prometheus expects of a process that restarts.
"""
from __future__ import annotations

import re
import time
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from webapp.core.database import db
from webapp.core.models import OutgoingMessage, Partition
from webapp.core.states import (
    ANSWER_MESSAGE_PERMANENT,
    ANSWER_RECIPIENT_PERMANENT,
    ATTEMPT_UNTRIED,
    DEFERRED,
    HELD,
    QUEUED,
    SENDING,
    SENT,
)

from .monitor.definitions import queue_counts
from .outcomes import Transaction
from .sender import owner_partition

# The classes of reply an attempt is counted under.
REPLY_2XX, REPLY_4XX, REPLY_5XX = "2xx", "4xx", "5xx"
REPLY_TIMEOUT = "timeout"  # no reply in time: to connect, or to a command
# No reply: refused, dropped, a TLS handshake that failed, a session the settings cannot open.
REPLY_CONNECTION = "connection_error"
REPLY_NOT_SENT = "not_sent"  # refused here before a command went (SIZE limit, an address no command carries)
REPLY_CLASSES = (REPLY_2XX, REPLY_4XX, REPLY_5XX, REPLY_TIMEOUT, REPLY_CONNECTION, REPLY_NOT_SENT)

# aiosmtplib's timeouts say "Timed out connecting to …" and "Timed out waiting for server
# response"; asyncio's has no text, and is named by its type (smtp.session.describe_error).
_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)

# The states a message waits in: its gauges. The ended ones (sent, failed …) are the counters'.
QUEUE_STATES = (QUEUED, DEFERRED, SENDING, HELD)

# From a few seconds (a message sent at once, after the undo hold) to the four days of a lifetime.
LATENCY_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600, 4 * 24 * 3600)
TRANSACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_NODE = "mailsender.node"  # the app's extension: the node running in this process for it


def reply_class(transaction: Transaction) -> str:
    """The class of reply that decided one transaction (a DeliveryAttempt): its code's hundred,
    or, with no reply at all, a timeout, a connection error, or nothing sent."""
    code = transaction.code
    if code is not None and 200 <= code < 400:
        return REPLY_2XX
    if code is not None and 400 <= code < 500:
        return REPLY_4XX
    if code is not None and 500 <= code < 600:
        return REPLY_5XX
    if code is None and transaction.answer in (ANSWER_MESSAGE_PERMANENT, ANSWER_RECIPIENT_PERMANENT):
        return REPLY_NOT_SENT  # the pipeline's own refusals: a server's always carry a code
    return REPLY_TIMEOUT if _TIMEOUT.search(transaction.detail or "") else REPLY_CONNECTION


class NodeMetrics:
    """One node's counters and histograms, and its own gauges (read off the node at each scrape)."""

    def __init__(self, node):
        self.node = node
        self.registry = registry = CollectorRegistry()
        self.settled = Counter(
            "mailsender_messages_settled", "Outcomes committed, by the state the message went to "
            "(sent, failed, deferred, training, held)", ["partition", "status"], registry=registry)
        self.attempts = Counter(
            "mailsender_smtp_attempts", "SMTP transactions (delivery attempts) by the class of the reply "
            "that decided them", ["partition", "class"], registry=registry)
        self.delivery_latency = Histogram(
            "mailsender_delivery_latency_seconds", "From a message's queue time to the server's acceptance, "
            "for the messages sent", ["partition"], buckets=LATENCY_BUCKETS, registry=registry)
        self.transaction_duration = Histogram(
            "mailsender_smtp_transaction_seconds", "One SMTP transaction, MAIL FROM to the reply to the end "
            "of data (the connection's opening not included)", ["partition"], buckets=TRANSACTION_BUCKETS,
            registry=registry)
        self.claim_duration = Histogram(
            "mailsender_claim_seconds", "A sender's claim of a batch, asked to answered (empty ones too)",
            ["partition"], buckets=CLAIM_BUCKETS, registry=registry)
        self._attempts: dict[tuple[int, str], Counter] = {}
        self._transactions: dict[int, Histogram] = {}
        self._settled: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._partitions: dict[str, str] = {}  # a claim owner's partition, as a label

    # --- observations ---------------------------------------------------------------------
    # On the loop, once or twice a message: each labelled child is looked up once and kept, which
    # makes an observation a fifth of what labels() each time costs.

    def attempted(self, partition_id: int, transactions: Iterable[Transaction]) -> None:
        """A send's transactions, as it returned (on the loop)."""
        for transaction in transactions:
            if transaction.outcome == ATTEMPT_UNTRIED:
                continue
            key = (partition_id, reply_class(transaction))
            counter = self._attempts.get(key)
            if counter is None:
                counter = self._attempts[key] = self.attempts.labels(str(partition_id), key[1])
            counter.inc()
            timings = transaction.timings
            if timings and "commands" in timings:
                histogram = self._transactions.get(partition_id)
                if histogram is None:
                    histogram = self._transactions[partition_id] = self.transaction_duration.labels(str(partition_id))
                histogram.observe((timings["commands"] + timings.get("end", 0)) / 1000)

    def claimed(self, partition_id: int, seconds: float) -> None:
        self.claim_duration.labels(str(partition_id)).observe(seconds)

    def committed(self, owner: str, statuses: list[str | None], queued_at: list[float | None],
                  handed_at: float) -> None:
        """Outcomes of `owner`'s the bookkeeper committed: each one's new state (None: not written),
        with its message's queue time, and when the outcome was handed in (just after the reply)."""
        partition = self._partitions.get(owner)
        if partition is None:
            partition = self._partitions[owner] = str(owner_partition(owner))
        for index, status in enumerate(statuses):
            if status is None:
                continue
            counter = self._settled.get((partition, status))
            if counter is None:
                counter = self._settled[(partition, status)] = self.settled.labels(partition, status)
            counter.inc()
            queued = queued_at[index] if index < len(queued_at) else None
            if status == SENT and queued is not None:
                histogram = self._latency.get(partition)
                if histogram is None:
                    histogram = self._latency[partition] = self.delivery_latency.labels(partition)
                histogram.observe(max(0.0, handed_at - queued))

    # --- the scrape -------------------------------------------------------------------------

    def collect(self):
        yield from self.registry.collect()
        node = self.node
        defined = GaugeMetricFamily("mailsender_senders_defined", "Senders this node defines, per partition",
                                    labels=["node", "partition"])
        running = GaugeMetricFamily("mailsender_senders_running", "Senders of this node that run (wanted, the "
                                    "node holding its name, and not stalled), per partition",
                                    labels=["node", "partition"])
        per_partition: dict[int, list[int]] = {}
        now = time.monotonic()
        for sender in list(node.senders.values()):
            counts = per_partition.setdefault(sender.partition_id, [0, 0])
            counts[0] += 1
            if sender.should_run() and sender.stalled_for(now) <= node.stall_seconds:
                counts[1] += 1
        for partition_id, (defined_here, running_here) in sorted(per_partition.items()):
            defined.add_metric([node.name, str(partition_id)], defined_here)
            running.add_metric([node.name, str(partition_id)], running_here)
        yield defined
        yield running
        depth = GaugeMetricFamily("mailsender_bookkeeper_queue_depth", "Jobs (outcomes, claims, lease "
                                  "extensions, releases) handed to the bookkeeping process and not yet "
                                  "answered", labels=["node"])
        depth.add_metric([node.name], node.bookkeeper.queue_depth)
        yield depth


class QueueGauges:
    """The queue, per partition, read from the database at each scrape (inside the request's app
    context): the same figures from every node of a database."""

    def collect(self):
        pending = GaugeMetricFamily("mailsender_queue_pending", "Pending messages (queued, deferred, sending) "
                                    "as the Monitor counts them: exact up to its count limit, above it the "
                                    "last full count, a few seconds old", labels=["partition"])
        stuck = GaugeMetricFamily("mailsender_queue_stuck", "Stuck messages as the Monitor counts them",
                                  labels=["partition"])
        by_state = GaugeMetricFamily("mailsender_queue_messages", "Messages waiting in each state (queued "
                                     "includes the scheduled ones)", labels=["partition", "state"])
        for partition_id in db.session.scalars(select(Partition.id).order_by(Partition.id)).all():
            label = str(partition_id)
            # The Monitor's own counts, whose cost does not grow with the queue.
            counts = queue_counts(partition_id)
            pending.add_metric([label], counts.pending)
            stuck.add_metric([label], counts.stuck)
            for state, count in zip(QUEUE_STATES, db.session.execute(_by_state(partition_id)).one()):
                by_state.add_metric([label, state], count)
        yield pending
        yield stuck
        yield by_state


def _by_state(partition_id: int):
    """The count of each waiting state, in one statement. No cheap count per state is kept (the
    Monitor's are of pending and stuck only), so this counts: O(pending + held) index entries a
    scrape, never the sent history. One count per state, each one range of ix_outgoing_list_status
    (partition, state, id): with the states in one IN (a GROUP BY), PostgreSQL may read the whole
    partition's range and filter the states, the history among them."""
    return select(*(
        select(func.count()).select_from(OutgoingMessage)
        .where(OutgoingMessage.partition_id == partition_id, OutgoingMessage.status == state).scalar_subquery()
        for state in QUEUE_STATES))


def attach(node) -> None:
    """Makes `node` the one whose metrics its app's /metrics shows (Node.start)."""
    node.app.extensions[_NODE] = node


def detach(node) -> None:
    if node.app.extensions.get(_NODE) is node:
        del node.app.extensions[_NODE]


def scrape(app) -> CollectorRegistry:
    """What GET /metrics shows: the queue's gauges, and this process's node's metrics if it runs one."""
    registry = CollectorRegistry()
    registry.register(QueueGauges())
    node = app.extensions.get(_NODE)
    if node is not None:
        registry.register(node.metrics)
    return registry
