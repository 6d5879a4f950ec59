"""A mailbox or user address: syntax only (no DNS), strictly, with no header injection."""
import pytest

from webapp.core.directory.checks import check_address


@pytest.mark.parametrize("address", [
    "", "   ", "no-at-sign", "two@@acme.test", "a b@acme.test", "Name <a@acme.test>", '"quoted"@acme.test',
    "a@[127.0.0.1]", "<a@acme.test>", "a..b@acme.test", "a@acme.test\r\nBcc: x@evil.test",
    "a@acme.test\n", "a\x00@acme.test", "jö@acme.test", "a@-acme.test", "x" * 250 + "@acme.test",
    "a@acme.test,b@acme.test", None, 42,
])
def test_a_bad_address_is_refused_with_a_reason(address):
    with pytest.raises(ValueError) as caught:
        check_address(address)
    assert str(caught.value)


@pytest.mark.parametrize("address, normal", [
    ("support@acme.test", "support@acme.test"),
    ("  Sales.Team@ACME.Test ", "Sales.Team@acme.test"),
    ("first.last+tag@sub.example.com", "first.last+tag@sub.example.com"),
    ("x@bücher.example", "x@xn--bcher-kva.example"),
])
def test_a_good_address_comes_back_in_its_normal_form(address, normal):
    assert check_address(address) == normal
