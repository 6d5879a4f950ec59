"""What a failed connection to an SMTP server means, in the one set of sentences the window shows.

A connection that fails has no SMTP code, only the network library's exception. The Test button
(smtp_check.failure_in_words) still has that exception; the Monitor (monitor/errors.py) has only
the text the engine stored from it. Each tells the kind of failure its own way, and both word it
from here, so that the same failure reads the same in the Test result and in the Monitor's list.
"""
from __future__ import annotations

REFUSED, NO_SUCH_HOST, UNTRUSTED, TIMED_OUT, UNREACHABLE, CLOSED = (
    "refused", "no_such_host", "untrusted", "timed_out", "unreachable", "closed",
)

# {where} is "host port N", {host} the host alone, {why} what the certificate check said.
SENTENCES = {
    REFUSED: "Nothing is listening on {where} (connection refused)",
    NO_SUCH_HOST: "The name {host} does not resolve (no such host in DNS)",
    UNTRUSTED: "The certificate of {where} is not trusted ({why})",
    TIMED_OUT: "The server at {where} did not answer in time (the connection timed out)",
    UNREACHABLE: "There is no route to {where} (the network or host is unreachable)",
    CLOSED: "The server at {where} closed the connection without an answer",
}


def connection_failure(kind: str, host: str, port: int | str | None = None,
                       why: str = "certificate verify failed") -> str:
    """The sentence for a failed connection of `kind` to `host` (and `port`, where known)."""
    where = f"{host} port {port}" if port is not None else host
    return SENTENCES[kind].format(where=where, host=host, why=why)
