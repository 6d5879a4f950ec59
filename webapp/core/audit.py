"""The audit trail: every change says who did what, and when."""
from __future__ import annotations

from sqlalchemy import select

from .database import db, newest_first
from .models import AuditEvent, User


def record(actor: User | str | None, action: str, *, partition_id: int | None,
           target=None, **details) -> AuditEvent:
    """Adds an AuditEvent to the session; the caller's commit writes it with the change itself.

    `actor` is the user who acted, or a name such as "cli" for commands. Never pass a secret's
    value in `details`.
    """
    event = AuditEvent(
        partition_id=partition_id,
        user_id=actor.id if isinstance(actor, User) else None,
        actor=actor.username if isinstance(actor, User) else (actor or ""),
        action=action,
        target_type=type(target).__name__ if target is not None else "",
        target_id=getattr(target, "id", None),
        details=details,
    )
    db.session.add(event)
    return event


def list_events(partition_id: int, *, limit: int, before_id: int | None = None,
                action: str | None = None) -> tuple[list[AuditEvent], int | None]:
    """One page of the partition's events, newest first, and the id to continue before (or None).

    Keyset paging on id, over an index that starts with the filter (ix_audit_event_partition_id,
    ix_audit_event_partition_action): a page costs the same with a million events behind it, and
    never repeats or skips one while new events are written.
    """
    query = select(AuditEvent).where(AuditEvent.partition_id == partition_id)
    if action:
        query = query.where(AuditEvent.action == action)
    return newest_first(query, AuditEvent.id, limit=limit, before_id=before_id)
