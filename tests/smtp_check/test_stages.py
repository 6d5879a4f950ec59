"""The Test's stages against real aiosmtpd servers on loopback; nothing is ever delivered."""
import pytest

from scheduler.oauth import OAuthTokenUnavailable, Token
from scheduler.smtp.session import SmtpConfig
from scheduler.smtp_check import run_check
from tests.smtp_servers import SmtpServer, TlsAuthority

ADDRESS = "relay@acme.test"
PASSWORD = "relay-Secret-9"


@pytest.fixture(scope="module")
def authority():
    return TlsAuthority()


def config_for(server, **fields) -> SmtpConfig:
    return SmtpConfig(host=server.host, port=server.port, idle_seconds=5, command_timeout=30, **fields)


def stages(result) -> list[tuple[str, bool]]:
    return [(step.stage, step.ok) for step in result.steps]


def assert_nothing_delivered(server):
    assert "DATA" not in server.commands
    assert server.messages == []


def test_plain_server_passes_every_stage_and_receives_no_data():
    with SmtpServer() as server:
        result = run_check(config_for(server), ADDRESS)
    assert result.ok, result
    assert stages(result) == [("connect", True), ("tls", True), ("ehlo", True), ("auth", True),
                              ("mail", True), ("rcpt", True), ("rset", True)]
    assert result.steps[1].message.startswith("not used")
    assert result.warnings == []
    assert server.commands == ["MAIL", "RCPT", "RSET"]
    assert_nothing_delivered(server)


def test_ehlo_shows_the_servers_capabilities():
    with SmtpServer(size_limit=1000) as server:
        result = run_check(config_for(server), ADDRESS)
    ehlo = next(step for step in result.steps if step.stage == "ehlo")
    assert ehlo.code == 250
    assert "SIZE 1000" in ehlo.message and "8BITMIME" in ehlo.message


def test_starttls_with_a_trusted_certificate_passes(authority):
    with SmtpServer(tls="starttls", authority=authority) as server:
        result = run_check(config_for(server, starttls=True, ca_file=authority.ca_file), ADDRESS)
    assert result.ok, result
    tls = next(step for step in result.steps if step.stage == "tls")
    assert tls.ok and tls.code == 220 and "TLSv1" in tls.message
    before, after = [step for step in result.steps if step.stage == "ehlo"]
    assert "STARTTLS" in before.message and "STARTTLS" not in after.message  # EHLO again after TLS
    assert_nothing_delivered(server)


def test_starttls_with_an_untrusted_certificate_fails_at_tls_and_never_goes_on_in_plain_text(authority):
    with SmtpServer(tls="starttls", authority=authority) as server:
        result = run_check(config_for(server, starttls=True), ADDRESS)  # the system's CAs only
    assert not result.ok
    assert result.stage == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in result.message
    assert stages(result)[-1] == ("tls", False)
    assert server.commands == []  # no MAIL, nothing after the failed handshake
    assert_nothing_delivered(server)


def test_a_server_without_starttls_fails_at_tls_when_tls_is_asked_for():
    with SmtpServer() as server:
        result = run_check(config_for(server, starttls=True), ADDRESS)
    assert not result.ok and result.stage == "tls"
    assert "does not offer STARTTLS" in result.message
    assert server.commands == []


def test_implicit_tls_passes(authority):
    with SmtpServer(tls="implicit", authority=authority) as server:
        result = run_check(config_for(server, ssl=True, ca_file=authority.ca_file), ADDRESS)
    assert result.ok, result
    assert stages(result)[:3] == [("connect", True), ("tls", True), ("ehlo", True)]
    assert "implicit TLS" in result.steps[1].message
    assert_nothing_delivered(server)


def test_implicit_tls_with_an_untrusted_certificate_fails_at_tls(authority):
    with SmtpServer(tls="implicit", authority=authority) as server:
        result = run_check(config_for(server, ssl=True), ADDRESS)
    assert not result.ok and result.stage == "tls"
    assert stages(result) == [("connect", True), ("tls", False)]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_with_the_right_password_passes(authority, mechanism):
    with SmtpServer(tls="starttls", authority=authority, users={ADDRESS: PASSWORD},
                    auth_mechanisms=[mechanism]) as server:
        result = run_check(config_for(server, starttls=True, ca_file=authority.ca_file, auth=True,
                                      username=ADDRESS, password=PASSWORD), ADDRESS)
    assert result.ok, result
    auth = next(step for step in result.steps if step.stage == "auth")
    assert auth.ok and auth.code == 235 and f"AUTH {mechanism}" in auth.message
    assert_nothing_delivered(server)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_with_a_wrong_password_fails_at_auth_with_the_servers_words(authority, mechanism):
    with SmtpServer(tls="starttls", authority=authority, users={ADDRESS: PASSWORD},
                    auth_mechanisms=[mechanism]) as server:
        result = run_check(config_for(server, starttls=True, ca_file=authority.ca_file, auth=True,
                                      username=ADDRESS, password="Wrong-Password-1"), ADDRESS)
    assert not result.ok and result.stage == "auth"
    assert result.code == 535
    assert "Wrong-Password-1" not in str(result.to_json())
    assert server.commands == []


def xoauth2_config(server, authority):
    return config_for(server, starttls=True, ca_file=authority.ca_file, auth=True, oauth2=True, username=ADDRESS)


def test_xoauth2_with_the_right_token_passes(authority):
    fetched = []

    def fetch():
        fetched.append(1)
        return Token("token-right-1", 3600)

    with SmtpServer(tls="starttls", authority=authority, xoauth2_tokens={ADDRESS: "token-right-1"}) as server:
        result = run_check(xoauth2_config(server, authority), ADDRESS, fetch)
    assert result.ok, result
    assert fetched == [1]  # fetched afresh for the run
    assert "AUTH XOAUTH2" in next(s for s in result.steps if s.stage == "auth").message
    assert "token-right-1" not in str(result.to_json())
    assert_nothing_delivered(server)


def test_xoauth2_with_a_wrong_token_fails_at_auth(authority):
    with SmtpServer(tls="starttls", authority=authority, xoauth2_tokens={ADDRESS: "token-right-1"}) as server:
        result = run_check(xoauth2_config(server, authority), ADDRESS, lambda: Token("token-wrong-2", 3600))
    assert not result.ok and result.stage == "auth"
    assert result.code == 535
    assert "token-wrong-2" not in str(result.to_json())
    assert server.commands == []


def test_a_token_server_refusal_fails_at_auth_with_its_text(authority):
    def refused():
        raise OAuthTokenUnavailable("the token server refused: invalid_client: bad secret")

    with SmtpServer(tls="starttls", authority=authority, xoauth2_tokens={ADDRESS: "token-right-1"}) as server:
        result = run_check(xoauth2_config(server, authority), ADDRESS, refused)
    assert not result.ok and result.stage == "auth"
    assert "invalid_client: bad secret" in result.message


def test_a_refused_connection_fails_at_connect():
    closed = SmtpConfig(host="127.0.0.1", port=SmtpServer.free_port(), idle_seconds=5, command_timeout=5)
    result = run_check(closed, ADDRESS)
    assert not result.ok
    assert result.stage == "connect"
    assert stages(result) == [("connect", False)]


@pytest.mark.parametrize("host", ["169.254.169.254", "fd00:ec2::254"])
def test_metadata_addresses_are_refused_at_connect(host):
    result = run_check(SmtpConfig(host=host, port=25, idle_seconds=5, command_timeout=5), ADDRESS)
    assert not result.ok and result.stage == "connect"
    assert "refused" in result.message and host in result.message


def test_a_refused_rcpt_is_ok_with_a_warning():
    with SmtpServer(rcpt_replies={ADDRESS: ["550 5.7.1 Relaying denied"]}) as server:
        result = run_check(config_for(server), ADDRESS)
    assert result.ok
    assert result.stage == "rcpt" and result.code == 550
    assert stages(result)[-2:] == [("rcpt", False), ("rset", True)]
    assert result.warnings and "Relaying denied" in result.warnings[0]
    assert server.commands == ["MAIL", "RCPT", "RSET"]
    assert_nothing_delivered(server)


def test_a_refused_mail_from_is_ok_with_a_warning_and_no_rcpt():
    with SmtpServer(mail_replies=["553 5.7.1 Sender not allowed"]) as server:
        result = run_check(config_for(server), ADDRESS)
    assert result.ok and result.stage == "mail" and result.code == 553
    assert server.commands == ["MAIL", "RSET"]


def test_without_an_address_stage_five_is_a_warning():
    with SmtpServer() as server:
        result = run_check(config_for(server), None)
    assert result.ok and result.warnings
    assert server.commands == []


def test_the_smtp_server_timeout_is_idle_time_and_does_not_shorten_a_commands_wait():
    with SmtpServer(ehlo_delay=0.6) as server:
        result = run_check(SmtpConfig(host=server.host, port=server.port, idle_seconds=0.2, command_timeout=60),
                           ADDRESS)
    assert result.ok, result


def test_a_command_slower_than_the_command_timeout_fails_its_stage():
    with SmtpServer(ehlo_delay=1.0) as server:
        result = run_check(SmtpConfig(host=server.host, port=server.port, idle_seconds=600, command_timeout=0.3),
                           ADDRESS)
    assert not result.ok and result.stage == "ehlo", result
