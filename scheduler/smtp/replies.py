"""SMTP replies and what they mean: pure functions of the bytes and the codes, no sockets.

The pipeline (smtp/pipeline.py) sends a transaction's commands and collects the server's
replies, in order, in a TransactionReplies; `transaction_outcome` says what they did to each
recipient. The pipeline's only decisions of its own (whether to send DATA, the message, RSET)
are taken with the same predicates, so what it does and what it records cannot disagree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from webapp.core.states import (
    ANSWER_CONFIGURATION,
    ANSWER_QUOTA,
    ANSWER_THROTTLED,
    ANSWER_TRANSIENT,
    ATTEMPT_ACCEPTED,
    ATTEMPT_DEFERRED,
    ATTEMPT_FAILED,
    RCPT_ACCEPTED,
    RCPT_DEFERRED,
    RCPT_FAILED,
    RCPT_UNCLEAR,
)

from ..outcomes import (
    RECIPIENT_STATUS,
    STAGE_DATA,
    STAGE_END,
    STAGE_MAIL,
    STAGE_RCPT,
    Answer,
    RecipientReply,
    Transaction,
    classify,
)

COMPLETED, WILL_FORWARD, START_INPUT, TOO_MANY_RECIPIENTS = 250, 251, 354, 452
# A reply longer than this (a server that is not speaking SMTP) drops the connection.
MAX_REPLY_BYTES = 64 * 1024


class Reply(NamedTuple):
    code: int
    message: str


class MalformedReply(Exception):
    """What arrived is not an SMTP reply: nothing more on that connection can be trusted."""


def take_reply(buffer: bytearray) -> Reply | None:
    """The first complete reply in `buffer`, taken off it; None while it is incomplete.

    A reply is one or more lines of a three-digit code, "-" on every line but the last, and
    text; the lines' texts are joined with newlines. MalformedReply for a line that is no such
    thing, or for more than MAX_REPLY_BYTES without a complete reply.
    """
    lines, offset = [], 0
    while (end := buffer.find(b"\n", offset)) != -1:
        line = bytes(buffer[offset:end + 1])
        offset = end + 1
        if not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
            raise MalformedReply(f"malformed SMTP reply line: {line[:80]!r}")
        lines.append(line)
        if line[3:4] != b"-":
            del buffer[:offset]
            text = "\n".join(part[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape") for part in lines)
            return Reply(int(line[:3]), text)
    if len(buffer) > MAX_REPLY_BYTES:
        raise MalformedReply("SMTP reply too long")
    return None


# "250 2.0.0 Ok: queued as 4F2A1" (Postfix), "250 OK id=1u2v3w-000ABC-1x" (Exim).
_QUEUE_ID = re.compile(r"\bqueued as ([A-Za-z0-9][A-Za-z0-9._@-]{0,99})|\bid=([A-Za-z0-9][A-Za-z0-9._@-]{0,99})")


def queue_id(text: str | None) -> str | None:
    """The server's id for a message it accepted, where its reply names one."""
    match = _QUEUE_ID.search(text or "")
    return (match[1] or match[2]) if match else None


def recipient_status(answer: Answer) -> str:
    return RECIPIENT_STATUS[answer.kind]


def attempt_outcome(status: str) -> str:
    """A recipient status as the outcome of a whole transaction."""
    return {RCPT_ACCEPTED: ATTEMPT_ACCEPTED, RCPT_DEFERRED: ATTEMPT_DEFERRED, RCPT_FAILED: ATTEMPT_FAILED,
            RCPT_UNCLEAR: ATTEMPT_DEFERRED}[status]


def accepts_recipient(code: int) -> bool:
    return code in (COMPLETED, WILL_FORWARD)


def holds_over(code: int, accepted_so_far: int) -> bool:
    """A 452 after some recipient was accepted: too many for one transaction, so the rest go in
    the next one, at once (RFC 5321 4.5.3.1.10). Before any was accepted it is a deferral."""
    return code == TOO_MANY_RECIPIENTS and accepted_so_far > 0


@dataclass
class TransactionReplies:
    """What the server answered in one transaction, in the order the commands went."""

    mail: Reply
    rcpts: list[Reply | None] = field(default_factory=list)  # per recipient; None: not offered (held over)
    data: Reply | None = None  # to DATA; None when DATA was not sent
    end: Reply | None = None  # to the end of data; None when the message itself was not sent

    @property
    def final(self) -> Reply | None:
        """The reply that decides the accepted recipients: the end of data's, else DATA's."""
        return self.end if self.end is not None else self.data


def transaction_outcome(recipients: list[str], replies: TransactionReplies) -> tuple[Transaction, list[str]]:
    """The transaction the replies make (a DeliveryAttempt, with each recipient's code and text)
    and the recipients it holds over for the next transaction."""
    mail = replies.mail
    if mail.code != COMPLETED:
        answer = classify(STAGE_MAIL, mail.code, mail.message)
        status = recipient_status(answer)
        return Transaction(attempt_outcome(status), mail.code, f"MAIL FROM refused: {mail.message}",
                           [RecipientReply(a, status, mail.code, mail.message) for a in recipients],
                           answer.kind, answer.hint_seconds), []
    answered: dict[str, RecipientReply] = {}
    answers: dict[str, Answer] = {}
    accepted: list[str] = []
    held_over: list[str] = []
    for index, address in enumerate(recipients):
        reply = replies.rcpts[index] if index < len(replies.rcpts) else None
        if reply is None:
            held_over.append(address)
        elif accepts_recipient(reply.code):
            accepted.append(address)
        elif holds_over(reply.code, len(accepted)):
            held_over.append(address)
        else:
            answers[address] = answer = classify(STAGE_RCPT, reply.code, reply.message)
            answered[address] = RecipientReply(address, recipient_status(answer), reply.code, reply.message)
    if not accepted:
        refused = [answered[a] for a in recipients if a in answered]
        outcome = ATTEMPT_DEFERRED if any(r.status == RCPT_DEFERRED for r in refused) else ATTEMPT_FAILED
        # The transaction's class: the one that holds the message back longest, of its refusals.
        first = min((answers[a] for a in recipients if a in answers), key=_precedence,
                    default=Answer(ANSWER_TRANSIENT))
        return Transaction(outcome, refused[0].code if refused else None, "every recipient refused", refused,
                           first.kind, first.hint_seconds), held_over
    final = replies.final
    if final is None:
        code, text, answer = None, "no reply to DATA", Answer(ANSWER_TRANSIENT)
    else:
        code, text = final.code, final.message
        answer = classify(STAGE_END if replies.end is not None else STAGE_DATA, code, text)
    status = RCPT_ACCEPTED if code == COMPLETED else recipient_status(answer)
    for address in accepted:
        answered[address] = RecipientReply(address, status, code, text)
    return Transaction(attempt_outcome(status), code, text, [answered[a] for a in recipients if a in answered],
                       answer.kind, answer.hint_seconds, queue_id(text) if code == COMPLETED else None), held_over


def _precedence(answer: Answer) -> int:
    """Among a transaction's refusals, which names it: a route's fault first, then throttling."""
    return {ANSWER_CONFIGURATION: 0, ANSWER_QUOTA: 1, ANSWER_THROTTLED: 2, ANSWER_TRANSIENT: 3}.get(answer.kind, 4)
