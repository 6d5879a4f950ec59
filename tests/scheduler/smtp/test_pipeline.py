"""A sender's SMTP connection (smtp/session.py, smtp/pipeline.py) against real aiosmtpd servers.

TLS, AUTH, XOAUTH2, SIZE, 452, RSET, reuse.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from scheduler.smtp.pipeline import SmtpConnection
from scheduler.smtp.session import SessionError, SmtpConfig, open_session
from tests.smtp_servers import SmtpServer, TlsAuthority

MESSAGE = b"From: a@acme.test\r\nTo: b@example.test\r\nSubject: hi\r\nMessage-ID: <1@acme.test>\r\n\r\nHello.\r\n"


def config_for(server, **fields) -> SmtpConfig:
    # A command timeout far above what a loopback server takes, even on a busy machine.
    return SmtpConfig(host=server.host, port=server.port, idle_seconds=60, command_timeout=30, **fields)


def send(config, recipients, data=MESSAGE, connection=None, token=None):
    async def run():
        own = connection or SmtpConnection()
        try:
            source = (lambda: _value(token)) if token else None
            return await own.send(config, "a@acme.test", recipients, data, source)
        finally:
            if connection is None:
                await own.close()
    return asyncio.run(run())


def send_in_turn(config, *recipient_lists, between=None):
    """Sends one message to each list in turn over one connection: the deliveries. `between`, a
    function, is waited for (off the loop) between one send and the next."""
    async def run():
        connection = SmtpConnection()
        deliveries = []
        for recipients in recipient_lists:
            if deliveries and between is not None:
                await asyncio.get_running_loop().run_in_executor(None, between)
                await asyncio.sleep(0.05)  # the loop reads what arrived meanwhile
            deliveries.append(await connection.send(config, "a@acme.test", recipients, MESSAGE))
        await connection.close()
        return deliveries
    return asyncio.run(run())


async def _value(value):
    return value


def replies(delivery):
    return [(r.address, r.status, r.code) for t in delivery.transactions for r in t.recipients]


@pytest.fixture(scope="module")
def authority():
    return TlsAuthority()


def test_starttls_and_auth_deliver(authority):
    with SmtpServer(tls="starttls", authority=authority, users={"u": "p"}) as server:
        config = config_for(server, starttls=True, auth=True, username="u", password="p",
                            ca_file=authority.ca_file)
        delivery = send(config, ["b@example.test"])
        assert replies(delivery) == [("b@example.test", "accepted", 250)]
        assert server.wait_for(1)[0].rcpt_tos == ["b@example.test"]


def test_implicit_ssl_and_auth_deliver(authority):
    with SmtpServer(tls="implicit", authority=authority, users={"u": "p"}) as server:
        config = config_for(server, ssl=True, auth=True, username="u", password="p", ca_file=authority.ca_file)
        assert replies(send(config, ["b@example.test"])) == [("b@example.test", "accepted", 250)]
        server.wait_for(1)


def test_xoauth2_logs_in_with_the_token(authority):
    with SmtpServer(tls="starttls", authority=authority, xoauth2_tokens={"u@acme.test": "tok"}) as server:
        config = config_for(server, starttls=True, auth=True, oauth2=True, username="u@acme.test",
                            ca_file=authority.ca_file)
        assert replies(send(config, ["b@example.test"], token="tok"))[0][1] == "accepted"
        refused = send(config, ["b@example.test"], token="wrong")
        assert refused.unreachable and replies(refused)[0][1] == "deferred"
        assert len(server.wait_for(1)) == 1


def test_an_untrusted_certificate_defers_with_the_reason(authority):
    with SmtpServer(tls="starttls", authority=authority) as server:
        delivery = send(config_for(server, starttls=True), ["b@example.test"])  # the system CAs only
        assert delivery.unreachable
        assert "tls" in delivery.transactions[0].detail and server.messages == []


def test_a_wrong_password_defers_and_says_so(authority):
    with SmtpServer(tls="starttls", authority=authority, users={"u": "p"}) as server:
        config = config_for(server, starttls=True, auth=True, username="u", password="bad",
                            ca_file=authority.ca_file)
        delivery = send(config, ["b@example.test"])
        assert delivery.unreachable
        assert delivery.transactions[0].code == 535 and "auth" in delivery.transactions[0].detail


def test_credentials_never_go_unencrypted_to_a_server_off_loopback():
    config = SmtpConfig(host="192.0.2.1", port=25, idle_seconds=60, command_timeout=1, auth=True,
                        username="u", password="p")
    with pytest.raises(SessionError) as refused:
        asyncio.run(open_session(config))
    assert refused.value.stage == "auth" and "only over TLS" in refused.value.message


def test_open_session_reports_each_step(authority):
    with SmtpServer(tls="starttls", authority=authority, users={"u": "p"}) as server:
        config = config_for(server, starttls=True, auth=True, username="u", password="p",
                            ca_file=authority.ca_file)

        async def run():
            smtp, steps = await open_session(config)
            await smtp.quit()
            return steps

        steps = asyncio.run(run())
        assert [(s.stage, s.ok) for s in steps] == [("connect", True), ("ehlo", True), ("tls", True),
                                                     ("ehlo", True), ("auth", True)]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_452_splits_the_recipient_list(pipelining):
    recipients = [f"r{n}@example.test" for n in range(5)]
    with SmtpServer(max_recipients=2, pipelining=pipelining) as server:
        delivery = send(config_for(server), recipients)
        arrived = server.wait_for(3)
        assert [m.rcpt_tos for m in arrived] == [recipients[0:2], recipients[2:4], recipients[4:]]
        assert len(delivery.transactions) == 3
        assert all(status == "accepted" for _, status, _ in replies(delivery))


def test_a_message_above_the_servers_size_fails_with_the_reason():
    with SmtpServer(size_limit=1000) as server:
        delivery = send(config_for(server), ["b@example.test"], data=MESSAGE + b"x" * 2000 + b"\r\n")
        (transaction,) = delivery.transactions
        assert transaction.outcome == "failed" and "SIZE limit of 1000" in transaction.detail
        assert replies(delivery) == [("b@example.test", "failed", None)]
        assert server.messages == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_replies_per_recipient_and_rset_after_a_refused_transaction(pipelining):
    with SmtpServer(rcpt_replies={"gone@example.test": ["550 5.1.1 No such user"],
                                  "busy@example.test": ["451 4.3.0 Try later"]}, pipelining=pipelining) as server:
        refused, mixed = send_in_turn(config_for(server), ["gone@example.test", "busy@example.test"],
                                      ["ok@example.test", "gone@example.test"])
        assert replies(refused) == [("gone@example.test", "failed", 550), ("busy@example.test", "deferred", 451)]
        assert replies(mixed) == [("ok@example.test", "accepted", 250), ("gone@example.test", "failed", 550)]
        (arrived,) = server.wait_for(1)
        assert arrived.rcpt_tos == ["ok@example.test"]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_data_refusal_applies_to_the_accepted_recipients(pipelining):
    with SmtpServer(data_replies=["554 5.6.0 Content rejected"], pipelining=pipelining) as server:
        delivery = send(config_for(server), ["b@example.test", "c@example.test"])
        assert replies(delivery) == [("b@example.test", "failed", 554), ("c@example.test", "failed", 554)]
        assert server.messages == []


def test_one_connection_is_reused_across_messages():
    with SmtpServer() as server:
        send_in_turn(config_for(server), ["b@example.test"], ["b@example.test"], ["b@example.test"])
        assert len({m.peer for m in server.wait_for(3)}) == 1


def test_an_absent_server_defers_without_raising():
    config = SmtpConfig(host="127.0.0.1", port=SmtpServer.free_port(), idle_seconds=60, command_timeout=2)
    delivery = send(config, ["b@example.test"])
    assert delivery.unreachable
    assert replies(delivery) == [("b@example.test", "deferred", None)]
    assert "connect" in delivery.transactions[0].detail


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_the_wait_for_the_previous_commit_comes_after_data_and_before_the_end_of_data(pipelining):
    # The commit overlaps MAIL, RCPT and DATA; the server may take the message only once the
    # wait is over, so that no second accepted message is ever uncommitted.
    with SmtpServer(pipelining=pipelining) as server:
        seen_during_the_wait = []

        async def previous_committed():
            await asyncio.sleep(0.2)
            seen_during_the_wait.append((list(server.commands), len(server.messages)))

        async def run():
            connection = SmtpConnection()
            try:
                return await connection.send(config_for(server), "a@acme.test", ["b@example.test"], MESSAGE,
                                             before_end_of_data=previous_committed)
            finally:
                await connection.close()

        delivery = asyncio.run(run())
        assert seen_during_the_wait == [(["MAIL", "RCPT", "DATA"], 0)]
        assert replies(delivery) == [("b@example.test", "accepted", 250)]
        assert server.wait_for(1)[0].data.endswith(b"Hello.\r\n")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_lines_beginning_with_a_dot_and_bare_line_ends_arrive_as_written(pipelining):
    data = (b"From: a@acme.test\r\nTo: b@example.test\r\nSubject: dots\r\n\r\n"
            b".\r\n..two\r\n.leading\nbare line end\rlast without an end")
    with SmtpServer(pipelining=pipelining) as server:
        assert replies(send(config_for(server), ["b@example.test"], data)) == [("b@example.test", "accepted", 250)]
        body = server.wait_for(1)[0].data.split(b"\r\n\r\n", 1)[1]
    assert body == b".\r\n..two\r\n.leading\r\nbare line end\r\nlast without an end\r\n"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_failure_before_the_end_of_data_drops_the_connection_and_the_message_never_arrives(pipelining):
    # The sender waits for the previous outcome's commit inside DATA; if that fails, the server
    # must not take this message, and reusing the connection would get "503 nested MAIL" for
    # the next one.
    with SmtpServer(pipelining=pipelining) as server:

        async def commit_failed():
            raise RuntimeError("the commit failed")

        async def run():
            connection = SmtpConnection()
            with pytest.raises(RuntimeError):
                await connection.send(config_for(server), "a@acme.test", ["b@example.test"], MESSAGE,
                                      before_end_of_data=commit_failed)
            delivery = await connection.send(config_for(server), "a@acme.test", ["c@example.test"], MESSAGE)
            await connection.close()
            return delivery

        delivery = asyncio.run(run())
        assert replies(delivery) == [("c@example.test", "accepted", 250)]
        assert [m.rcpt_tos for m in server.wait_for(1)] == [["c@example.test"]]
        server.wait_for_ended(2)  # both connections are gone: nothing more can arrive
        assert [m.rcpt_tos for m in server.messages] == [["c@example.test"]]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_mail_rcpt_and_data_go_in_one_write_where_the_server_offers_pipelining(pipelining):
    recipients = ["b@example.test", "c@example.test"]
    with SmtpServer(pipelining=pipelining) as server:
        assert replies(send(config_for(server), recipients)) == [(a, "accepted", 250) for a in recipients]
        assert server.wait_for(1)[0].rcpt_tos == recipients
    assert server.pipelined == [pipelining]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_refused_mail_from_fails_the_message_and_the_connection_carries_the_next_one(pipelining):
    with SmtpServer(mail_replies=["550 5.7.1 Sender refused", "250 OK"], pipelining=pipelining) as server:
        refused, taken = send_in_turn(config_for(server), ["b@example.test"], ["c@example.test"])
        assert replies(refused) == [("b@example.test", "failed", 550)]
        assert "MAIL FROM refused" in refused.transactions[0].detail
        assert replies(taken) == [("c@example.test", "accepted", 250)]
        assert [m.rcpt_tos for m in server.wait_for(1)] == [["c@example.test"]]
        assert len({m.peer for m in server.messages}) == 1 and "RSET" in server.commands


def test_a_pipelined_data_taken_with_no_recipient_is_ended_empty_and_the_connection_goes_on():
    # RFC 2920: a server may answer the pipelined DATA with 354 though it refused every RCPT;
    # the client must then send the end of an empty message, and never the message itself.
    with SmtpServer(rcpt_replies={"gone@example.test": ["550 5.1.1 No such user"]}, lax_data=True) as server:
        refused, taken = send_in_turn(config_for(server), ["gone@example.test"], ["c@example.test"])
        assert replies(refused) == [("gone@example.test", "failed", 550)]
        assert replies(taken) == [("c@example.test", "accepted", 250)]
        assert [m.rcpt_tos for m in server.wait_for(1)] == [["c@example.test"]]


def test_an_address_that_an_smtp_command_cannot_carry_fails_and_the_others_are_sent():
    with SmtpServer() as server:
        delivery = send(config_for(server), ["b@example.test", "x@example.test>\r\nRSET"])
        assert replies(delivery) == [("x@example.test>\r\nRSET", "failed", None), ("b@example.test", "accepted", 250)]
        assert "cannot carry" in delivery.transactions[0].recipients[0].text
        assert [m.rcpt_tos for m in server.wait_for(1)] == [["b@example.test"]]
        assert server.commands == ["MAIL", "RCPT", "DATA"]


@pytest.mark.parametrize("smtputf8", [True, False], ids=["smtputf8", "ascii-only"])
def test_an_address_beyond_ascii_goes_only_to_a_server_that_offers_smtputf8(smtputf8):
    with SmtpServer(smtputf8=smtputf8) as server:
        delivery = send(config_for(server), ["zoë@example.test", "b@example.test"])
        if smtputf8:
            assert replies(delivery) == [("zoë@example.test", "accepted", 250), ("b@example.test", "accepted", 250)]
            assert server.wait_for(1)[0].rcpt_tos == ["zoë@example.test", "b@example.test"]
        else:
            assert replies(delivery) == [("zoë@example.test", "failed", None), ("b@example.test", "accepted", 250)]
            assert "SMTPUTF8" in delivery.transactions[0].recipients[0].text
            assert server.wait_for(1)[0].rcpt_tos == ["b@example.test"]


def _send_to_a_scripted_server(answer_mail: bytes):
    """A server written out here: it greets, offers PIPELINING, answers MAIL with
    `answer_mail`, and hangs up. The delivery, and whether the connection stayed open."""
    async def run():
        async def scripted(reader, writer):
            writer.write(b"220 hello\r\n")
            await reader.readline()  # EHLO
            writer.write(b"250-hello\r\n250 PIPELINING\r\n")
            await reader.readline()  # MAIL (RCPT and DATA follow in the same write)
            writer.write(answer_mail)
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(scripted, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        connection = SmtpConnection()
        try:
            config = SmtpConfig(host="127.0.0.1", port=port, idle_seconds=60, command_timeout=30)
            delivery = await connection.send(config, "a@acme.test", ["b@example.test"], MESSAGE)
            return delivery, connection.is_open
        finally:
            await connection.close()
            listener.close()

    return asyncio.run(run())


def test_a_reply_that_is_not_smtp_drops_the_connection_and_defers():
    delivery, still_open = _send_to_a_scripted_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert replies(delivery) == [("b@example.test", "deferred", None)]
    assert "malformed SMTP reply" in delivery.transactions[0].detail
    assert not still_open


def test_a_server_that_refuses_mail_and_hangs_up_mid_pipeline_defers_with_its_own_reply():
    delivery, still_open = _send_to_a_scripted_server(b"421 4.3.2 Service shutting down\r\n")
    assert replies(delivery) == [("b@example.test", "deferred", 421)]
    assert delivery.transactions[0].detail == "MAIL FROM refused: 4.3.2 Service shutting down"
    assert not still_open


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_server_that_stops_answering_after_the_end_of_data_leaves_it_unclear(pipelining):
    # The message's end is not answered until the test is over: unclear after the timeout (the
    # server may have taken it, so it is not simply deferred), and the connection dropped.
    never = threading.Event()
    with SmtpServer(data_gate=never, pipelining=pipelining) as server:
        config = SmtpConfig(host=server.host, port=server.port, idle_seconds=60, command_timeout=0.5)

        async def run():
            connection = SmtpConnection()
            started = time.monotonic()
            delivery = await connection.send(config, "a@acme.test", ["b@example.test"], MESSAGE)
            took = time.monotonic() - started
            still_open = connection.is_open
            await connection.close()
            return delivery, took, still_open

        try:
            delivery, took, still_open = asyncio.run(run())
        finally:
            never.set()
    assert replies(delivery) == [("b@example.test", "unclear", None)]
    assert delivery.transactions[0].answer == "unclear"
    assert "Timed out waiting for server response" in delivery.transactions[0].detail
    assert took >= 0.4 and not still_open


def test_a_connection_on_which_the_server_spoke_unasked_is_not_reused():
    # An idle client often gets "421" just before the server hangs up; read as the next MAIL's
    # reply, it would defer (or fail) a message that was never offered.
    with SmtpServer(unsolicited="421 4.4.2 Idle too long") as server:
        # The server speaks between the two.
        first, second = send_in_turn(config_for(server), ["b@example.test"], ["c@example.test"],
                                     between=server.wait_for_unsolicited)
        assert replies(first) == [("b@example.test", "accepted", 250)]
        assert replies(second) == [("c@example.test", "accepted", 250)]
        assert len({m.peer for m in server.wait_for(2)}) == 2


def test_a_close_cancelled_while_waiting_for_quit_still_closes_the_connection():
    async def run():
        ended, quit_read = asyncio.Event(), asyncio.Event()

        async def silent_at_quit(reader, writer):
            writer.write(b"220 hello\r\n")
            for reply in (b"250 hello", b"250 OK", b"250 OK", b"354 Go ahead"):  # EHLO, MAIL, RCPT, DATA
                await reader.readline()
                writer.write(reply + b"\r\n")
            await reader.readuntil(b"\r\n.\r\n")
            writer.write(b"250 2.0.0 queued\r\n")
            await reader.readline()  # QUIT, never answered
            quit_read.set()
            await reader.read()  # until the client closes the connection
            ended.set()

        listener = await asyncio.start_server(silent_at_quit, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        connection = SmtpConnection()
        config = SmtpConfig(host="127.0.0.1", port=port, idle_seconds=60, command_timeout=30)
        delivery = await connection.send(config, "a@acme.test", ["b@example.test"], b"Subject: x\r\n\r\nHi\r\n")
        assert delivery.transactions[0].outcome == "accepted" and connection.is_open
        closing = asyncio.create_task(connection.close())
        await asyncio.wait_for(quit_read.wait(), 60)  # close() now waits for QUIT's reply
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        await asyncio.wait_for(ended.wait(), 60)  # the server saw the connection end
        listener.close()
        return connection.is_open

    assert asyncio.run(run()) is False
