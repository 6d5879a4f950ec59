"""Properties of composition, for any subject, display name and body (hypothesis): what a
receiver parses back is what was meant, and no text can add a header field or a recipient."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.compose.conftest import parse
from webapp.core.addresses import Address, AddressError, check_header_value, parse_address
from webapp.core.compose import ComposeError, compose, display_name, wrap_text
from webapp.core.models import MailSenderSettings, OutgoingMessage
from webapp.core.states import ORIGINATION
from webapp.core.tracking import add_to_subject

TRACKING_ID = "ACME-000042"
OURS = ["From", "To", "Subject", "Date", "Message-ID"]
MIME_FIELDS = {"MIME-Version", "Content-Type", "Content-Transfer-Encoding"}
# Text that tries hard to break out of a header: line breaks, NUL, encoded words that decode to
# them, look-alike separators, quotes and address syntax.
NASTY = st.sampled_from(["\r\n", "\n", "\r", "\x00", "Bcc: victim@example.org", "=?utf-8?q?=0D=0ABcc:_x@y.z?=",
                         "=?utf-8?b?Cg==?=", "=?utf-8?q?harmless?=", '"', "\\", "<x@y.z>", ",", ";", ":", "@",
                         "\u2028", "\x85", "€", "ü", "\t", "  ", "=?", "?="])
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=30)), max_size=8).map("".join)


def message(subject: str, from_address: str, body_text: str, body_html: str = "") -> OutgoingMessage:
    return OutgoingMessage(kind=ORIGINATION, from_address=from_address, to_addresses=["customer@example.org"],
                           cc_addresses=[], bcc_addresses=["hidden@example.org"], subject=subject,
                           body_text=body_text, body_html=body_html, attachments=[], tracking_id=TRACKING_ID,
                           keep_case_ownership=False, message_id="<p-1@acme.test>",
                           queued_at=datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc))


def options(charset: str) -> MailSenderSettings:
    return MailSenderSettings(version=1, tracking_id_enabled=True, default_charset=charset, column_width=None,
                              envelope_sender_mailbox=True, training_enabled=False)


def header_safe(value: str) -> bool:
    try:
        check_header_value(value)
        return True
    except AddressError:
        return False


def read_back_text(mime, subtype: str) -> str:
    return mime.get_body(preferencelist=(subtype,)).get_content().replace("\r\n", "\n")


def as_sent(text: str) -> str:
    """A body as it goes out: line ends made LF (CRLF on the wire), ending with one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=TEXT, name=TEXT, body=TEXT, html=st.one_of(st.just(""), TEXT),
       charset=st.sampled_from(["UTF-8", "ISO-8859-1", "US-ASCII"]))
def test_what_is_composed_reads_back_as_meant_and_adds_no_header(subject, name, body, html, charset):
    from_address = Address("support@acme.test", name).formatted()
    try:
        meant_name = display_name(parse_address(from_address).display_name)  # spaces in a phrase collapse
    except AddressError:
        meant_name = None
    try:
        composed = compose(message(subject, from_address, body, html), options(charset))
    except ComposeError:
        # Refused only for a header value that is unsafe (a line break or control character,
        # also inside an encoded word) or a From our own strict parser refuses.
        assert not header_safe(subject) or meant_name is None
        return
    assert header_safe(subject) and meant_name is not None

    data = composed.data
    lines = data.split(b"\r\n")
    assert b"\r" not in b"".join(lines) and b"\n" not in b"".join(lines)  # CRLF only, nothing bare
    assert all(len(line) <= 998 for line in lines)
    mime = parse(data)
    names = [key for key, _ in mime.items()]
    assert names[:len(OURS)] == OURS and set(names[len(OURS):]) <= MIME_FIELDS
    assert mime["Subject"] == add_to_subject(subject, TRACKING_ID)
    (sender,) = mime["From"].addresses
    assert (sender.addr_spec, sender.display_name) == ("support@acme.test", meant_name)
    assert [a.addr_spec for a in mime["To"].addresses] == ["customer@example.org"]
    assert b"hidden@" not in data and "Bcc" not in mime
    if html and not body:
        assert read_back_text(mime, "html") == as_sent(html)
    else:
        assert read_back_text(mime, "plain") == as_sent(body)
        if html:
            assert read_back_text(mime, "html") == as_sent(html)


WORDS = st.lists(st.one_of(st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöü€/:.?=-", min_size=1, max_size=90),
                           st.sampled_from(["\n", "\n\n"])), max_size=60)


@settings(max_examples=300, deadline=None)
@given(words=WORDS, width=st.integers(min_value=1, max_value=120), quote=st.sampled_from(["", "> ", ">> "]))
def test_wrapping_keeps_every_word_whole_and_every_quote_prefix(words, width, quote):
    text = "\n".join(quote + line for line in " ".join(words).replace(" \n ", "\n").split("\n"))
    wrapped = wrap_text(text, width)
    # The same words in the same order: only spaces became line breaks.
    assert wrapped.split() == text.split() if not quote else \
        [w for w in wrapped.split() if w != quote.strip()] == [w for w in text.split() if w != quote.strip()]
    for line in wrapped.split("\n"):
        if quote:
            assert line.startswith(quote) or line == quote.rstrip()
        body = line[len(quote):] if quote else line
        assert len(line) <= width or len(body.split()) <= 1  # only a lone over-long word exceeds it


@pytest.mark.parametrize("width", [None, 0])
def test_a_blank_width_changes_nothing(width):
    text = "a " * 600 + "\n> " + "b " * 300
    assert wrap_text(text, width) == text
