"""The Scrubber: every form that would give a secret away is replaced, and nothing else."""
from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from tests.secret_forms import giveaway_forms
from webapp.core.security import SCRUBBED, Scrubber

SECRET = "p@ss/w0rd+Secret!"
USER = "relay@acme.test"


@pytest.mark.parametrize("form", sorted(giveaway_forms(SECRET, USER)))
def test_each_giveaway_form_is_replaced(form):
    text = f"535 5.7.8 you sent {giveaway_forms(SECRET, USER)[form]} here"
    assert Scrubber([SECRET], username=USER)(text) == f"535 5.7.8 you sent {SCRUBBED} here"


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"abc", b"\x00other-user\x00"])
def test_base64_of_the_secret_inside_any_other_base64_is_found_at_every_alignment(prefix):
    encoded = base64.b64encode(prefix + SECRET.encode() + b"-and-more").decode()
    scrubbed = Scrubber([SECRET])(encoded)
    # What is left is about what the prefix and the rest take in base64: no run of the secret's.
    left = scrubbed.replace(SCRUBBED, "", 1)
    assert SCRUBBED in scrubbed and len(left) <= len(base64.b64encode(prefix + b"-and-more")) + 4


def test_url_safe_base64_and_escapes_in_lower_case_are_found():
    url_safe = base64.urlsafe_b64encode(SECRET.encode()).decode()
    lower = quote(SECRET, safe="").replace("%2F", "%2f").replace("%2B", "%2b")
    assert Scrubber([SECRET])(f"{url_safe} {lower} {quote_plus(SECRET)}") == f"{SCRUBBED} {SCRUBBED} {SCRUBBED}"


def test_a_service_account_key_is_scrubbed_with_its_private_key():
    private_key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    key = json.dumps({"type": "service_account", "client_email": "a@b.test", "private_key": private_key})
    quoted = json.dumps({"key": private_key})
    assert private_key not in Scrubber([key])(f"error: {private_key}")
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in Scrubber([key])(quoted)


def test_texts_without_a_secret_are_left_as_they_are():
    text = "550 5.1.1 <customer@example.test>: Recipient address rejected: User unknown in virtual table"
    assert Scrubber([SECRET, "another-Secret-9"], username=USER)(text) == text
    assert Scrubber([])(text) == text and Scrubber([None, ""])(None) is None
