"""The Test button: tries SMTP settings against the real server, stage by stage, sending nothing.

1. connect; 2. TLS (STARTTLS or implicit, certificates verified; a failed STARTTLS never falls
back to plain text); 3. EHLO with the server's capabilities; 4. AUTH (PLAIN or LOGIN as
offered) or XOAUTH2 with a freshly fetched token; 5. MAIL FROM and RCPT TO, from and to one
address, then RSET. There is never a DATA, so nothing can be delivered.

`ok` means stages 1 to 4 passed. A refusal at stage 5 is a step and a warning: relays often
refuse an address of their own as a recipient. `summary` says in words what was tried and how it
went: a pass names what was used and what was not (no TLS, no login), a failure what went wrong
("Nothing is listening on 127.0.0.1 port 8499 (connection refused)"); `message` keeps the raw text. Each command waits at most the instance's
command timeout and a token request the token timeout, as when sending (MAILSENDER_SMTP_COMMAND_TIMEOUT,
MAILSENDER_OAUTH_TIMEOUT); the "SMTP server timeout" parameter is idle time, which a Test has none of.
No credential ever appears in the result: every secret the run knew is scrubbed from it.

`run_smtp_test` is the Test button and POST /api/v1/mail-sender/test: the values tried are the
saved settings with the submitted SMTP and OAuth2 ones (TESTED_FIELDS) merged in (a blank
secret means the stored one), validated as Save validates them; the other fields are not looked
at, so a mistake elsewhere in the form does not stop a Test. Nothing is saved. Each run is an AuditEvent
"mailsender.test", and those events are the rate limit's count, so the limit holds however
many processes or nodes serve the same administrator.
"""
from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Callable

import aiosmtplib
from aiosmtplib import SMTPException, SMTPResponseException, SMTPServerDisconnected
from flask import current_app
from sqlalchemy import func, select

from webapp.core import audit, route_state
from webapp.core.addresses import AddressError, parse_addr_spec
from webapp.core.clock import utcnow
from webapp.core.database import db
from webapp.core.directory.lookups import get_in_partition
from webapp.core.models import AuditEvent, Mailbox, User
from webapp.core.refusal import Refusal
from webapp.core.security import Scrubber, decrypt_secret
from webapp.core.settings.fields import SECRET_FIELDS, secret_column
from webapp.core.settings.store import get_settings
from webapp.core.settings.validate import validate_settings

from . import oauth
from .connection_words import NO_SUCH_HOST, REFUSED, UNREACHABLE, UNTRUSTED, connection_failure
from .oauth import OAuthTokenUnavailable, Token
from .smtp.session import SessionError, SmtpConfig, Step, describe_error, open_session

STAGE_LABELS = {"connect": "Connect", "tls": "TLS", "ehlo": "EHLO", "auth": "AUTH", "mail": "MAIL FROM",
                "rcpt": "RCPT TO", "rset": "RSET"}
# The stages of stage 5: a refusal there is a warning, not a failure.
ENVELOPE_STAGES = ("mail", "rcpt", "rset")
# The fields a Test tries: the SMTP and OAuth2 settings, and the Default From (stage 5's address
# when the SMTP user is none). Errors in any other field do not stop a Test.
TESTED_FIELDS = (
    "smtp_host", "smtp_port", "smtp_timeout_seconds", "smtp_ehlo_name", "smtp_starttls", "smtp_auth",
    "smtp_username", "smtp_password", "smtp_ssl", "oauth2_enabled", "oauth2_provider", "oauth2_grant",
    "oauth2_authorization_url", "oauth2_token_url", "oauth2_client_id", "oauth2_client_secret",
    "oauth2_service_account_key", "origination_from_mailbox_id",
)


@dataclass
class CheckResult:
    """What the Test found: the API's {ok, stage, code, message, steps}, the warnings, the summary
    in words, and the stages the settings do not use (`skipped`: passed steps that say "not used")."""

    ok: bool
    stage: str
    code: int | None
    message: str
    steps: list[Step]
    warnings: list[str] = field(default_factory=list)
    summary: str = ""
    skipped: tuple[str, ...] = ()
    # A refresh token the token server rotated during the run: the caller stores it.
    rotated_refresh_token: str | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {
            "ok": self.ok, "stage": self.stage, "code": self.code, "message": self.message,
            "steps": [{"stage": s.stage, "ok": s.ok, "code": s.code, "message": s.message,
                       "skipped": s.stage in self.skipped} for s in self.steps],
            "warnings": list(self.warnings), "summary": self.summary,
        }


def run_check(config: SmtpConfig, envelope_address: str | None,
              fetch_token: Callable[[], Token] | None = None, secrets: list[str] = (),
              token_timeout: float | None = None) -> CheckResult:
    """Runs the Test on an event loop of its own and answers its result (blocking).

    `fetch_token` gets a fresh XOAUTH2 token (blocking; it runs in a worker thread, and is given
    `token_timeout` seconds); `secrets` are values to scrub from every message, besides the
    password and the token.
    """
    run = partial(asyncio.run, check(config, envelope_address, fetch_token, secrets, token_timeout))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # This thread already runs a loop (an embedding server, Playwright's sync API): use another.
    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(run).result()


async def check(config: SmtpConfig, envelope_address: str | None,
                fetch_token: Callable[[], Token] | None = None, secrets: list[str] = (),
                token_timeout: float | None = None) -> CheckResult:
    """The Test's stages against `config`; see the module's docstring."""
    fetched: list[Token] = []

    async def token_source() -> str:
        if fetch_token is None:
            raise OAuthTokenUnavailable("no OAuth2 configuration")
        try:
            token = await asyncio.wait_for(asyncio.to_thread(fetch_token), timeout=token_timeout)
        except asyncio.TimeoutError:
            raise OAuthTokenUnavailable(f"the token server did not answer within {token_timeout:g} s") from None
        fetched.append(token)
        return token.access_token

    try:
        smtp, steps = await open_session(config, token_source if config.oauth2 else None)
    except SessionError as error:
        steps = _with_skipped(error.steps, config)
        result = CheckResult(False, error.stage, error.code, error.message, steps,
                             summary=failure_in_words(error, config), skipped=_skipped(steps))
    else:
        steps = _with_skipped(steps, config)
        warnings = await _envelope(smtp, envelope_address, steps)
        await _quit(smtp)
        summary = pass_in_words(config, steps, envelope_address)
        refused = next((s for s in steps if not s.ok), None)
        if refused is not None:
            result = CheckResult(True, refused.stage, refused.code, refused.message, steps, warnings,
                                 summary=summary, skipped=_skipped(steps))
        else:
            last = steps[-1]
            result = CheckResult(True, last.stage, last.code, summary, steps, summary=summary,
                                 skipped=_skipped(steps))
    if fetched and fetched[-1].refresh_token:
        result.rotated_refresh_token = fetched[-1].refresh_token
    tokens = [*(t.access_token for t in fetched), *(t.refresh_token for t in fetched)]
    return _scrubbed(result, config.scrubber([*tokens, *secrets]))


NOT_USED = "not used: "


def _skipped(steps: list[Step]) -> tuple[str, ...]:
    return tuple(s.stage for s in steps if s.ok and s.message.startswith(NOT_USED))


def _with_skipped(steps: list[Step], config: SmtpConfig) -> list[Step]:
    """Adds the stages the settings do not use, as passed steps that say so."""
    steps = list(steps)
    reached = {s.stage for s in steps}
    if "tls" not in reached and not (config.starttls or config.ssl) and "ehlo" in reached:
        at = next(i for i, s in enumerate(steps) if s.stage == "ehlo")
        steps.insert(at, Step("tls", True, None, NOT_USED + "Use SMTP TLS and Secure SMTP (SSL) are off"))
    if not config.auth and steps and steps[-1].ok and steps[-1].stage == "ehlo":
        steps.append(Step("auth", True, None, NOT_USED + "Use SMTP Auth and Use OAuth2 SMTP are off"))
    return steps


async def _envelope(smtp: aiosmtplib.SMTP, address: str | None, steps: list[Step]) -> list[str]:
    """Stage 5: MAIL FROM and RCPT TO `address`, then RSET; answers the warnings."""
    if not address:
        text = "no address to try MAIL FROM and RCPT TO with: the SMTP user is no e-mail address and there is no Default From"
        steps.append(Step("mail", False, None, text))
        return [f"MAIL FROM / RCPT TO not tried: {text}"]
    warnings = []
    mail_ok = await _command(steps, "mail", smtp.mail(address), f"MAIL FROM:<{address}>", warnings)
    if mail_ok:
        await _command(steps, "rcpt", smtp.rcpt(address), f"RCPT TO:<{address}>", warnings)
    await _command(steps, "rset", smtp.rset(), "RSET", warnings)
    return warnings


async def _command(steps: list[Step], stage: str, call, shown: str, warnings: list[str]) -> bool:
    try:
        response = await call
    except SMTPResponseException as error:
        steps.append(Step(stage, False, error.code, f"{shown}: {error.message}"))
        warnings.append(f"{shown} refused: {error.code} {error.message}")
        return False
    except (SMTPException, OSError, asyncio.TimeoutError) as error:
        steps.append(Step(stage, False, None, f"{shown}: {describe_error(error)}"))
        warnings.append(f"{shown} failed: {describe_error(error)}")
        return False
    steps.append(Step(stage, True, response.code, f"{shown}: {response.message}"))
    return True


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(smtp.quit(), timeout=5)
    except (SMTPException, OSError, asyncio.TimeoutError):
        smtp.close()


def pass_in_words(config: SmtpConfig, steps: list[Step], address: str | None) -> str:
    """What a passing Test tried, stage by stage, naming what the settings leave out."""
    passed = {s.stage: s for s in steps if s.ok}
    parts = [f"Connected to {config.host} port {config.port}, EHLO answered"]
    tls = passed.get("tls")
    version = re.search(r"TLSv[\d.]+", tls.message) if tls else None
    if config.ssl:
        parts.append("TLS from the first byte (Secure SMTP)" + (f", {version[0]}" if version else ""))
    elif config.starttls:
        parts.append("TLS by STARTTLS" + (f", {version[0]}" if version else ""))
    else:
        parts.append("no TLS (not enabled)")
    if config.oauth2:
        parts.append(f"logged in as {config.username} with an OAuth2 token (XOAUTH2)")
    elif config.auth:
        mechanism = re.search(r"AUTH (PLAIN|LOGIN)", passed["auth"].message) if "auth" in passed else None
        parts.append(f"logged in as {config.username}" + (f" (AUTH {mechanism[1]})" if mechanism else ""))
    else:
        parts.append("no login (AUTH not enabled)")
    if not address:
        parts.append("MAIL FROM and RCPT TO not tried (no address to try them with)")
    elif all(stage in passed for stage in ("mail", "rcpt")):
        parts.append(f"MAIL FROM and RCPT TO <{address}> accepted")
    else:
        parts.append(f"MAIL FROM / RCPT TO <{address}> refused (see the warning)")
    return "; ".join(parts) + ". Nothing was sent."


def _causes(error: BaseException):
    """The exceptions behind a SessionError: what was raised while it was made, and their causes."""
    seen, cause = [], error.__context__
    while cause is not None and cause not in seen and len(seen) < 8:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return seen


def failure_in_words(error: SessionError, config: SmtpConfig) -> str:
    """Why a Test failed, as a person would say it; the raw text stays in the result's message."""
    where = f"{config.host} port {config.port}"
    stage = STAGE_LABELS.get(error.stage, error.stage)
    causes = _causes(error)

    def found(kind):
        return next((cause for cause in causes if isinstance(cause, kind)), None)

    if found(ConnectionRefusedError):
        return connection_failure(REFUSED, config.host, config.port) + ". Check the SMTP server and port."
    if found(socket.gaierror):
        return connection_failure(NO_SUCH_HOST, config.host) + ". Check the SMTP server's name."
    certificate = found(ssl.SSLCertVerificationError)
    if certificate is not None:
        why = getattr(certificate, "verify_message", "") or "not verified"
        return (connection_failure(UNTRUSTED, config.host, config.port, why) + ". The server must present a "
                "certificate for this name from an authority this node trusts (or set MAILSENDER_SMTP_CA_FILE).")
    handshake = found(ssl.SSLError)
    if handshake is not None:
        return f"The TLS handshake with {where} failed ({getattr(handshake, 'reason', None) or handshake})."
    if found(TimeoutError) or found(asyncio.TimeoutError):
        if error.stage == "connect":
            return (f"The server at {where} did not answer within {config.command_timeout:g} s: the host may be "
                    "down, or a firewall drops the connection.")
        return f"The server at {where} stopped answering at {stage} (nothing within {config.command_timeout:g} s)."
    unreachable = next((c for c in causes if isinstance(c, OSError)
                        and c.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)), None)
    if unreachable is not None:
        return connection_failure(UNREACHABLE, config.host, config.port) + "."
    if found(SMTPServerDisconnected) or found(ConnectionResetError):
        return f"The server at {where} closed the connection at {stage} without an answer."
    if error.stage == "tls" and "does not offer STARTTLS" in error.message:
        return (f"The server at {where} does not offer TLS (no STARTTLS in its EHLO answer). Use the port "
                "that offers it (often 587), or Secure SMTP (SSL) on port 465.")
    if error.stage == "auth" and error.code in (530, 534, 535, 538):
        what = "the OAuth2 token" if config.oauth2 else "the SMTP user and password"
        return (f"The server refused the login of {config.username or 'the SMTP user'} ({error.code}). "
                f"Check {what}.")
    if error.code:
        return f"The server refused {stage} with {error.code}: {error.message}"
    return f"Failed at {stage}: {error.message}"


def _scrubbed(result: CheckResult, clean: Scrubber) -> CheckResult:
    result.message = clean(result.message)
    result.summary = clean(result.summary)
    result.steps = [replace(s, message=clean(s.message)) for s in result.steps]
    result.warnings = [clean(w) for w in result.warnings]
    return result

TEST_ACTION = "mailsender.test"
REFUSED_ACTION = "mailsender.test_refused"  # a run over the limit: audited, not counted
WINDOW_SECONDS = 60


class CheckRefused(Refusal):
    """The Test did not run: invalid values (422, fields named) or too many runs (429, retry_after)."""


def run_smtp_test(user: User, submitted: dict) -> CheckResult:
    """Tests the saved settings with `submitted` merged in; raises CheckRefused when it may not run.

    Commits: the audit event of the run (and a refresh token the token server rotated).
    """
    settings = get_settings(user.partition_id)
    # A Test saves nothing, so an older version in the form is no conflict.
    candidate = {name: value for name, value in submitted.items() if name != "version"}
    validation = validate_settings(settings, candidate, only=TESTED_FIELDS)
    if validation.errors:
        raise CheckRefused(422, "Some settings are not valid; nothing was tested.", validation.errors)
    values = validation.values

    secrets = {name: (validation.secrets[name] if name in validation.secrets
                      else decrypt_secret(getattr(settings, secret_column(name)))) for name in SECRET_FIELDS}
    smtp_config = SmtpConfig.from_values(values, secrets["smtp_password"], current_app.config)
    fetch_token, hidden = None, [value for value in secrets.values() if value]
    stored_refresh = None if validation.drop_refresh_token else decrypt_secret(settings.oauth2_refresh_token_enc)
    if values["oauth2_enabled"]:
        oauth_config = oauth.OAuthConfig.from_values(values, secrets, stored_refresh, oauth.token_timeout())
        fetch_token, hidden = partial(oauth.fetch_token, oauth_config), hidden + oauth_config.secrets
    address = envelope_address(values, user.partition_id)

    event = audit.record(user, TEST_ACTION, partition_id=user.partition_id, target=settings,
                         host=values["smtp_host"], port=values["smtp_port"], outcome="running")
    db.session.commit()
    _within_limit(user, event)
    db.session.commit()  # no transaction (on SQLite: no write lock) is held while the servers answer

    result = run_check(smtp_config, address, fetch_token, hidden, oauth.token_timeout())

    if result.rotated_refresh_token and result.rotated_refresh_token != stored_refresh:
        oauth.store_refresh_token(user.partition_id, result.rotated_refresh_token)
    event.details = {**event.details, "outcome": "ok" if result.ok else "failed", "stage": result.stage,
                     "code": result.code, "warnings": len(result.warnings)}
    if result.ok and not validation.changed:
        # The saved settings work now (a password changed at the server, a certificate renewed):
        # a route paused for them resumes. Changed values resume it when they are saved.
        route_state.lift_pause(user.partition_id, user, "a Test of the saved settings passed")
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
    limit = int(current_app.config["MAILSENDER_TEST_RUNS_PER_MINUTE"])
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
