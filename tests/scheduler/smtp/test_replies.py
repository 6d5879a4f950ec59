"""What SMTP replies mean (scheduler/smtp/replies.py): parsing and each transaction's outcome, no sockets."""
import pytest

from scheduler.smtp.replies import MalformedReply, Reply, TransactionReplies, take_reply, transaction_outcome
from webapp.core.states import (ATTEMPT_ACCEPTED, ATTEMPT_DEFERRED, ATTEMPT_FAILED, RCPT_ACCEPTED, RCPT_DEFERRED,
                                RCPT_FAILED)

OK, GO_AHEAD, QUEUED = Reply(250, "OK"), Reply(354, "End data with <CR><LF>.<CR><LF>"), Reply(250, "2.0.0 queued as A1")
TO = ["a@x.test", "b@x.test", "c@x.test"]


def outcome(replies: TransactionReplies, recipients=TO):
    transaction, held_over = transaction_outcome(recipients, replies)
    return transaction, [(r.address, r.status, r.code, r.text) for r in transaction.recipients], held_over


# --- reading replies off the wire ------------------------------------------------------------


def test_replies_are_taken_off_the_buffer_one_at_a_time_and_multi_line_ones_whole():
    buffer = bytearray(b"250-mail.test greets you\r\n250-PIPELINING\r\n250 SIZE 1000\r\n354 Go ahead\r\n25")
    assert take_reply(buffer) == Reply(250, "mail.test greets you\nPIPELINING\nSIZE 1000")
    assert take_reply(buffer) == Reply(354, "Go ahead")
    assert take_reply(buffer) is None and buffer == bytearray(b"25")  # the rest waits for more bytes
    buffer += b"0 OK\n"
    assert take_reply(buffer) == Reply(250, "OK") and buffer == bytearray()


def test_a_code_alone_is_a_reply_with_no_text():
    assert take_reply(bytearray(b"221\r\n")) == Reply(221, "")


@pytest.mark.parametrize("data", [b"HTTP/1.1 400 Bad Request\r\n", b"25x OK\r\n", b"250OK\r\n"])
def test_what_is_not_an_smtp_reply_is_refused(data):
    with pytest.raises(MalformedReply):
        take_reply(bytearray(data))


def test_a_reply_that_never_ends_is_refused_once_too_long():
    with pytest.raises(MalformedReply, match="too long"):
        take_reply(bytearray(b"250-" + b"x" * 70_000))


# --- what a transaction did ----------------------------------------------------------------


def test_every_recipient_accepted_and_the_message_queued():
    transaction, replies, held = outcome(TransactionReplies(OK, [OK, OK, OK], GO_AHEAD, QUEUED))
    assert (transaction.outcome, transaction.code, transaction.detail) == (ATTEMPT_ACCEPTED, 250, "2.0.0 queued as A1")
    assert replies == [(a, RCPT_ACCEPTED, 250, "2.0.0 queued as A1") for a in TO] and held == []


@pytest.mark.parametrize("code, status, result", [(550, RCPT_FAILED, ATTEMPT_FAILED), (451, RCPT_DEFERRED, ATTEMPT_DEFERRED)])
def test_a_refused_mail_from_answers_for_every_recipient(code, status, result):
    transaction, replies, held = outcome(TransactionReplies(Reply(code, "Sender refused")))
    assert (transaction.outcome, transaction.detail) == (result, "MAIL FROM refused: Sender refused")
    assert replies == [(a, status, code, "Sender refused") for a in TO] and held == []


def test_a_recipient_refused_keeps_its_own_reply_while_the_others_are_queued():
    transaction, replies, _ = outcome(TransactionReplies(OK, [OK, Reply(550, "No such user"), OK], GO_AHEAD, QUEUED))
    assert transaction.outcome == ATTEMPT_ACCEPTED
    assert replies[1] == ("b@x.test", RCPT_FAILED, 550, "No such user")
    assert replies[0][1] == replies[2][1] == RCPT_ACCEPTED


def test_a_452_after_an_accepted_recipient_holds_the_rest_over_for_the_next_transaction():
    too_many = Reply(452, "4.5.3 Too many recipients")
    transaction, replies, held = outcome(TransactionReplies(OK, [OK, too_many, None], GO_AHEAD, QUEUED))
    assert [r[0] for r in replies] == ["a@x.test"] and held == ["b@x.test", "c@x.test"]


def test_a_452_for_the_first_recipient_is_a_deferral():
    transaction, replies, held = outcome(TransactionReplies(OK, [Reply(452, "Too many")], None), ["a@x.test"])
    assert transaction.outcome == ATTEMPT_DEFERRED and replies == [("a@x.test", RCPT_DEFERRED, 452, "Too many")]
    assert held == []


def test_every_recipient_refused_defers_while_any_refusal_is_temporary():
    mixed = TransactionReplies(OK, [Reply(550, "No"), Reply(451, "Later"), Reply(550, "No")], Reply(554, "No valid"))
    transaction, _, _ = outcome(mixed)
    assert (transaction.outcome, transaction.code, transaction.detail) == (ATTEMPT_DEFERRED, 550, "every recipient refused")
    transaction, _, _ = outcome(TransactionReplies(OK, [Reply(550, "No")] * 3, Reply(554, "No valid")))
    assert transaction.outcome == ATTEMPT_FAILED


@pytest.mark.parametrize("data, end, status, result", [
    (Reply(554, "Transaction failed"), None, RCPT_FAILED, ATTEMPT_FAILED),       # DATA refused
    (GO_AHEAD, Reply(451, "Local error"), RCPT_DEFERRED, ATTEMPT_DEFERRED),      # the message refused
    (GO_AHEAD, Reply(552, "Message too big"), RCPT_FAILED, ATTEMPT_FAILED),
])
def test_the_accepted_recipients_take_the_reply_to_data_or_to_the_end_of_data(data, end, status, result):
    transaction, replies, _ = outcome(TransactionReplies(OK, [OK, OK, OK], data, end))
    final = end or data
    assert (transaction.outcome, transaction.code) == (result, final.code)
    assert replies == [(a, status, final.code, final.message) for a in TO]
