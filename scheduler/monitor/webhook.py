"""The monitor's webhook: each notification as a signed JSON POST, retried with backoff.

It is the channel that does not depend on the SMTP server the alerts are often about.

- The body is the notification as JSON (payload()); it is signed with the partition's webhook
  secret: X-MailSender-Signature is "sha256=" and the hex HMAC-SHA256 of the bytes
  `<X-MailSender-Timestamp> "." <body>`, the timestamp being the Unix time of the attempt, so a
  receiver can refuse a replayed call (signed_bytes(), signature()).
- The URL obeys the OAuth2 URLs' rules (webapp/core/outbound.py): https, plain http only to a
  server on loopback, no link-local or metadata address; checked when saved, again before each
  attempt on the addresses the name resolves to, and on the address actually connected to. No
  proxy, no redirect followed: a 3xx is a failure that names where it pointed.
- Attempts: the first when the notification is made (notifications.notify), bounded by a short
  timeout; a failure that may pass (no connection, a timeout, HTTP 408, 429 or 5xx) is tried
  again after 1, 2, 4, 8 product minutes (MAILSENDER_MINUTE_SECONDS), ATTEMPTS in all, by the
  monitor's webhook job on whichever node claims the attempt first (retry_due), never inside a
  round. Any other answer, or the last attempt's failure, is recorded as failed with its reason.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from flask import current_app
from sqlalchemy import select, update

from webapp.core import outbound
from webapp.core.clock import db_now, iso, minutes
from webapp.core.database import db
from webapp.core.models import MailSenderSettings, Notification, Partition
from webapp.core.security import Scrubber, decrypt_secret
from webapp.core.states import CHANNEL_FAILED, CHANNEL_OK, CHANNEL_PENDING

from ..checked_http import PeerCheckedAdapter

log = logging.getLogger("mailsender.monitor")

SIGNATURE_HEADER = "X-MailSender-Signature"
TIMESTAMP_HEADER = "X-MailSender-Timestamp"
NOTIFICATION_HEADER = "X-MailSender-Notification"
ATTEMPT_HEADER = "X-MailSender-Attempt"
# Attempts in all, the first included; the waits between them double from one product minute.
ATTEMPTS = 5
# Seconds to connect, and again to wait for the answer (MAILSENDER_WEBHOOK_TIMEOUT_SECONDS).
TIMEOUT_SECONDS = 5.0
# Answers worth trying again: the receiver may be back by then.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Due attempts one job run makes at most; the rest wait for the next run, seconds later.
BATCH = 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def signed_bytes(timestamp: str, body: bytes) -> bytes:
    """What the signature covers: the timestamp header's value, a dot, and the raw body."""
    return timestamp.encode("ascii") + b"." + body


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-MailSender-Signature value for this body sent at this timestamp."""
    digest = hmac.new(secret.encode("utf-8"), signed_bytes(timestamp, body), hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def payload(record: Notification) -> bytes:
    """The notification as the webhook receives it: its facts, then the named fields over them."""
    partition = db.session.scalar(select(Partition.name).where(Partition.id == record.partition_id))
    body = {**(record.facts or {}), "kind": record.kind, "partition": partition or str(record.partition_id),
            "subject": record.subject, "body": record.body, "created_at": iso(record.created_at),
            "notification_id": record.id}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass(frozen=True)
class Answer:
    """What one attempt came to: delivered, or why not and whether trying again may help."""

    ok: bool
    retry: bool = False
    code: int | None = None
    reason: str | None = None


def timeout_seconds() -> float:
    return float(current_app.config.get("MAILSENDER_WEBHOOK_TIMEOUT_SECONDS", TIMEOUT_SECONDS))


def url_refusal(url: str) -> str | None:
    """Why the webhook may not be called at this URL now, or None: the saved rule, then the
    addresses the name resolves to at this moment."""
    try:
        reason = outbound.oauth_url_reason(url)
        if reason:
            return f"the webhook URL {reason}"
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        outbound.check_resolved(parts.hostname, port)
    except ValueError as error:
        return f"the webhook URL is not valid: {error}"
    except outbound.OutboundRefused as refused:
        return str(refused)
    return None


def post(url: str, secret: str, body: bytes, *, attempt: int = 1, notification_id: int | None = None) -> Answer:
    """One signed POST of `body`; never raises. Follows no redirect and uses no proxy."""
    refused = url_refusal(url)
    if refused:
        return Answer(False, reason=refused)
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "MailSender-monitor",
               TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body),
               ATTEMPT_HEADER: str(attempt)}
    if notification_id is not None:
        headers[NOTIFICATION_HEADER] = str(notification_id)
    scrub = Scrubber([secret])
    timeout = timeout_seconds()
    with requests.Session() as session:
        session.trust_env = False  # no proxy: the address checked must be the address reached
        adapter = PeerCheckedAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            # allow_redirects=False: a 3xx comes back as it is (max_redirects=0 would raise instead).
            response = session.post(url, data=body, headers=headers, timeout=(timeout, timeout),
                                    allow_redirects=False)
        except outbound.OutboundRefused as refused:
            return Answer(False, reason=str(refused))
        except requests.Timeout:
            return Answer(False, retry=True, reason=f"the webhook did not answer within {timeout:g} s")
        except requests.RequestException as error:
            return Answer(False, retry=True, reason=f"the webhook could not be reached: {_root_cause(error)}")
        code = response.status_code
        if 200 <= code < 300:
            return Answer(True, code=code)
        if 300 <= code < 400:
            where = _clean(response.headers.get("Location", "") or "nowhere", 300)
            return Answer(False, code=code, reason=f"the webhook answered HTTP {code} (a redirect to {where}); "
                                                   "webhook calls follow no redirects")
        said = _clean(scrub(response.text or ""), 200)
        reason = f"the webhook answered HTTP {code} {response.reason or ''}".rstrip() + (f": {said}" if said else "")
        return Answer(False, retry=code in RETRY_STATUSES, code=code, reason=reason)


def _clean(text: str, limit: int) -> str:
    return _CONTROL.sub(" ", text).strip()[:limit]


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
        if isinstance(error, outbound.OutboundRefused):
            break
    return _clean(str(error) or type(error).__name__, 300)


def backoff_seconds(failed_attempts: int) -> float:
    """The wait before the next attempt after this many failed ones: 1, 2, 4 … product minutes."""
    return minutes(2 ** max(0, failed_attempts - 1)).total_seconds()


def _lease_seconds() -> float:
    """How long a claimed attempt is its node's: past it, a node that died mid-call is presumed gone."""
    return timeout_seconds() * 3 + 10


def attempt(notification_id: int, settings: MailSenderSettings) -> bool:
    """Makes the notification's due webhook attempt, if no other node has claimed it; whether this
    call made it. Commits.

    The claim is one compare-and-set UPDATE (due, and fewer than ATTEMPTS made) that counts the
    attempt and leases it; the outcome is written only under that claim.
    """
    table = Notification.__table__
    claimed = db.session.execute(
        update(table)
        .where(table.c.id == notification_id, table.c.webhook_status == CHANNEL_PENDING,
               table.c.webhook_next_at <= db_now(), table.c.webhook_attempts < ATTEMPTS)
        .values(webhook_attempts=table.c.webhook_attempts + 1, webhook_next_at=db_now(_lease_seconds()))
        .returning(table.c.webhook_attempts)).scalar()
    db.session.commit()
    if claimed is None:
        return False
    record = db.session.get(Notification, notification_id)
    url = settings.webhook_url
    secret = decrypt_secret(settings.webhook_secret_enc)
    if not url:
        answer = Answer(False, reason="the webhook URL was removed from the settings")
    elif not secret:
        answer = Answer(False, reason="no webhook secret is stored (or it was stored under another key)")
    else:
        answer = post(url, secret, payload(record), attempt=claimed, notification_id=notification_id)
    _record(notification_id, claimed, answer)
    return True


def _record(notification_id: int, attempts: int, answer: Answer) -> None:
    values: dict = {"webhook_code": answer.code}
    if answer.ok:
        values.update(webhook_status=CHANNEL_OK, webhook_error=None, webhook_next_at=None, webhook_done_at=db_now())
    elif answer.retry and attempts < ATTEMPTS:
        values.update(webhook_error=answer.reason, webhook_next_at=db_now(backoff_seconds(attempts)))
    else:
        reason = answer.reason if not answer.retry else f"{answer.reason} (gave up after {attempts} attempts)"
        values.update(webhook_status=CHANNEL_FAILED, webhook_error=reason, webhook_next_at=None,
                      webhook_done_at=db_now())
        log.warning("monitor: webhook for notification %s failed: %s", notification_id, reason)
    table = Notification.__table__
    db.session.execute(update(table).where(table.c.id == notification_id, table.c.webhook_status == CHANNEL_PENDING,
                                           table.c.webhook_attempts == attempts).values(**values))
    db.session.commit()


def retry_due(partition_id: int) -> int:
    """Makes the partition's due webhook attempts (at most BATCH); how many this call made.

    It writes nothing when nothing is due (it runs every few seconds on every node). An attempt
    whose node died after claiming the last one is given up here.
    """
    table = Notification.__table__
    due = (table.c.partition_id == partition_id, table.c.webhook_status == CHANNEL_PENDING,
           table.c.webhook_next_at <= db_now())
    rows = db.session.execute(select(table.c.id, table.c.webhook_attempts).where(*due)
                              .order_by(table.c.id).limit(BATCH)).all()
    db.session.rollback()
    if not rows:
        return 0
    exhausted = [row.id for row in rows if row.webhook_attempts >= ATTEMPTS]
    if exhausted:
        db.session.execute(update(table).where(*due, table.c.id.in_(exhausted)).values(
            webhook_status=CHANNEL_FAILED, webhook_next_at=None, webhook_done_at=db_now(),
            webhook_error=f"gave up after {ATTEMPTS} attempts: the node making the last one stopped answering"))
        db.session.commit()
    settings = db.session.scalars(select(MailSenderSettings)
                                  .where(MailSenderSettings.partition_id == partition_id)).first()
    if settings is None:
        return 0
    return sum(attempt(row.id, settings) for row in rows if row.id not in exhausted)
