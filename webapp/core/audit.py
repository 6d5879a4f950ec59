"""The audit trail: every change says who did what, and when."""
from __future__ import annotations

from .database import db
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
