"""A message's last error in words a person understands.

A refusal by the server is its SMTP code and text, which already say what happened. A
connection that failed has no code: what the engine records then is the network library's
text ("connect: Error connecting to 127.0.0.1 on port 8499: [Errno 111] Connect call failed
(...)"), which this turns into a sentence. The stored text is left as it was; the window shows
it beside the sentence. The sentences are scheduler/connection_words.py's, which the Test button
words its failures with too.
"""
from __future__ import annotations

import re

from ..connection_words import CLOSED, NO_SUCH_HOST, REFUSED, TIMED_OUT, UNREACHABLE, UNTRUSTED, connection_failure

# What the sender writes before the reason for the rest of a batch whose server was unreachable.
_NOT_TRIED = "not tried: the SMTP server could not be reached: "
_WHERE = re.compile(r"(?:Error connecting to|Timed out connecting to) (?P<host>\S+) on port (?P<port>\d+)")

# (what the library says, the kind of failure it is), the first that matches.
_KINDS = [
    (re.compile(r"Errno 111\]|Connection refused|Connect call failed", re.I), REFUSED),
    (re.compile(r"Timed out connecting|timed out|TimeoutError", re.I), TIMED_OUT),
    (re.compile(r"Errno -[235]\]|Name or service not known|name resolution|nodename nor servname|"
                r"No address associated", re.I), NO_SUCH_HOST),
    (re.compile(r"Errno 113\]|No route to host|Errno 101\]|Network is unreachable", re.I), UNREACHABLE),
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", re.I), UNTRUSTED),
    (re.compile(r"Connection reset|Connection lost|Unexpected EOF|Server disconnected|Errno 104\]", re.I), CLOSED),
]


def error_in_words(text: str | None) -> str | None:
    """`text` as a sentence when it is a connection error the engine recorded; else `text` itself."""
    if not text:
        return text
    raw, prefix = text, ""
    if raw.startswith(_NOT_TRIED):
        raw, prefix = raw[len(_NOT_TRIED):], "Not tried: "
    if re.match(r"\d{3}\b", raw):  # the server answered: its code and text say it
        return text
    where = _WHERE.search(raw)
    host, port = (where.group("host"), where.group("port")) if where else ("the SMTP server", None)
    for pattern, kind in _KINDS:
        if pattern.search(raw):
            sentence = connection_failure(kind, host, port)
            return prefix + (sentence[0].lower() + sentence[1:] if prefix else sentence)
    return text
