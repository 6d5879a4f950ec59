"""Ids as forms, JSON and URLs carry them: one parser (webapp.core.directory.lookups.parse_id)."""
import pytest

from webapp.core.directory.lookups import parse_id


@pytest.mark.parametrize("value, expected", [(12, 12), ("12", 12), (" 7 ", 7), ("000123", 123),
                                             (2**31 - 1, 2**31 - 1)])
def test_a_whole_number_from_one_is_an_id(value, expected):
    assert parse_id(value) == expected


@pytest.mark.parametrize("value", [None, "", True, False, 0, "0", -3, "-3", "+3", 5.0, "5.0", "1e3", "²", "٣",
                                   "1" * 19, 2**31, "9999999999", "12a", [], {}])
def test_anything_else_is_no_id(value):
    assert parse_id(value) is None
