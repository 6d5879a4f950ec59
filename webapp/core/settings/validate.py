"""Checking a submission of the Mail Sender parameters, for the form and the API alike."""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Collection
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import select

from .. import outbound
from ..addresses import AddressError, parse_addr_spec
from ..database import db
from ..directory.lookups import get_in_partition, parse_id, partition_mailboxes
from ..models import INTEGER_MAX, AuditEvent, Mailbox, MailSenderSettings
from ..security import decrypt_secret
from .fields import (
    ADDRESS,
    BOOL,
    CHARSET,
    CHOICE,
    DOMAINS,
    FIELDS,
    FIELDS_BY_NAME,
    INT,
    MAILBOX,
    MIME_CHARSETS,
    READ_ONLY_FIELDS,
    REFRESH_TOKEN_DESTINATIONS,
    SECRET_DESTINATIONS,
    SECRET_FIELDS,
    SECRET_JSON,
    SECRET_KINDS,
    URL,
    Field,
    saved_values,
    secret_column,
    secrets_set,
)

AUDIT_ACTION = "settings.update"


def ssl_allowed() -> bool:
    return bool(current_app.config["MAILSENDER_SSL_ALLOWED"])


@dataclass
class Validation:
    """What the validator made of a submission: errors, or the new values with warnings."""

    values: dict = field(default_factory=dict)  # every non-secret parameter after the merge
    secrets: dict = field(default_factory=dict)  # secret name → new plain value, or None to clear
    errors: dict = field(default_factory=dict)  # API name → why
    warnings: list = field(default_factory=list)  # [{"field", "message"}]
    changed: list = field(default_factory=list)  # API names whose value changes, in table order
    conflict: dict | None = None  # on an old version: API name → who changed it since
    drop_refresh_token: bool = False  # the stored consent was for another Token URL
    saved: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and self.conflict is None


class _Bad(ValueError):
    pass


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalised_domain(text: str) -> str:
    """The domain in lower-case ASCII, checked with the same rules as an address's domain (no DNS)."""
    try:
        return parse_addr_spec("postmaster@" + text.rstrip(".")).partition("@")[2]
    except AddressError:
        raise _Bad(f"{text!r} is not a domain name") from None


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
        if value > INTEGER_MAX:
            raise _Bad(f"must be at most {INTEGER_MAX}")
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
                raise _Bad(_address_reason(text, error)) from None
        return text
    if f.kind == URL:
        if text:
            try:
                parts = urlsplit(text)
                parts.hostname  # an unclosed [ of an IPv6 literal is refused only here
            except ValueError:
                raise _Bad("must be an http or https URL") from None
            if parts.scheme not in ("http", "https") or not parts.hostname or " " in text:
                raise _Bad("must be an http or https URL")
            reason = outbound.oauth_url_reason(text)
            if reason:
                raise _Bad(reason)
        return text
    if f.kind == CHARSET:
        if not text:
            raise _Bad("is required")
        known = {name.lower(): name for name in MIME_CHARSETS}
        if text.lower() not in known:
            raise _Bad("is not a MIME character set for mail (such as UTF-8, ISO-8859-15, windows-1252, "
                       "KOI8-R, Shift_JIS)")
        return known[text.lower()]
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
    if f.name == "smtp_ehlo_name" and text:
        # It goes on the EHLO line as it is: a domain, or an address literal ([192.0.2.1]).
        try:
            if text.startswith("[") and text.endswith("]"):
                ipaddress.ip_address(text[1:-1].removeprefix("IPv6:"))
            else:
                normalised_domain(text)
        except (ValueError, _Bad):
            raise _Bad("is not a host name (such as mail.example.com) or an address literal ([192.0.2.1])") from None
    return text


def _check_secret(f: Field, value: str) -> str:
    if "\x00" in value:
        raise _Bad("must not contain NUL characters")
    if len(value) > f.max_length:
        raise _Bad(f"must be at most {f.max_length} characters")
    if len(value) < f.min_length:
        raise _Bad(f"must be at least {f.min_length} characters")
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


def validate_settings(settings: MailSenderSettings, submitted: dict,
                      only: Collection[str] | None = None) -> Validation:
    """Merges a (partial) submission into the saved row and checks the result; changes nothing.

    Fields it does not name keep their saved values; read-only fields are ignored, but a
    `version` other than the saved one is a conflict when a field the submission names was saved
    since (or what was saved since is not known): a save of other fields meanwhile (the Monitor's
    settings, say) is no conflict. Every bad field is reported at once, keyed by API name, in
    the table's order. A blank secret keeps the stored one; `clear_secrets` removes one.
    With `only`, the submitted parameters outside it keep their saved values whatever was
    submitted for them (the Test tries the SMTP fields alone); a name that is no setting is
    still an error.
    """
    if only is not None:
        submitted = {name: value for name, value in submitted.items()
                     if name in only or name not in FIELDS_BY_NAME}
        if "clear_secrets" in submitted and isinstance(submitted["clear_secrets"], list):
            submitted["clear_secrets"] = [name for name in submitted["clear_secrets"] if name in only]
    result = Validation()
    if "version" in submitted and submitted["version"] not in (None, ""):
        version = submitted["version"]
        if isinstance(version, str) and parse_id(version) is not None:
            version = parse_id(version)
        if isinstance(version, bool) or not isinstance(version, int):
            result.errors["version"] = "must be a whole number"
            return result
        if version != settings.version:
            since = changes_since(settings.partition_id, version, settings.version)
            if "version" in since or since.keys() & _named(submitted):
                result.conflict = since
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
    notes = _bind_stored_secrets(settings, values, stored, result)
    has_secret = {name: (result.secrets[name] is not None) if name in result.secrets else stored[name]
                  for name in SECRET_FIELDS}

    _check_rules(values, has_secret, result)
    result.values = values
    result.errors = _in_table_order(result.errors)
    if result.errors:
        return result

    result.changed = [f.name for f in FIELDS if _changes(f, settings, values, result.secrets)]
    result.warnings = notes + _warnings(settings, values)
    return result


def _named(submitted: dict) -> set[str]:
    """The parameters a submission would change: those it names, except a secret left blank
    (which keeps the stored one), and the secrets it clears."""
    named = {name for name, value in submitted.items()
             if name in FIELDS_BY_NAME and not (FIELDS_BY_NAME[name].kind in SECRET_KINDS and not value)}
    clear = submitted.get("clear_secrets")
    if isinstance(clear, list):
        named.update(name for name in clear if isinstance(name, str))
    return named


def _in_table_order(errors: dict) -> dict:
    """The errors in the order of FIELDS, which is the form's; names that are no field come last."""
    order = {name: i for i, name in enumerate(FIELDS_BY_NAME)}
    return dict(sorted(errors.items(), key=lambda item: order.get(item[0], len(order))))


def _address_reason(value: str, error: AddressError) -> str:
    """Why a typed address is refused, said once: the parser's text already names the value and
    often says "is not an e-mail address" itself."""
    said = str(error).rstrip(".")
    shown = repr(value.strip())
    if not said.startswith(shown):
        return f"is not an e-mail address: {said}"
    rest = said[len(shown):].strip()
    if rest.startswith("is not an e-mail address"):
        rest = rest[len("is not an e-mail address"):].strip()
        return f"is not an e-mail address: {shown}{' ' + rest if rest else ''}"
    return f"is not an e-mail address: {shown} {rest}"


def _bind_stored_secrets(settings: MailSenderSettings, values: dict, stored: dict, result: Validation) -> list[dict]:
    """A stored secret is only ever sent where it was saved for (SECRET_DESTINATIONS): were it not,
    an administrator could point a Test at a server of their own and read the password there.

    Where a destination changes and the secret is not typed again, a secret the new values use
    is an error on its field; one they do not use is removed, so that it cannot follow later.
    Answers the warnings that say what was removed.
    """
    notes = []
    for name, destinations in SECRET_DESTINATIONS.items():
        moved = _moved(settings, values, destinations)
        if not stored[name] or name in result.secrets or not moved:
            continue
        label = FIELDS_BY_NAME[name].label
        if _uses_secret(name, values):
            result.errors.setdefault(name, f"must be typed again: {moved} changed, and a stored secret is only "
                                           "ever sent where it was saved for")
        else:
            result.secrets[name] = None
            notes.append({"field": name, "message": f"The stored {label} is removed: {moved} changed, and a "
                                                    "stored secret is only ever sent where it was saved for."})
    moved = _moved(settings, values, REFRESH_TOKEN_DESTINATIONS)
    if settings.oauth2_refresh_token_enc and moved:
        result.drop_refresh_token = True
        notes.append({"field": "oauth2_token_url", "message": f"The stored authorization is removed: {moved} "
                                                              "changed; an administrator must consent again."})
    return notes


def _moved(settings: MailSenderSettings, values: dict, destinations: tuple[str, ...]) -> str:
    """The labels of the destinations whose values differ from the saved ones ("" when none does)."""
    def same(saved, new) -> bool:
        # Host names and URLs' hosts are case-blind; a port is a number either way.
        return (saved or "").lower() == (new or "").lower() if isinstance(saved or new, str) else saved == new

    return " and ".join(FIELDS_BY_NAME[d].label for d in destinations if not same(getattr(settings, d), values[d]))


def _uses_secret(name: str, values: dict) -> bool:
    """Whether the values would send the secret `name` anywhere."""
    if name == "smtp_password":
        return bool(values["smtp_auth"]) and not values["oauth2_enabled"]
    if name == "webhook_secret":
        return bool(values["webhook_url"])
    grant = values["oauth2_grant"] if values["oauth2_enabled"] else None
    if name == "oauth2_client_secret":
        return grant in ("client_credentials", "authorization_code")
    return grant == "service_account"


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
        for name in ("oauth2_provider", "oauth2_grant", "smtp_username", "oauth2_token_url"):
            if not values[name]:
                need(name, "is required with Use OAuth2 SMTP")
        grant = values["oauth2_grant"]
        # A service account identifies itself by its key; the other grants by the client ID.
        if grant != "service_account" and not values["oauth2_client_id"]:
            need("oauth2_client_id", "is required with Use OAuth2 SMTP")
        if grant == "client_credentials" and not has_secret["oauth2_client_secret"]:
            need("oauth2_client_secret", "is required for the client credentials grant")
        if grant == "authorization_code" and not values["oauth2_authorization_url"]:
            need("oauth2_authorization_url", "is required for the authorization code grant")
        if grant == "service_account" and not has_secret["oauth2_service_account_key"]:
            need("oauth2_service_account_key", "is required for the service account grant")
    if values["webhook_url"] and not has_secret["webhook_secret"]:
        need("webhook_secret", "is required with a Monitor webhook URL: every call is signed with it")
    if values["smtp_ssl"] and not ssl_allowed():
        need("smtp_ssl", "is not allowed on this instance (MAILSENDER_SSL_ALLOWED is off)")
    if values["smtp_ssl"] and values["smtp_starttls"]:
        need("smtp_ssl", "and Use SMTP TLS exclude each other: choose one")
    if (values["smtp_auth"] or values["oauth2_enabled"]) and values.get("smtp_host") and not \
            outbound.may_send_credentials(values["smtp_host"], tls=values["smtp_starttls"] or values["smtp_ssl"]):
        need("smtp_starttls", "or Secure SMTP (SSL) is required with Auth or OAuth2: credentials never "
                              "cross a network in plain text (only a loopback server is exempt)")


def _changes(f: Field, settings: MailSenderSettings, values: dict, secrets: dict) -> bool:
    if f.kind in SECRET_KINDS:
        if f.name not in secrets:
            return False
        stored = getattr(settings, secret_column(f.name))
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


def changes_since(partition_id: int, version: int, current: int | None = None) -> dict[str, str]:
    """API name → who changed it, for every field saved after `version` (from the audit trail).

    With the `current` version, a version between the two that the trail does not account for
    (saved by no audited save) is named as "version": what changed then is not known.
    """
    events = db.session.scalars(
        select(AuditEvent)
        .where(AuditEvent.partition_id == partition_id, AuditEvent.action == AUDIT_ACTION)
        .order_by(AuditEvent.id.desc())
        .limit(200)
    )
    changed: dict[str, str] = {}
    accounted = set()
    for event in events:
        details = event.details or {}
        if not isinstance(details.get("version"), int) or details["version"] <= version:
            continue
        accounted.add(details["version"])
        for name in details.get("fields", []):
            changed.setdefault(name, f"changed by {event.actor or 'someone'} at {event.at:%Y-%m-%d %H:%M:%S} UTC "
                                     f"(version {details['version']})")
    if not changed or current is not None and len(accounted) < current - version:
        changed["version"] = "the settings were saved by someone else meanwhile"
    return changed
