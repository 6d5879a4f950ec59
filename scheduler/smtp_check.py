"""The Test button: tries SMTP settings against the real server, stage by stage, sending nothing.

1. connect; 2. TLS (STARTTLS or implicit, certificates verified; a failed STARTTLS never falls
back to plain text); 3. EHLO with the server's capabilities; 4. AUTH (PLAIN or LOGIN as
offered) or XOAUTH2 with a freshly fetched token; 5. MAIL FROM and RCPT TO, from and to one
address, then RSET. There is never a DATA, so nothing can be delivered.

`ok` means stages 1 to 4 passed. A refusal at stage 5 is a step and a warning: relays often
refuse an address of their own as a recipient. Each command waits at most the instance's
command timeout and a token request the token timeout, as when sending (MAILSENDER_SMTP_COMMAND_TIMEOUT,
MAILSENDER_OAUTH_TIMEOUT); the "SMTP server timeout" parameter is idle time, which a Test has none of.
No credential ever appears in the result: every secret the run knew is scrubbed from it.

`run_smtp_test` is the Test button and POST /api/v1/mail-sender/test: the values tried are the
saved settings with the submitted ones merged in (a blank secret means the stored one),
validated exactly as Save validates them; nothing is saved. Each run is an AuditEvent
"mailsender.test", and those events are the rate limit's count, so the limit holds however
many processes or nodes serve the same administrator.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Callable

import aiosmtplib
from aiosmtplib import SMTPException, SMTPResponseException
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
from .oauth import OAuthTokenUnavailable, Token
from .smtp.session import SessionError, SmtpConfig, Step, describe_error, open_session


@dataclass
class CheckResult:
    """What the Test found: the API's {ok, stage, code, message, steps} and the warnings."""

    ok: bool
    stage: str
    code: int | None
    message: str
    steps: list[Step]
    warnings: list[str] = field(default_factory=list)
    # A refresh token the token server rotated during the run: the caller stores it.
    rotated_refresh_token: str | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {
            "ok": self.ok, "stage": self.stage, "code": self.code, "message": self.message,
            "steps": [{"stage": s.stage, "ok": s.ok, "code": s.code, "message": s.message} for s in self.steps],
            "warnings": list(self.warnings),
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
        result = CheckResult(False, error.stage, error.code, error.message, steps)
    else:
        steps = _with_skipped(steps, config)
        warnings = await _envelope(smtp, envelope_address, steps)
        await _quit(smtp)
        refused = next((s for s in steps if not s.ok), None)
        if refused is not None:
            result = CheckResult(True, refused.stage, refused.code, refused.message, steps, warnings)
        else:
            last = steps[-1]
            result = CheckResult(True, last.stage, last.code, "every stage passed; nothing was sent", steps)
    if fetched and fetched[-1].refresh_token:
        result.rotated_refresh_token = fetched[-1].refresh_token
    tokens = [*(t.access_token for t in fetched), *(t.refresh_token for t in fetched)]
    return _scrubbed(result, config.scrubber([*tokens, *secrets]))


def _with_skipped(steps: list[Step], config: SmtpConfig) -> list[Step]:
    """Adds the stages the settings do not use, as passed steps that say so."""
    steps = list(steps)
    reached = {s.stage for s in steps}
    if "tls" not in reached and not (config.starttls or config.ssl) and "ehlo" in reached:
        at = next(i for i, s in enumerate(steps) if s.stage == "ehlo")
        steps.insert(at, Step("tls", True, None, "not used: Use SMTP TLS and Secure SMTP (SSL) are off"))
    if not config.auth and steps and steps[-1].ok and steps[-1].stage == "ehlo":
        steps.append(Step("auth", True, None, "not used: Use SMTP Auth and Use OAuth2 SMTP are off"))
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


def _scrubbed(result: CheckResult, clean: Scrubber) -> CheckResult:
    result.message = clean(result.message)
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
    validation = validate_settings(settings, candidate)
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
