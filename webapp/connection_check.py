"""The Test button and POST /api/v1/mail-sender/test: check like Save, limit, run the Test, audit.

The values tried are the saved settings with the submitted ones merged in (a blank secret
means the stored one), validated exactly as Save validates them; nothing is saved. Each run
is an AuditEvent "mailsender.test", and those events are the rate limit's count, so the limit
holds however many processes or nodes serve the same administrator.
"""
from __future__ import annotations

from datetime import timedelta
from functools import partial

from flask import current_app
from sqlalchemy import func, select

from scheduler import oauth
from scheduler.smtp_check import CheckResult, run_check
from scheduler.transport import SmtpConfig

from . import audit
from .addresses import AddressError, parse_addr_spec
from .directory import get_in_partition
from .extensions import db
from .models import AuditEvent, Mailbox, User, utcnow
from .security import decrypt_secret
from .settings import SECRET_FIELDS, get_settings, validate_settings

TEST_ACTION = "mailsender.test"
REFUSED_ACTION = "mailsender.test_refused"  # a run over the limit: audited, not counted
WINDOW_SECONDS = 60
DEFAULT_RUNS_PER_MINUTE = 5


class CheckRefused(Exception):
    """The Test did not run: invalid values (422, fields named) or too many runs (429)."""

    def __init__(self, status: int, message: str, fields: dict | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.fields, self.retry_after = status, message, fields or {}, retry_after


def run_smtp_test(user: User, submitted: dict) -> CheckResult:
    """Tests the saved settings with `submitted` merged in; raises CheckRefused when it may not run.

    Commits: the audit event of the run (and a refresh token the token server rotated).
    """
    settings = get_settings(user.partition_id)
    # A Test saves nothing, so an older version in the form is no conflict.
    candidate = {name: value for name, value in submitted.items() if name != "version"}
    validation = validate_settings(settings, candidate)
    if validation.errors:
        raise CheckRefused(422, "Some settings are not valid; nothing was tested.", validation.errors)
    values = validation.values

    secrets = {name: (validation.secrets[name] if name in validation.secrets
                      else _plain(getattr(settings, f"{name}_enc"))) for name in SECRET_FIELDS}
    smtp_config = SmtpConfig.from_values(values, secrets["smtp_password"], current_app.config)
    fetch_token, hidden = None, [value for value in secrets.values() if value]
    stored_refresh = _plain(settings.oauth2_refresh_token_enc)
    if values["oauth2_enabled"]:
        oauth_config = oauth.OAuthConfig.from_values(values, secrets, stored_refresh,
                                                     float(values["smtp_timeout_seconds"]))
        fetch_token, hidden = partial(oauth.fetch_token, oauth_config), hidden + oauth_config.secrets
    address = envelope_address(values, user.partition_id)

    event = audit.record(user, TEST_ACTION, partition_id=user.partition_id, target=settings,
                         host=values["smtp_host"], port=values["smtp_port"], outcome="running")
    db.session.commit()
    _within_limit(user, event)
    db.session.commit()  # no transaction (on SQLite: no write lock) is held while the servers answer

    result = run_check(smtp_config, address, fetch_token, hidden)

    if result.rotated_refresh_token and result.rotated_refresh_token != stored_refresh:
        oauth.store_refresh_token(user.partition_id, result.rotated_refresh_token)
    event.details = {**event.details, "outcome": "ok" if result.ok else "failed", "stage": result.stage,
                     "code": result.code, "warnings": len(result.warnings)}
    db.session.commit()
    return result


def envelope_address(values: dict, partition_id: int) -> str | None:
    """Stage 5's address: the SMTP user when it is an e-mail address, else the Default From."""
    username = values.get("smtp_username") or ""
    if "@" in username:
        try:
            return parse_addr_spec(username)
        except AddressError:
            pass
    mailbox_id = values.get("origination_from_mailbox_id")
    mailbox = get_in_partition(Mailbox, mailbox_id, partition_id) if mailbox_id else None
    return mailbox.address if mailbox is not None else None


def _within_limit(user: User, event: AuditEvent) -> None:
    """Counts this user's runs of the last minute, this one included; over the limit, refuses it.

    The run is written first and counted after, so two runs at once on two nodes cannot both
    slip under the limit (at worst both are refused).
    """
    limit = int(current_app.config.get("MAILSENDER_TEST_RUNS_PER_MINUTE", DEFAULT_RUNS_PER_MINUTE))
    since = utcnow() - timedelta(seconds=WINDOW_SECONDS)
    recent = select(AuditEvent.at).where(AuditEvent.action == TEST_ACTION, AuditEvent.user_id == user.id,
                                         AuditEvent.at >= since)
    count = db.session.scalar(select(func.count()).select_from(recent.subquery()))
    if count <= limit:
        return
    oldest = db.session.scalar(recent.order_by(AuditEvent.at).limit(1))
    event.action = REFUSED_ACTION
    event.details = {**event.details, "outcome": "refused: too many tests"}
    db.session.commit()
    wait = max(1, int(WINDOW_SECONDS - (utcnow() - oldest).total_seconds()) + 1) if oldest else WINDOW_SECONDS
    raise CheckRefused(429, f"At most {limit} tests a minute; try again in {wait} s.", retry_after=wait)


def _plain(encrypted: str | None) -> str | None:
    return decrypt_secret(encrypted) if encrypted else None
