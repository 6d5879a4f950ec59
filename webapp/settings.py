"""The Mail Sender parameters: reading them, and (for the form and the API alike) validating them.

FIELDS is the one list of parameters: their API names, labels, defaults, help and the toggles
that show them. The window iterates it, the validator walks it, the JSON comes from it.
"""
from __future__ import annotations

import codecs
import ipaddress
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import select, update

from . import audit, outbound
from .addresses import AddressError, parse_addr_spec
from .directory import get_in_partition, partition_mailboxes
from .extensions import db
from .models import AuditEvent, Mailbox, MailSenderSettings, User, utcnow
from .security import decrypt_secret, encrypt_secret

AUDIT_ACTION = "settings.update"

# Field kinds: how a value is read, checked and shown.
BOOL, INT, TEXT, ADDRESS, DOMAINS, MAILBOX, CHOICE, URL, CHARSET, SECRET, SECRET_JSON = (
    "bool", "int", "text", "address", "domains", "mailbox", "choice", "url", "charset", "secret",
    "secret_json",
)
SECRET_KINDS = (SECRET, SECRET_JSON)
# The largest value an integer column holds on PostgreSQL.
INT_COLUMN_MAX = 2**31 - 1

PROVIDERS = (("microsoft", "Microsoft 365"), ("google", "Google"), ("other", "Other"))
GRANTS = (("client_credentials", "Client credentials"), ("authorization_code", "Authorization code"),
          ("service_account", "Service account"))
ALL_GRANTS = ",".join(value for value, _ in GRANTS)


@dataclass(frozen=True)
class Field:
    """One parameter of the window and of the API."""

    name: str  # the API field name, also the form input's name
    label: str  # how the window and its message boxes name it
    kind: str
    default: str  # the default as the window states it
    help: str
    # When the field matters: "a|b" = a or b is on; "a&g=x,y" = a is on and g is x or y.
    show_if: str = ""
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 320
    nullable: bool = False  # an int that may be blank


FIELDS: tuple[Field, ...] = (
    Field("training_enabled", "Enable training", BOOL, "off",
          "Nothing leaves the company: recipients outside the company domains are withheld and the message kept."),
    Field("company_domains", "Company domains", DOMAINS, "the domains of the partition's mailboxes",
          "Domains that count as inside the company in training mode; separate them with commas. Blank: the mailboxes' domains.",
          max_length=4000),
    Field("tracking_id_enabled", "Tracking ID", BOOL, "on",
          "Put the case's tracking ID into the subject (forwards, collaborations and kept cases always get it)."),
    Field("batch_size", "Batch size", INT, "100",
          "The most messages one sender collects in one wake (1 to 10000).", minimum=1, maximum=10000),
    Field("sleep_minutes", "Sleep time", INT, "1",
          "Minutes a sender waits between batches (0 to 1440; 0: the next batch at once).", minimum=0, maximum=1440),
    Field("allow_change_reply_from", "Allow users to change default for replies", BOOL, "off",
          "A reply goes out from the mailbox the customer wrote to; on: users may pick another of their mailboxes."),
    Field("origination_from_mailbox_id", "Default From: for originations", MAILBOX, "none",
          "The mailbox new messages go out from. With none and no allowed preference, an origination is refused."),
    Field("allow_change_origination_from", "Allow users to change default for originations", BOOL, "off",
          "On: users may pick another of their own mailboxes for new messages."),
    Field("envelope_sender_mailbox", "SMTP Envelope Sender", BOOL, "on",
          "Redirected messages: on, MAIL FROM is our mailbox (bounces come back to us); off, the original sender's."),
    Field("log_email_address", "Log e-mail address", ADDRESS, "blank",
          "Added to every outgoing message as a hidden (envelope-only) Bcc recipient."),
    Field("column_width", "Outgoing mail column width", INT, "blank",
          "Blank: no hard wrap (recommended); else wrap plain text at that width (1 to 1000, standard 72).",
          minimum=1, maximum=1000, nullable=True),
    Field("smtp_host", "SMTP server", TEXT, "localhost", "The host name or address of the SMTP server.",
          max_length=255),
    Field("smtp_port", "SMTP port", INT, "25", "1 to 65535: 25 or 587 for STARTTLS, 465 for SSL.",
          minimum=1, maximum=65535),
    Field("smtp_timeout_seconds", "SMTP server timeout", INT, "60",
          "Seconds an open connection is kept idle when nothing waits to be sent (1 to 600).", minimum=1, maximum=600),
    Field("smtp_starttls", "Use SMTP TLS", BOOL, "off", "Upgrade the connection with STARTTLS."),
    Field("smtp_auth", "Use SMTP Auth", BOOL, "off", "Log in to the SMTP server with a user and password."),
    Field("smtp_username", "SMTP user", TEXT, "blank",
          "The user to log in as (with OAuth2: the mailbox the token is for).", show_if="smtp_auth|oauth2_enabled"),
    Field("smtp_password", "SMTP password", SECRET, "blank",
          "Stored encrypted and never shown; leave blank to keep the stored one.", show_if="smtp_auth",
          max_length=1000),
    Field("smtp_ssl", "Secure SMTP (SSL)", BOOL, "off",
          "Implicit TLS from the first byte (usually port 465) instead of STARTTLS.",
          show_if="smtp_auth|oauth2_enabled"),
    Field("oauth2_enabled", "Use OAuth2 SMTP", BOOL, "off", "Log in with an OAuth2 token (XOAUTH2) as the SMTP user."),
    Field("oauth2_provider", "OAuth2 provider", CHOICE, "none", "Who issues the tokens.",
          show_if="oauth2_enabled", choices=PROVIDERS),
    Field("oauth2_grant", "OAuth2 grant", CHOICE, "none", "How the token is obtained.",
          show_if="oauth2_enabled", choices=GRANTS),
    Field("oauth2_authorization_url", "Authorization URL", URL, "blank",
          "Where an administrator consents (authorization code grant).",
          show_if="oauth2_enabled&oauth2_grant=authorization_code", max_length=2000),
    Field("oauth2_token_url", "Token URL", URL, "blank", "Where tokens are fetched (https; http only to a server on loopback).",
          show_if=f"oauth2_enabled&oauth2_grant={ALL_GRANTS}", max_length=2000),
    Field("oauth2_client_id", "Client ID", TEXT, "blank", "The application's client ID.",
          show_if=f"oauth2_enabled&oauth2_grant={ALL_GRANTS}", max_length=500),
    Field("oauth2_client_secret", "Client Secret", SECRET, "blank",
          "Stored encrypted and never shown; leave blank to keep the stored one.",
          show_if="oauth2_enabled&oauth2_grant=client_credentials,authorization_code", max_length=1000),
    Field("oauth2_service_account_key", "Service Account Key", SECRET_JSON, "blank",
          "Google: the JSON key (with domain-wide delegation; the SMTP user is the subject). Stored encrypted, never shown.",
          show_if="oauth2_enabled&oauth2_grant=service_account", max_length=20000),
    Field("default_charset", "Default character set", CHARSET, "UTF-8",
          "Charset of outgoing text; where a text does not fit it, UTF-8 is used instead.", max_length=40),
    Field("priority_enabled", "Enable Mail Sender Priority", BOOL, "off",
          "Send mail of lower-numbered mailboxes first; off: in queue order only."),
    Field("monitor_enabled", "Enable monitor", BOOL, "on", "Watch the queue and notify when mail gets stuck."),
    Field("monitor_sleep_minutes", "Monitor sleep time", INT, "5",
          "Minutes between monitor rounds (1 to 1440).", minimum=1, maximum=1440),
    Field("monitor_pending_threshold", "Monitor pending threshold", INT, "1000",
          "Notify when more messages than this are pending (0 or more).", minimum=0),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
SECRET_FIELDS = tuple(f.name for f in FIELDS if f.kind in SECRET_KINDS)
# Answered by GET and ignored by PUT, so that a GET's answer can be sent back as it is.
READ_ONLY_FIELDS = ("version", "updated_at", "updated_by", "company_domains_effective",
                    "oauth2_authorized_by", "oauth2_authorized_at", "ssl_allowed", "warnings")


def get_settings(partition_id: int) -> MailSenderSettings:
    """The partition's saved settings row (made with the partition, so it always exists)."""
    return db.session.scalars(
        select(MailSenderSettings).where(MailSenderSettings.partition_id == partition_id)
    ).one()


def label_of(name: str) -> str:
    known = FIELDS_BY_NAME.get(name)
    return known.label if known else name


def ssl_allowed() -> bool:
    return bool(current_app.config.get("MAILSENDER_SSL_ALLOWED"))


def company_domains(settings: MailSenderSettings) -> list[str]:
    """The domains inside the company: the saved list, else those of the partition's mailboxes."""
    if settings.company_domains:
        return list(settings.company_domains)
    return sorted({m.address.rpartition("@")[2].lower() for m in partition_mailboxes(settings.partition_id)})


def show_if_holds(rule: str, values: dict) -> bool:
    """Whether a field with this show_if rule is shown for these values (mailsender.js does the same)."""
    if not rule:
        return True
    for alternative in rule.split("|"):
        if all(_term_holds(term, values) for term in alternative.split("&")):
            return True
    return False


def _term_holds(term: str, values: dict) -> bool:
    name, has_value, wanted = term.partition("=")
    value = values.get(name)
    if not has_value:
        return value is True
    return str(value or "") in wanted.split(",")


# --- reading a row ------------------------------------------------------------------------


def _stored_secret_column(name: str) -> str:
    return f"{name}_enc"


def secrets_set(settings: MailSenderSettings) -> dict[str, bool]:
    """{"smtp_password": True, ...}: which secrets are stored (never their values)."""
    return {name: bool(getattr(settings, _stored_secret_column(name))) for name in SECRET_FIELDS}


def saved_values(settings: MailSenderSettings) -> dict:
    """Every non-secret parameter of the row, keyed by API name, as the API answers it."""
    return {f.name: getattr(settings, f.name) for f in FIELDS if f.kind not in SECRET_KINDS}


def settings_to_json(settings: MailSenderSettings) -> dict:
    """The settings as the API answers them: secrets only as `*_set` flags."""
    body = {"version": settings.version}
    body.update(saved_values(settings))
    body["company_domains"] = list(settings.company_domains) if settings.company_domains else None
    for name, present in secrets_set(settings).items():
        body[f"{name}_set"] = present
    body["oauth2_refresh_token_set"] = bool(settings.oauth2_refresh_token_enc)
    body["oauth2_authorized_by"] = settings.oauth2_authorized_by
    body["oauth2_authorized_at"] = _iso(settings.oauth2_authorized_at)
    body["company_domains_effective"] = company_domains(settings)
    body["ssl_allowed"] = ssl_allowed()
    body["updated_at"] = _iso(settings.updated_at)
    body["updated_by"] = settings.updated_by
    return body


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def form_values(settings: MailSenderSettings) -> dict:
    """The saved parameters as the form shows them: strings for inputs, booleans for checkboxes."""
    shown = {}
    for f in FIELDS:
        if f.kind in SECRET_KINDS:
            shown[f.name] = ""
            continue
        value = getattr(settings, f.name)
        if f.kind == BOOL:
            shown[f.name] = bool(value)
        elif f.kind == DOMAINS:
            shown[f.name] = ", ".join(value or [])
        else:
            shown[f.name] = "" if value is None else str(value)
    return shown


def form_fields(form) -> dict:
    """A submitted form as the fields the validator takes (the same shape as a PUT's body).

    An unticked checkbox is not sent by the browser, so every checkbox of the table counts as
    named: off.
    """
    submitted = {}
    for f in FIELDS:
        if f.kind == BOOL:
            submitted[f.name] = f.name in form
        else:
            submitted[f.name] = form.get(f.name, "")
    submitted["clear_secrets"] = form.getlist("clear_secrets")
    if form.get("version"):
        submitted["version"] = form.get("version")
    return submitted


# --- validating ---------------------------------------------------------------------------


@dataclass
class Validation:
    """What the validator made of a submission: errors, or the new values with warnings."""

    values: dict = field(default_factory=dict)  # every non-secret parameter after the merge
    secrets: dict = field(default_factory=dict)  # secret name → new plain value, or None to clear
    errors: dict = field(default_factory=dict)  # API name → why
    warnings: list = field(default_factory=list)  # [{"field", "message"}]
    changed: list = field(default_factory=list)  # API names whose value changes, in table order
    conflict: dict | None = None  # on an old version: API name → who changed it since
    saved: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and self.conflict is None


class _Bad(ValueError):
    pass


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CHARSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]*\Z")


def normalised_domain(text: str) -> str:
    """The domain in lower-case ASCII, checked with the same rules as an address's domain (no DNS)."""
    try:
        return parse_addr_spec("postmaster@" + text.rstrip(".")).partition("@")[2]
    except AddressError:
        raise _Bad(f"{text!r} is not a domain name") from None


def _is_loopback(host: str) -> bool:
    return outbound.is_loopback_host(host)


def _text(value, f: Field) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad("must be text")
    if _CONTROL.search(value):  # before stripping: a trailing CR LF is refused, not trimmed away
        raise _Bad("must not contain line breaks or control characters")
    value = value.strip()
    if len(value) > f.max_length:
        raise _Bad(f"must be at most {f.max_length} characters")
    return value


def _coerce(f: Field, value, partition_id: int):
    """The submitted value as the row stores it, or _Bad naming what is wrong."""
    if f.kind == BOOL:
        if not isinstance(value, bool):
            raise _Bad("must be true or false")
        return value
    if f.kind == INT:
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                value = None
            elif re.fullmatch(r"[+-]?\d{1,12}", value):
                value = int(value)
            else:
                raise _Bad("must be a whole number")
        if value is None:
            if f.nullable:
                return None
            raise _Bad("is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad("must be a whole number")
        if f.minimum is not None and value < f.minimum or f.maximum is not None and value > f.maximum:
            if f.maximum is None:
                raise _Bad(f"must be {f.minimum} or more")
            raise _Bad(f"must be from {f.minimum} to {f.maximum}")
        if value > INT_COLUMN_MAX:
            raise _Bad(f"must be at most {INT_COLUMN_MAX}")
        return value
    if f.kind == DOMAINS:
        if value is None:
            return None
        if isinstance(value, str):
            if len(value) > f.max_length:
                raise _Bad(f"must be at most {f.max_length} characters")
            items = [item for item in re.split(r"[\s,;]+", value) if item]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = [item.strip() for item in value if item.strip()]
        else:
            raise _Bad("must be a list of domains")
        domains = []
        for item in items:
            domain = normalised_domain(item)
            if domain not in domains:
                domains.append(domain)
        return domains or None
    if f.kind == MAILBOX:
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Bad("must be a mailbox id")
        mailbox = get_in_partition(Mailbox, value, partition_id)
        if mailbox is None:
            raise _Bad("is not a mailbox of this partition")
        return mailbox.id
    text = _text(value, f)
    if f.kind == CHOICE:
        if text and text not in {choice for choice, _ in f.choices}:
            raise _Bad("must be one of " + ", ".join(choice for choice, _ in f.choices))
        return text
    if f.kind == ADDRESS:
        if text:
            try:
                text = parse_addr_spec(text)
            except AddressError as error:
                raise _Bad(f"is not an e-mail address: {error}") from None
        return text
    if f.kind == URL:
        if text:
            parts = urlsplit(text)
            if parts.scheme not in ("http", "https") or not parts.hostname or " " in text:
                raise _Bad("must be an http or https URL")
            reason = outbound.oauth_url_reason(text)
            if reason:
                raise _Bad(reason)
        return text
    if f.kind == CHARSET:
        if not text:
            raise _Bad("is required")
        if not _CHARSET_NAME.match(text):
            raise _Bad("is not a character set name")
        try:
            "text".encode(text)
            codecs.getincrementaldecoder(text)
        except (LookupError, ValueError):
            raise _Bad("is not a character set Python knows") from None
        return text
    if f.name == "smtp_host" and text:
        host = text.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                normalised_domain(host)
            except _Bad:
                raise _Bad("is not a host name or address") from None
        reason = outbound.host_literal_reason(host)
        if reason:
            raise _Bad(f"is refused: {reason}")
    return text


def _check_secret(f: Field, value: str) -> str:
    if "\x00" in value:
        raise _Bad("must not contain NUL characters")
    if len(value) > f.max_length:
        raise _Bad(f"must be at most {f.max_length} characters")
    if f.kind == SECRET_JSON:
        try:
            key = json.loads(value)
        except ValueError:
            raise _Bad("must be a JSON service-account key") from None
        if not isinstance(key, dict) or (key.get("type", "service_account") != "service_account"):
            raise _Bad("must be a JSON service-account key")
        missing = [name for name in ("client_email", "private_key")
                   if not isinstance(key.get(name), str) or not key[name].strip()]
        if missing:
            raise _Bad("must be a JSON service-account key with " + " and ".join(missing))
    return value


def validate_settings(settings: MailSenderSettings, submitted: dict) -> Validation:
    """Merges a (partial) submission into the saved row and checks the result; changes nothing.

    Fields it does not name keep their saved values; read-only fields are ignored, but a
    `version` other than the saved one is a conflict. Every bad field is reported at once,
    keyed by API name. A blank secret keeps the stored one; `clear_secrets` removes one.
    """
    result = Validation()
    if "version" in submitted and submitted["version"] not in (None, ""):
        version = submitted["version"]
        if isinstance(version, str) and version.strip().isdigit():
            version = int(version)
        if isinstance(version, bool) or not isinstance(version, int):
            result.errors["version"] = "must be a whole number"
            return result
        if version != settings.version:
            result.conflict = changes_since(settings.partition_id, version)
            return result

    for name in submitted:
        if name not in FIELDS_BY_NAME and name != "clear_secrets" and name not in READ_ONLY_FIELDS \
                and not name.endswith("_set"):
            result.errors[name] = "is not a setting"

    clear = submitted.get("clear_secrets") or []
    if not isinstance(clear, list) or not all(isinstance(name, str) for name in clear):
        result.errors["clear_secrets"] = "must be a list of secret field names"
        clear = []
    elif unknown := [name for name in clear if name not in SECRET_FIELDS]:
        result.errors["clear_secrets"] = "names no secret: " + ", ".join(unknown)

    stored = secrets_set(settings)
    values = saved_values(settings)
    for f in FIELDS:
        if f.name not in submitted:
            continue
        value = submitted[f.name]
        try:
            if f.kind in SECRET_KINDS:
                if value is not None and not isinstance(value, str):
                    raise _Bad("must be text")
                if value:
                    result.secrets[f.name] = _check_secret(f, value)
            else:
                values[f.name] = _coerce(f, value, settings.partition_id)
        except _Bad as bad:
            result.errors[f.name] = str(bad)
    for name in clear:
        if name in SECRET_FIELDS and name not in result.secrets:
            result.secrets[name] = None
    has_secret = {name: (result.secrets[name] is not None) if name in result.secrets else stored[name]
                  for name in SECRET_FIELDS}

    _check_rules(values, has_secret, result)
    result.values = values
    if result.errors:
        return result

    result.changed = [f.name for f in FIELDS if _changes(f, settings, values, result.secrets)]
    result.warnings = _warnings(settings, values)
    return result


def _check_rules(values: dict, has_secret: dict, result: Validation) -> None:
    """The rules between fields: what the toggles require, and how credentials may travel."""
    errors = result.errors

    def need(name: str, why: str = "is required") -> None:
        errors.setdefault(name, why)

    for name in ("smtp_host", "smtp_port", "default_charset"):
        if values.get(name) in (None, ""):
            need(name)
    if values["smtp_auth"]:
        if not values["smtp_username"]:
            need("smtp_username", "is required with Use SMTP Auth")
        if not has_secret["smtp_password"]:
            need("smtp_password", "is required with Use SMTP Auth")
    if values["oauth2_enabled"]:
        for name in ("oauth2_provider", "oauth2_grant", "smtp_username", "oauth2_client_id", "oauth2_token_url"):
            if not values[name]:
                need(name, "is required with Use OAuth2 SMTP")
        grant = values["oauth2_grant"]
        if grant == "client_credentials" and not has_secret["oauth2_client_secret"]:
            need("oauth2_client_secret", "is required for the client credentials grant")
        if grant == "authorization_code" and not values["oauth2_authorization_url"]:
            need("oauth2_authorization_url", "is required for the authorization code grant")
        if grant == "service_account" and not has_secret["oauth2_service_account_key"]:
            need("oauth2_service_account_key", "is required for the service account grant")
    if values["smtp_ssl"] and not ssl_allowed():
        need("smtp_ssl", "is not allowed on this instance (MAILSENDER_SSL_ALLOWED is off)")
    if values["smtp_ssl"] and values["smtp_starttls"]:
        need("smtp_ssl", "and Use SMTP TLS exclude each other: choose one")
    if (values["smtp_auth"] or values["oauth2_enabled"]) and not (values["smtp_starttls"] or values["smtp_ssl"]) \
            and values.get("smtp_host") and not _is_loopback(values["smtp_host"]):
        need("smtp_starttls", "or Secure SMTP (SSL) is required with Auth or OAuth2: credentials never "
                              "cross a network in plain text (only a loopback server is exempt)")


def _changes(f: Field, settings: MailSenderSettings, values: dict, secrets: dict) -> bool:
    if f.kind in SECRET_KINDS:
        if f.name not in secrets:
            return False
        stored = getattr(settings, _stored_secret_column(f.name))
        if secrets[f.name] is None:
            return stored is not None
        return decrypt_secret(stored) != secrets[f.name]
    return getattr(settings, f.name) != values[f.name]


def _warnings(settings: MailSenderSettings, values: dict) -> list[dict]:
    found = []
    log_address = (values.get("log_email_address") or "").lower()
    if log_address and log_address in {m.address.lower() for m in partition_mailboxes(settings.partition_id)}:
        found.append({"field": "log_email_address",
                      "message": "The log address is one of our own mailboxes: each copy will come back as incoming mail."})
    if values.get("training_enabled"):
        found.append({"field": "training_enabled",
                      "message": "Training mode is on: no mail leaves the company; work with staged customers only."})
    if values.get("oauth2_enabled") and values.get("oauth2_grant") == "authorization_code" \
            and not settings.oauth2_refresh_token_enc:
        found.append({"field": "oauth2_grant",
                      "message": "No authorization yet: an administrator must consent before mail can be sent."})
    return found


# --- saving -------------------------------------------------------------------------------


def changes_since(partition_id: int, version: int) -> dict[str, str]:
    """API name → who changed it, for every field saved after `version` (from the audit trail)."""
    events = db.session.scalars(
        select(AuditEvent)
        .where(AuditEvent.partition_id == partition_id, AuditEvent.action == AUDIT_ACTION)
        .order_by(AuditEvent.id.desc())
        .limit(200)
    )
    changed: dict[str, str] = {}
    for event in events:
        details = event.details or {}
        if not isinstance(details.get("version"), int) or details["version"] <= version:
            continue
        for name in details.get("fields", []):
            changed.setdefault(name, f"changed by {event.actor or 'someone'} at {event.at:%Y-%m-%d %H:%M:%S} UTC "
                                     f"(version {details['version']})")
    return changed or {"version": "the settings were saved by someone else meanwhile"}


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
            setattr(settings, _stored_secret_column(name), encrypt_secret(plain) if plain is not None else None)
            details[name] = "changed" if plain is not None else "cleared"
        else:
            details[name] = {"from": _audit_value(getattr(settings, name)), "to": _audit_value(result.values[name])}
            setattr(settings, name, result.values[name])
    settings.version = old_version + 1
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
