"""API tokens: issued once, stored as a digest, revoked."""
from __future__ import annotations

from sqlalchemy import select

from .. import audit
from ..clock import utcnow
from ..database import db
from ..models import ApiToken, User
from ..security import new_api_token, token_digest


def user_tokens(user: User) -> list[ApiToken]:
    """The user's tokens that still work, oldest first."""
    return list(db.session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).order_by(ApiToken.id)
    ))


def revoke_user_tokens(user: User) -> int:
    """Revokes every token of the user at once; answers how many were live."""
    now = utcnow()
    tokens = user_tokens(user)
    for token in tokens:
        token.revoked_at = now
    return len(tokens)


def revoke_token(token: ApiToken, *, actor) -> None:
    """Revokes one token (once; revoking it again changes nothing)."""
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(actor, "token.revoke", partition_id=token.partition_id, target=token,
                     prefix=token.prefix, owner=token.user.username)


def issue_token(user: User) -> str:
    """A new API token for the user; the token itself is returned once and never stored."""
    token, prefix, digest = new_api_token()
    row = ApiToken(partition_id=user.partition_id, user_id=user.id, prefix=prefix, digest=digest)
    db.session.add(row)
    db.session.flush()
    audit.record(user, "token.create", partition_id=user.partition_id, target=row, prefix=prefix)
    return token


def user_for_token(token: str) -> User | None:
    row = db.session.scalars(select(ApiToken).where(ApiToken.digest == token_digest(token))).first()
    if row is None or row.revoked_at is not None or row.user.disabled:
        return None
    return row.user
