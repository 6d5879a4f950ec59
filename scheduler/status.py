"""The senders as the window sees them, read from the rows the nodes write; Start/Stop; and
forgetting a node.

Status is read from heartbeats rather than from this process, so it is true across nodes: a
node counts while its lease on its name lasts, and a sender runs while it says so and its
heartbeat is fresh.

A node whose lease ran out without a clean shutdown (killed, or cut off) stays listed as dead,
and keeps a green light yellow, until an administrator forgets it or it takes its name again:
nobody who was not looking when it died should miss it. A node that shut down cleanly is
listed as stopped for STOPPED_LISTED_MINUTES, which is no failure.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import exists, or_, select

from webapp.core import audit, route_state
from webapp.core.clock import iso, utcnow
from webapp.core.database import db
from webapp.core.models import ForgottenNode, MailSenderSettings, Node, Partition, SenderInstance
from webapp.core.states import WANTED_RUNNING, WANTED_STOPPED

# A sender whose heartbeat is older than this no longer counts as running. The engine imports it
# and beats well within it.
HEARTBEAT_STALE_SECONDS = 15

GREEN, YELLOW, RED = "green", "yellow", "red"
LIGHT_LABELS = {GREEN: "All senders run", YELLOW: "Some senders run", RED: "No sender runs"}
# In the yellow position: every sender may run, and yet nothing can be delivered.
UNDELIVERABLE_LABEL = "Running, but cannot deliver"
# In the yellow position too: the route is paused for a configuration fault, or held for a quota.
PAUSED_LABEL = "Paused: the SMTP settings need attention"
HELD_LABEL = "Holding: the provider's quota is used up"
# And while a node that died is listed.
DEAD_NODE_LABEL = "A node stopped without shutting down"

# What a listed node is: holding its lease, gone without a clean shutdown, or shut down cleanly.
NODE_RUNNING, NODE_DEAD, NODE_STOPPED = "running", "dead", "stopped"
# A node that shut down cleanly is listed for this many product minutes (MAILSENDER_MINUTE_SECONDS).
STOPPED_LISTED_MINUTES = 60

# Between Start (or Stop) and the heartbeats that agree with it; after HEARTBEAT_STALE_SECONDS
# the light alone tells what runs.
STARTING, STOPPING = "starting", "stopping"
CHANGE_LABELS = {STARTING: "Starting…", STOPPING: "Stopping…"}


class NodeUnknown(LookupError):
    """No node of that name is listed (never seen, or already forgotten)."""


class NodeAlive(Exception):
    """The node still holds the lease on its name: it is running, and cannot be forgotten."""


def _is_running(sender: SenderInstance, fresh_since: datetime) -> bool:
    return bool(sender.running) and sender.heartbeat_at is not None and sender.heartbeat_at >= fresh_since


def light_for(defined: int, running: int) -> str:
    """green: every defined sender runs; yellow: some do; red: none does (also when none is defined)."""
    if defined > 0 and running >= defined:
        return GREEN
    if running > 0:
        return YELLOW
    return RED


def node_state(node: Node, now: datetime) -> str | None:
    """NODE_RUNNING, NODE_DEAD or NODE_STOPPED; None for a node that never held its name."""
    if node.lease_until is not None and node.lease_until > now:
        return NODE_RUNNING
    if node.stopped_at is not None:
        return NODE_STOPPED
    return NODE_DEAD if node.last_seen is not None else None


def _forgotten(partition_id: int):
    """The condition of a node this partition forgot and that has not started again since."""
    return exists().where(ForgottenNode.partition_id == partition_id, ForgottenNode.node_id == Node.id,
                          or_(Node.started_at.is_(None), ForgottenNode.forgotten_at >= Node.started_at))


def _listed_nodes(now: datetime, partition_id: int) -> list[tuple[Node, str]]:
    """The nodes the partition's window shows, by name, with their state."""
    minute = float(current_app.config["MAILSENDER_MINUTE_SECONDS"])
    stopped_since = now - timedelta(seconds=STOPPED_LISTED_MINUTES * minute)
    listed = []
    for node in db.session.scalars(select(Node).where(~_forgotten(partition_id)).order_by(Node.name)):
        state = node_state(node, now)
        if state == NODE_STOPPED and node.stopped_at < stopped_since:
            continue
        if state is not None:
            listed.append((node, state))
    return listed


def change_under_way(partition: Partition, defined: int, running: int, now: datetime) -> str | None:
    """STARTING or STOPPING while the heartbeats do not yet agree with a recent Start or Stop."""
    asked_at = partition.senders_wanted_at
    if defined == 0 or asked_at is None or now - asked_at > timedelta(seconds=HEARTBEAT_STALE_SECONDS):
        return None
    if partition.senders_wanted == WANTED_RUNNING and running < defined:
        return STARTING
    if partition.senders_wanted == WANTED_STOPPED and running > 0:
        return STOPPING
    return None


def sender_status(partition_id: int, now: datetime | None = None) -> dict:
    """{light, wanted, change, defined, running, delivering, nodes: [{name, state, defined, running,
    started_at, version, last_seen, stopped_at, errors}]} for a partition.

    Only running nodes (lease_until in the future) count: their senders of this partition are
    the defined ones. Dead and recently stopped nodes are listed too, with nothing defined; a
    dead one turns a green light yellow. Nodes are listed by name, with times as ISO 8601 UTC.
    `change` is "starting" or "stopping" between Start or Stop and the heartbeats that agree.
    `delivering` is false while a running sender cannot reach its server, or while the route
    is paused (a configuration fault) or held (a quota; `route` says which): then `reason` says
    why and `undeliverable_since` since when, and a green light turns yellow, since "all
    senders run" would mislead.
    """
    now = now or utcnow()
    fresh_since = now - timedelta(seconds=HEARTBEAT_STALE_SECONDS)
    shown = _listed_nodes(now, partition_id)
    live_ids = [node.id for node, state in shown if state == NODE_RUNNING]
    senders = db.session.scalars(
        select(SenderInstance).where(
            SenderInstance.partition_id == partition_id,
            SenderInstance.node_id.in_(live_ids),
        )
    ).all() if live_ids else []
    by_node: dict[int, list[SenderInstance]] = {}
    for sender in senders:
        by_node.setdefault(sender.node_id, []).append(sender)

    listed = []
    for node, state in shown:
        own = by_node.get(node.id, [])
        beats = [s.heartbeat_at for s in own if s.heartbeat_at is not None]
        last_seen = max([moment for moment in (node.last_seen, *beats) if moment is not None], default=None)
        listed.append({
            "name": node.name,
            "state": state,
            "defined": len(own),
            "running": sum(1 for s in own if _is_running(s, fresh_since)),
            "started_at": iso(node.started_at),
            "version": node.version,
            "last_seen": iso(last_seen),
            "last_seen_seconds_ago": int((now - last_seen).total_seconds()) if last_seen else None,
            "stopped_at": iso(node.stopped_at) if state == NODE_STOPPED else None,
            # What each sender of the node that is in trouble says: a failed batch, a stall.
            "errors": [f"sender {s.slot + 1}: {s.last_error}" for s in sorted(own, key=lambda s: s.slot)
                       if s.last_error],
        })
    defined = sum(node["defined"] for node in listed)
    running = sum(node["running"] for node in listed)
    partition = db.session.get(Partition, partition_id)
    stuck = sorted((s for s in senders if _is_running(s, fresh_since) and s.undeliverable_since is not None),
                   key=lambda s: s.undeliverable_since)
    light = light_for(defined, running)
    label = LIGHT_LABELS[light]
    version = db.session.scalar(select(MailSenderSettings.version)
                                .where(MailSenderSettings.partition_id == partition_id))
    stop = route_state.route_stop(partition_id, version, now) if version is not None else None
    if stop is not None and light == GREEN:
        light, label = YELLOW, PAUSED_LABEL if stop.paused else HELD_LABEL
    elif stuck and light == GREEN:
        light, label = YELLOW, UNDELIVERABLE_LABEL
    elif light == GREEN and any(node["state"] == NODE_DEAD for node in listed):
        light, label = YELLOW, DEAD_NODE_LABEL
    if stop is not None:
        reason, since = stop.words, stop.since
    elif stuck:
        reason, since = stuck[0].last_error or "the SMTP server cannot be reached", stuck[0].undeliverable_since
    else:
        reason = since = None
    change = change_under_way(partition, defined, running, now)
    return {
        "light": light,
        "light_label": label,
        "wanted": partition.senders_wanted,
        "wanted_at": iso(partition.senders_wanted_at),
        "change": change,
        "change_label": CHANGE_LABELS.get(change),
        "defined": defined,
        "running": running,
        "delivering": not stuck and stop is None,
        "reason": reason,
        "undeliverable_since": iso(since),
        # Why the route sends nothing now: {paused, reason, since, until}; None while it may.
        "route": stop.to_json() if stop is not None else None,
        "nodes": listed,
    }


def set_wanted(partition_id: int, wanted: str, actor) -> bool:
    """Asks every node to run (or stop) this partition's senders; True when that changed anything.

    Asking for what is already wanted changes nothing, so Start on running senders does not
    move senders_wanted_at (which the nodes read as "wake now"). The caller commits.
    """
    if wanted not in (WANTED_RUNNING, WANTED_STOPPED):
        raise ValueError(f"wanted must be {WANTED_RUNNING!r} or {WANTED_STOPPED!r}")
    partition = db.session.get(Partition, partition_id)
    if partition.senders_wanted == wanted:
        return False
    previous = partition.senders_wanted
    partition.senders_wanted = wanted
    partition.senders_wanted_at = utcnow()
    action = "senders.start" if wanted == WANTED_RUNNING else "senders.stop"
    audit.record(actor, action, partition_id=partition_id, target=partition, wanted=wanted, previous=previous)
    return True


def forget_node(name: str, actor, partition_id: int) -> None:
    """Stops listing a node that is not running (dead, or stopped), until it takes its name again.

    Raises NodeUnknown when no such node is listed, NodeAlive while it holds its lease. The
    caller commits.
    """
    node = db.session.scalars(select(Node).where(Node.name == name, ~_forgotten(partition_id))).first()
    now = utcnow()
    if node is None or node_state(node, now) is None:
        raise NodeUnknown(name)
    if node_state(node, now) == NODE_RUNNING:
        raise NodeAlive(name)
    # A node that takes its name after this moment starts later, and is listed again.
    db.session.merge(ForgottenNode(partition_id=partition_id, node_id=node.id, forgotten_at=now))
    audit.record(actor, "node.forget", partition_id=partition_id, target=node, name=name,
                 last_seen=iso(node.last_seen), stopped_at=iso(node.stopped_at))
