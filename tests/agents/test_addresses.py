"""Strict address parsing and header safety: webapp.core.addresses, with no app at all."""
import base64
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webapp.core import tracking
from webapp.core.addresses import (
    Address,
    AddressError,
    check_content_type,
    check_header_value,
    parse_address,
    split_address_list,
)


@pytest.mark.parametrize("text, address, name", [
    ("customer@example.org", "customer@example.org", ""),
    ("  customer@Example.ORG ", "customer@example.org", ""),
    ("<customer@example.org>", "customer@example.org", ""),
    ("Jo Customer <Jo.C+tag@example.org>", "Jo.C+tag@example.org", "Jo Customer"),
    ('"Customer, Jo" <jo@example.org>', "jo@example.org", "Customer, Jo"),
    ('"Say \\"hi\\"" <jo@example.org>', "jo@example.org", 'Say "hi"'),
    ("=?UTF-8?Q?J=C3=BCrgen?= <j@example.org>", "j@example.org", "Jürgen"),
    ("Jürgen <j@münchen.de>", "j@xn--mnchen-3ya.de", "Jürgen"),
])
def test_well_formed_addresses_give_the_normalised_address_and_name(text, address, name):
    assert parse_address(text) == Address(address, name)


@pytest.mark.parametrize("text", [
    "a@b.c)<x@y.z>",                 # CVE-2023-27043's confusion of two addresses
    "x@y.z (Comment)",               # comments
    "(Comment) x@y.z",
    "<x@y.z> (Comment)",
    "Team: a@b.c, d@e.f;",           # groups
    "undisclosed-recipients:;",
    "<@route.example:x@y.z>",        # obsolete source route
    '"quoted local"@example.org',    # quoted local part
    "x@[192.0.2.1]",                 # domain literal
    "a@b.c, d@e.f",                  # two addresses in one
    "Name <a@b.c> trailing",
    "Name <<a@b.c>>",
    "Name a@b.c>",
    'Unclosed "quote <a@b.c>',
    "a@@b.c", "@b.c", "a@", "a.@b.c", ".a@b.c", "a..b@c.d", "a@-b.c", "a@b..c",
    "a b@c.d", "", "   ",
    "a@b.c\r\nBcc: victim@example.org",
    "Name\n <a@b.c>",
    "a@b.c\x00",
    "=?UTF-8?Q?=0A?= <a@b.c>",
    "=?UTF-8?B?Cg==?= <a@b.c>",
    "=?UTF-8?Q?x=00?= <a@b.c>",
])
def test_malformed_addresses_are_refused(text):
    with pytest.raises(AddressError):
        parse_address(text)


@pytest.mark.parametrize("value", [
    "Hello\r\nBcc: victim@example.org", "Hello\nthere", "Hello\rthere", "Hello\x00",
    "=?UTF-8?Q?=0A?=", "=?utf-8?q?Hi=0D=0ABcc:_x@y.z?=", "=?UTF-8?Q?=00?=",
    "=?UTF-8?B?Cg==?=", "=?UTF-8?B?DQo=?=", "=?UTF-8?B?AA==?=", "Re: =?UTF-16?B?AAo=?=",
    "=?UTF-8*en?Q?=0A?=", "=?no-such-charset?Q?x?=", "=?UTF-8?B?@@@?=", "=?UTF-8?X?abc?=",
])
def test_header_values_with_line_breaks_or_nul_are_refused_also_inside_encoded_words(value):
    with pytest.raises(AddressError):
        check_header_value(value, "Subject")


@pytest.mark.parametrize("value", ["Where is my order?", "Re: =?UTF-8?Q?caf=C3=A9?=", "Tab\there", "Ünïcödé ✓", ""])
def test_ordinary_header_values_pass_unchanged(value):
    assert check_header_value(value, "Subject") == value


def test_address_lists_split_only_outside_quotes_and_brackets():
    assert split_address_list('"Doe, Jo" <jo@x.org>, a@b.c;\nd@e.f') == ['"Doe, Jo" <jo@x.org>', "a@b.c", "d@e.f"]


def test_formatted_quotes_names_that_need_it():
    assert Address("a@b.c", "Jo Doe").formatted() == "Jo Doe <a@b.c>"
    assert Address("a@b.c", "Doe, Jo").formatted() == '"Doe, Jo" <a@b.c>'
    assert parse_address(Address("a@b.c", 'Say "hi", <x@y.z>').formatted()) == Address("a@b.c", 'Say "hi", <x@y.z>')


def test_content_types_are_bare_type_and_subtype():
    assert check_content_type("Application/PDF") == "application/pdf"
    for bad in ("text/plain; charset=x", "text", "text/plain\r\nX: y", ""):
        with pytest.raises(AddressError):
            check_content_type(bad)


# --- properties ---------------------------------------------------------------------------

BREAKS = st.sampled_from(["\r", "\n", "\x00"])


@given(st.text(), BREAKS, st.text())
def test_any_value_with_cr_lf_or_nul_is_refused(before, bad, after):
    with pytest.raises(AddressError):
        check_header_value(before + bad + after)


@given(st.text(), BREAKS, st.text(), st.sampled_from(["utf-8", "iso-8859-1", "utf-16"]))
def test_any_encoded_word_hiding_cr_lf_or_nul_is_refused(before, bad, after, charset):
    payload = (before + bad + after).encode(charset, errors="ignore") or bad.encode(charset)
    if bad.encode(charset) not in payload:
        payload += bad.encode(charset)
    q = "".join(f"={byte:02X}" for byte in payload)
    b = base64.b64encode(payload).decode()
    for word in (f"=?{charset}?Q?{q}?=", f"=?{charset}?B?{b}?=", f"=?{charset}?b?{b.rstrip('=')}?="):
        with pytest.raises(AddressError):
            check_header_value("Subject " + word)


ATOM = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=12)
LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")


@given(st.lists(ATOM, min_size=1, max_size=3), st.lists(LABEL, min_size=1, max_size=3),
       st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20))
def test_well_formed_addresses_survive_formatting_and_parsing_again(locals_, labels, name):
    address = ".".join(locals_) + "@" + ".".join(labels)
    name = " ".join(name.split())
    parsed = parse_address(Address(address, name).formatted())
    assert parsed.address == address  # the local part keeps its case; these domains are lower case
    assert parsed.display_name == name


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_parsing_anything_either_gives_a_clean_address_or_refuses(text):
    try:
        parsed = parse_address(text)
    except AddressError:
        return
    assert parsed.address.count("@") == 1
    assert not any(char in parsed.address + parsed.display_name for char in "\r\n\x00")
    assert not any(char in parsed.address for char in ' <>()",;:')


def test_tracking_ids_are_readable_and_found_again_in_subjects():
    tracking_id = tracking.make_tracking_id("Acme Corp.", 123)
    assert tracking_id == "ACMECORP-000123"
    subject = tracking.add_to_subject("Re: your order", tracking_id)
    assert subject == "Re: your order [#ACMECORP-000123]"
    assert tracking.add_to_subject(subject, tracking_id) == subject  # never twice
    assert tracking.find_in_subject("Fwd: Re: your order [#acmecorp-000123]") == tracking_id
    assert tracking.find_in_subject("no tag [#bad]") is None
    assert tracking.make_tracking_id("Ωμέγα", 7) == "CASE-000007"
