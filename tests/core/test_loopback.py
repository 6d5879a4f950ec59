"""One loopback rule: credentials may cross without TLS only to a server on loopback, and Save
and sending agree on which servers those are (webapp.core.outbound.is_loopback_host)."""
from __future__ import annotations

import asyncio

import pytest

from scheduler.smtp.session import SessionError, SmtpConfig, open_session
from tests.smtp_servers import SmtpServer

PLAIN_TEXT_REFUSED = "credentials are sent only over TLS"


def _save(client, headers, host: str, port: int):
    return client.put("/api/v1/mail-sender/settings", headers=headers, json={
        "smtp_host": host, "smtp_port": port, "smtp_auth": True, "smtp_username": "user",
        "smtp_password": "secret-1", "smtp_starttls": False, "smtp_ssl": False})


def _send_refuses_plain_text(app, host: str, port: int) -> bool:
    """Whether sending refuses to log in to `host` without TLS (else it goes on to connect)."""
    values = {"smtp_host": host, "smtp_port": port, "smtp_timeout_seconds": 5, "smtp_starttls": False,
              "smtp_auth": True, "smtp_ssl": False, "smtp_username": "user", "oauth2_enabled": False}
    config = SmtpConfig.from_values(values, "secret-1", app.config)

    async def attempt():
        smtp, _ = await open_session(config)
        smtp.close()

    try:
        asyncio.run(attempt())
    except SessionError as error:
        return PLAIN_TEXT_REFUSED in error.message
    return False


@pytest.mark.parametrize("host", ["localhost", "LocalHost.", "mail.localhost", "127.0.0.1", "127.1.2.3",
                                  "localhost.localdomain", "mail.example.com", "192.0.2.10"])
def test_save_and_sending_agree_on_which_servers_are_on_loopback(app, client, admin_api, host):
    with SmtpServer(users={"user": "secret-1"}) as server:
        saved = _save(client, admin_api, host, server.port)
        refused_by_save = saved.status_code == 422 and "smtp_starttls" in saved.json["fields"]
        assert saved.status_code in (200, 422), saved.text
        assert refused_by_save == _send_refuses_plain_text(app, host, server.port), (
            f"{host}: Save {'refuses' if refused_by_save else 'accepts'} AUTH without TLS, sending does not agree")

