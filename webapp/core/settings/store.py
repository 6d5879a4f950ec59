"""Reading and saving the Mail Sender parameters of a partition."""
from __future__ import annotations

from sqlalchemy import select, update

from .. import audit
from ..clock import iso, utcnow
from ..database import db
from ..directory.lookups import partition_mailboxes
from ..models import MailSenderSettings, User
from ..security import decrypt_secret, encrypt_secret
from .fields import FIELDS_BY_NAME, RENDERING_FIELDS, SECRET_FIELDS, SECRET_KINDS, saved_values, secret_column, secrets_set
from .validate import AUDIT_ACTION, Validation, changes_since, ssl_allowed, validate_settings


def get_settings(partition_id: int) -> MailSenderSettings:
    """The partition's saved settings row (made with the partition, so it always exists)."""
    return db.session.scalars(
        select(MailSenderSettings).where(MailSenderSettings.partition_id == partition_id)
    ).one()


def company_domains(settings: MailSenderSettings) -> list[str]:
    """The domains inside the company: the saved list, else those of the partition's mailboxes."""
    if settings.company_domains:
        return list(settings.company_domains)
    return sorted({m.address.rpartition("@")[2].lower() for m in partition_mailboxes(settings.partition_id)})


def settings_to_json(settings: MailSenderSettings) -> dict:
    """The settings as the API answers them: secrets only as `*_set` flags."""
    body = {"version": settings.version}
    body.update(saved_values(settings))
    body["company_domains"] = list(settings.company_domains) if settings.company_domains else None
    for name, present in secrets_set(settings).items():
        body[f"{name}_set"] = present
    body["oauth2_refresh_token_set"] = bool(settings.oauth2_refresh_token_enc)
    body["oauth2_authorized_by"] = settings.oauth2_authorized_by
    body["oauth2_authorized_at"] = iso(settings.oauth2_authorized_at)
    body["company_domains_effective"] = company_domains(settings)
    body["ssl_allowed"] = ssl_allowed()
    body["updated_at"] = iso(settings.updated_at)
    body["updated_by"] = settings.updated_by
    return body


def secret_values(settings: MailSenderSettings) -> list[str]:
    """Every secret the row holds, in plain: what must be scrubbed from any text we keep."""
    stored = [getattr(settings, secret_column(name)) for name in SECRET_FIELDS]
    stored.append(settings.oauth2_refresh_token_enc)
    return [plain for plain in map(decrypt_secret, stored) if plain]


def _audit_value(value):
    return value if value is None or isinstance(value, (bool, int, str, list)) else str(value)


def save_settings(settings: MailSenderSettings, result: Validation, actor: User | str) -> None:
    """Writes a valid result: the new values, encrypted secrets, a new version and its audit.

    The version is bumped by one compare-and-set statement, so two saves from the same
    version cannot both win. Without a change nothing is written. The caller commits.
    """
    assert result.ok, "save_settings takes a valid result only"
    if not result.changed:
        result.saved = True
        return
    old_version = settings.version
    won = db.session.execute(
        update(MailSenderSettings)
        .where(MailSenderSettings.id == settings.id, MailSenderSettings.version == old_version)
        .values(version=old_version + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if won != 1:
        db.session.rollback()
        result.conflict = changes_since(settings.partition_id, old_version)
        return
    details = {}
    for name in result.changed:
        f = FIELDS_BY_NAME[name]
        if f.kind in SECRET_KINDS:
            plain = result.secrets[name]
            setattr(settings, secret_column(name), encrypt_secret(plain) if plain is not None else None)
            details[name] = "changed" if plain is not None else "cleared"
        else:
            details[name] = {"from": _audit_value(getattr(settings, name)), "to": _audit_value(result.values[name])}
            setattr(settings, name, result.values[name])
    if result.drop_refresh_token:
        settings.oauth2_refresh_token_enc = None
        settings.oauth2_authorized_by = settings.oauth2_authorized_at = None
        details["oauth2_refresh_token"] = "cleared"
    settings.version = old_version + 1
    if any(name in RENDERING_FIELDS for name in result.changed):
        settings.render_version = settings.version
    settings.updated_at = utcnow()
    settings.updated_by = actor.username if isinstance(actor, User) else str(actor)
    audit.record(actor, AUDIT_ACTION, partition_id=settings.partition_id, target=settings,
                 version=settings.version, fields=list(result.changed), changes=details)
    result.saved = True


def update_settings(partition_id: int, submitted: dict, actor: User | str) -> Validation:
    """Validates a submission against the partition's saved settings and, when valid, saves it.

    The one entry point for the form and the API. The caller commits when `result.saved`.
    """
    settings = get_settings(partition_id)
    result = validate_settings(settings, submitted)
    if result.ok:
        save_settings(settings, result, actor)
    return result
