"""The Test button: tries SMTP settings against the real server, stage by stage, sending nothing.

1. connect; 2. TLS (STARTTLS or implicit, certificates verified; a failed STARTTLS never falls
back to plain text); 3. EHLO with the server's capabilities; 4. AUTH (PLAIN or LOGIN as
offered) or XOAUTH2 with a freshly fetched token; 5. MAIL FROM and RCPT TO, from and to one
address, then RSET. There is never a DATA, so nothing can be delivered.

`ok` means stages 1 to 4 passed. A refusal at stage 5 is a step and a warning: relays often
refuse an address of their own as a recipient. Each command waits at most the SMTP timeout.
No credential ever appears in the result: every secret the run knew is scrubbed from it.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import aiosmtplib
from aiosmtplib import SMTPException, SMTPResponseException

from .oauth import OAuthTokenUnavailable, Token
from .transport import SessionError, SmtpConfig, Step, _describe, open_session

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
              fetch_token: Callable[[], Token] | None = None, secrets: list[str] = ()) -> CheckResult:
    """Runs the Test on an event loop of its own and answers its result (blocking).

    `fetch_token` gets a fresh XOAUTH2 token (blocking; it runs in a worker thread);
    `secrets` are values to scrub from every message, besides the password and the token.
    """
    run = partial(asyncio.run, check(config, envelope_address, fetch_token, secrets))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # This thread already runs a loop (an embedding server, Playwright's sync API): use another.
    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(run).result()


async def check(config: SmtpConfig, envelope_address: str | None,
                fetch_token: Callable[[], Token] | None = None, secrets: list[str] = ()) -> CheckResult:
    """The Test's stages against `config`; see the module's docstring."""
    config = replace(config, command_timeout=min(config.command_timeout, config.idle_seconds))
    fetched: list[Token] = []

    async def token_source() -> str:
        if fetch_token is None:
            raise OAuthTokenUnavailable("no OAuth2 configuration")
        try:
            token = await asyncio.wait_for(asyncio.to_thread(fetch_token), timeout=config.command_timeout)
        except asyncio.TimeoutError:
            raise OAuthTokenUnavailable(f"the token server did not answer within {config.command_timeout:g} s") from None
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
    hidden = [config.password, *(t.access_token for t in fetched), *(t.refresh_token for t in fetched), *secrets]
    return _scrubbed(result, [value for value in hidden if value])


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
        steps.append(Step(stage, False, None, f"{shown}: {_describe(error)}"))
        warnings.append(f"{shown} failed: {_describe(error)}")
        return False
    steps.append(Step(stage, True, response.code, f"{shown}: {response.message}"))
    return True


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(smtp.quit(), timeout=5)
    except (SMTPException, OSError, asyncio.TimeoutError):
        smtp.close()


def _scrubbed(result: CheckResult, secrets: list[str]) -> CheckResult:
    def clean(text: str) -> str:
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "[secret]")
        return text

    result.message = clean(result.message)
    result.steps = [replace(s, message=clean(s.message)) for s in result.steps]
    result.warnings = [clean(w) for w in result.warnings]
    return result
