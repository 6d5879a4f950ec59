"""Opening an SMTP session: connect, TLS, EHLO and AUTH, through aiosmtplib.

The senders and the Test button open sessions alike. Credentials and tokens go only over TLS,
except to a server on loopback. A failure is a SessionError naming the stage, with the steps
so far, so that the Test button can show each of them.
"""
from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiosmtplib
from aiosmtplib import SMTPConnectError, SMTPException, SMTPResponseException, SMTPServerDisconnected

from webapp.core import outbound
from webapp.core.security import Scrubber, decrypt_secret
from webapp.core.settings.store import secret_values

TokenSource = Callable[[], Awaitable[str]]


@functools.lru_cache(maxsize=1)
def default_ehlo_name() -> str:
    """The node's fully qualified name: what EHLO says when the settings name none."""
    return socket.getfqdn()


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach and log in to the partition's SMTP server (a snapshot of the settings)."""

    host: str
    port: int
    idle_seconds: float  # the "SMTP server timeout": how long an unused connection is kept open
    command_timeout: float  # each command's (MAILSENDER_SMTP_COMMAND_TIMEOUT)
    starttls: bool = False
    ssl: bool = False
    auth: bool = False
    username: str = ""
    password: str | None = field(default=None, repr=False)
    oauth2: bool = False
    ca_file: str | None = None
    local_hostname: str | None = None
    # Every secret of the settings (the password, OAuth2's): scrubbed from whatever a server answers.
    hidden: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_settings(cls, settings, app_config) -> "SmtpConfig":
        values = {name: getattr(settings, name) for name in (
            "smtp_host", "smtp_port", "smtp_timeout_seconds", "smtp_starttls", "smtp_auth", "smtp_ssl",
            "smtp_username", "oauth2_enabled", "smtp_ehlo_name")}
        password = decrypt_secret(settings.smtp_password_enc)
        return cls.from_values(values, password, app_config, hidden=secret_values(settings))

    @classmethod
    def from_values(cls, values, password: str | None, app_config, hidden=()) -> "SmtpConfig":
        """From parameters keyed by their API names (saved, or typed and validated, for the Test button)."""
        return cls(
            hidden=tuple(hidden),
            host=values["smtp_host"],
            port=int(values["smtp_port"]),
            idle_seconds=float(values["smtp_timeout_seconds"]),
            command_timeout=float(app_config["MAILSENDER_SMTP_COMMAND_TIMEOUT"]),
            starttls=bool(values["smtp_starttls"]),
            ssl=bool((values["smtp_auth"] or values["oauth2_enabled"]) and values["smtp_ssl"]),
            auth=bool(values["smtp_auth"] or values["oauth2_enabled"]),
            username=values["smtp_username"],
            password=password if values["smtp_auth"] and not values["oauth2_enabled"] else None,
            oauth2=bool(values["oauth2_enabled"]),
            ca_file=app_config["MAILSENDER_SMTP_CA_FILE"],
            local_hostname=values.get("smtp_ehlo_name") or default_ehlo_name(),
        )

    def scrubber(self, tokens=()) -> Scrubber:
        """What hides this configuration's secrets, and the tokens given, in any text."""
        return Scrubber([self.password, *self.hidden, *tokens], username=self.username)

    @property
    def identity(self) -> tuple:
        """What a kept-open connection was made for; a change means a new connection."""
        return (self.host, self.port, self.starttls, self.ssl, self.auth, self.username, self.password,
                self.oauth2, self.ca_file, self.local_hostname)


@dataclass
class Step:
    """One stage of opening a session, for the Test button: connect, tls, ehlo, auth."""

    stage: str
    ok: bool
    code: int | None
    message: str


# Why a session could not be opened, where that decides what the engine does (outcomes.py):
BUSY = "busy"  # the server turned the connection away at once (421 greeting, or closed)
HANDSHAKE = "handshake"  # TLS failed: a certificate not trusted, no protocol in common
SETTING = "setting"  # the settings cannot work as they are (no TLS for a login, a token refused)


class SessionError(Exception):
    """Opening the session failed at `stage`; `steps` says how far it got; `cause` is BUSY,
    HANDSHAKE, SETTING or empty."""

    def __init__(self, stage: str, code: int | None, message: str, steps: list[Step], cause: str = ""):
        super().__init__(f"{stage}: {f'{code} ' if code else ''}{message}")
        self.stage, self.code, self.message, self.steps, self.cause = stage, code, message, steps, cause


def tls_context(config: SmtpConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else ssl.create_default_context()
    return context


async def open_session(config: SmtpConfig, token_source: TokenSource | None = None) -> tuple[aiosmtplib.SMTP, list[Step]]:
    """Connects, starts TLS as configured, says EHLO and logs in: the Test button's steps too.

    Credentials and tokens go only over TLS, except to a server on loopback. Raises
    SessionError (with the steps so far) and never leaves a connection open when it does.
    """
    steps: list[Step] = []
    smtp = aiosmtplib.SMTP(hostname=config.host, port=config.port, timeout=config.command_timeout,
                           use_tls=config.ssl, start_tls=False, tls_context=tls_context(config)
                           if (config.ssl or config.starttls) else None,
                           local_hostname=config.local_hostname)
    stage = "connect"
    try:
        if config.auth and not outbound.may_send_credentials(config.host, tls=config.ssl or config.starttls):
            raise SessionError("auth", None, "credentials are sent only over TLS (STARTTLS or SSL) "
                               "except to a server on loopback", steps, SETTING)
        # Link-local and metadata addresses are refused on what the name resolves to now, and
        # again on the address actually connected to, before a word of SMTP is said.
        await asyncio.get_running_loop().run_in_executor(None, outbound.check_resolved, config.host, config.port)
        try:
            response = await smtp.connect()
        except SMTPConnectError as error:
            if config.ssl and isinstance(error.__cause__, ssl.SSLError):
                # Implicit TLS: the connection was made and the handshake failed; say so at "tls".
                steps.append(Step("connect", True, None, f"connected to {config.host} port {config.port}"))
                stage = "tls"
            raise
        outbound.check_peer(config.host, smtp.transport.get_extra_info("peername") if smtp.transport else None)
        steps.append(Step("connect", True, response.code, response.message))
        if config.ssl:
            steps.append(Step("tls", True, None, _tls_description(smtp, "implicit TLS (SSL)")))
        stage = "ehlo"
        response = await smtp.ehlo()
        steps.append(Step("ehlo", True, response.code, _ehlo_summary(response.message)))
        if config.starttls:
            stage = "tls"
            if not smtp.supports_extension("starttls"):
                raise SessionError("tls", None, "the server does not offer STARTTLS", steps, SETTING)
            response = await smtp.starttls()
            steps.append(Step("tls", True, response.code, f"{response.message} ({_tls_description(smtp, 'STARTTLS')})"))
            stage = "ehlo"
            response = await smtp.ehlo()
            steps.append(Step("ehlo", True, response.code, _ehlo_summary(response.message)))
        if config.auth:
            stage = "auth"
            if config.oauth2:
                if token_source is None:
                    raise SessionError("auth", None, "no OAuth2 token source", steps, SETTING)
                try:
                    token = await token_source()
                except Exception as error:  # the token server refused the grant, or is away
                    message = describe_error(error)
                    # Away (a timeout, a 5xx) is for a retry; a refusal is the settings' fault.
                    cause = "" if getattr(error, "passing", False) else SETTING
                    raise SessionError("auth", None, message, steps, cause) from None
                response = await smtp.auth_xoauth2(config.username, token)
                mechanism = "XOAUTH2"
            else:
                # PLAIN, else LOGIN: the two every relay offers; a server offering neither is
                # named with what it does offer.
                offered = smtp.server_auth_methods
                if "plain" in offered:
                    response = await smtp.auth_plain(config.username, config.password or "")
                    mechanism = "PLAIN"
                elif "login" in offered:
                    response = await smtp.auth_login(config.username, config.password or "")
                    mechanism = "LOGIN"
                else:
                    raise SessionError("auth", None, "the server offers neither AUTH PLAIN nor LOGIN (it offers: "
                                       + (", ".join(m.upper() for m in offered) or "no AUTH") + ")", steps,
                                       SETTING)
            steps.append(Step("auth", True, response.code, f"{response.message} (AUTH {mechanism})"))
        return smtp, steps
    except SessionError as error:
        error.steps = steps + [Step(error.stage, False, error.code, error.message)]
        smtp.close()
        raise error from None
    except outbound.OutboundRefused as error:
        smtp.close()
        raise SessionError("connect", None, str(error), steps + [Step("connect", False, None, str(error))]) from None
    except SMTPResponseException as error:
        smtp.close()
        busy = BUSY if stage == "connect" and error.code == 421 else ""
        raise SessionError(stage, error.code, error.message,
                           steps + [Step(stage, False, error.code, error.message)], busy) from None
    except (SMTPException, OSError, asyncio.TimeoutError, ValueError) as error:
        smtp.close()
        message = describe_error(error)
        raise SessionError(stage, None, message, steps + [Step(stage, False, None, message)],
                           _cause(stage, error)) from None
    except Exception as error:  # an OAuth2 token source may fail in its own ways
        smtp.close()
        message = describe_error(error)
        raise SessionError(stage, None, message, steps + [Step(stage, False, None, message)]) from None


def _cause(stage: str, error: BaseException) -> str:
    """BUSY for a connection closed before the greeting; HANDSHAKE for a TLS failure."""
    if stage == "connect" and isinstance(error.__cause__, SMTPServerDisconnected):
        return BUSY
    if stage == "tls" and (isinstance(error, ssl.SSLError) or isinstance(error.__cause__, ssl.SSLError)):
        return HANDSHAKE
    return ""


def _tls_description(smtp: aiosmtplib.SMTP, how: str) -> str:
    """"STARTTLS, TLSv1.3, TLS_AES_256_GCM_SHA384": what the handshake agreed on."""
    transport = smtp.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    if ssl_object is None:
        return how
    cipher = ssl_object.cipher()
    return ", ".join(part for part in (how, ssl_object.version(), cipher[0] if cipher else "") if part)


def _ehlo_summary(text: str) -> str:
    """The EHLO greeting's first line and the capabilities the server offers."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} — offers: {', '.join(lines[1:])}"


def describe_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 500 else text[:500] + "…"
