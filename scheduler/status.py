"""The senders as the window sees them, read from the rows the nodes write; and Start/Stop.

Status is read from heartbeats rather than from this process, so it is true across nodes: a
node counts while its lease on its name lasts, and a sender runs while it says so and its
heartbeat is fresh.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from webapp.core import audit, route_state
from webapp.core.clock import iso, utcnow
from webapp.core.database import db
from webapp.core.models import MailSenderSettings, Node, Partition, SenderInstance
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


def _is_running(sender: SenderInstance, fresh_since: datetime) -> bool:
    return bool(sender.running) and sender.heartbeat_at is not None and sender.heartbeat_at >= fresh_since


def light_for(defined: int, running: int) -> str:
    """green: every defined sender runs; yellow: some do; red: none does (also when none is defined)."""
    if defined > 0 and running >= defined:
        return GREEN
    if running > 0:
        return YELLOW
    return RED


def sender_status(partition_id: int, now: datetime | None = None) -> dict:
    """{light, wanted, defined, running, delivering, nodes: [{name, defined, running, last_seen,
    errors}]} for a partition.

    Only live nodes count (lease_until in the future); their senders of this partition are the
    defined ones. Nodes are listed by name, with last_seen as ISO 8601 UTC. `delivering` is
    false while a running sender cannot reach its server, or while the route is paused (a
    configuration fault) or held (a quota; `route` says which): then `reason` says why and
    `undeliverable_since` since when, and a green light turns yellow, since "all senders run" would mislead.
    """
    now = now or utcnow()
    fresh_since = now - timedelta(seconds=HEARTBEAT_STALE_SECONDS)
    nodes = db.session.scalars(select(Node).where(Node.lease_until > now).order_by(Node.name)).all()
    senders = db.session.scalars(
        select(SenderInstance).where(
            SenderInstance.partition_id == partition_id,
            SenderInstance.node_id.in_([node.id for node in nodes]),
        )
    ).all() if nodes else []
    by_node: dict[int, list[SenderInstance]] = {}
    for sender in senders:
        by_node.setdefault(sender.node_id, []).append(sender)

    listed = []
    for node in nodes:
        own = by_node.get(node.id, [])
        beats = [s.heartbeat_at for s in own if s.heartbeat_at is not None]
        last_seen = max([moment for moment in (node.last_seen, *beats) if moment is not None], default=None)
        listed.append({
            "name": node.name,
            "defined": len(own),
            "running": sum(1 for s in own if _is_running(s, fresh_since)),
            "last_seen": iso(last_seen),
            "last_seen_seconds_ago": int((now - last_seen).total_seconds()) if last_seen else None,
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
    if stop is not None:
        reason, since = stop.words, stop.since
    elif stuck:
        reason, since = stuck[0].last_error or "the SMTP server cannot be reached", stuck[0].undeliverable_since
    else:
        reason = since = None
    return {
        "light": light,
        "light_label": label,
        "wanted": partition.senders_wanted,
        "wanted_at": iso(partition.senders_wanted_at),
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
