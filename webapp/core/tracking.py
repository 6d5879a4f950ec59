"""Case tracking IDs: making one, writing it into a subject and finding it in one again.

A tracking ID is stored bare (`ACME-000123`: a prefix from the partition's name and the case's
number) and appears in a subject as `[#ACME-000123]`. Pure functions: no Flask, no database.
"""
from __future__ import annotations

import re

# Never more than 40 characters (Case.tracking_id): a prefix of at most 10 and a number.
_PREFIX_LENGTH = 10
_IN_SUBJECT = re.compile(r"\[#([A-Za-z0-9]{1,10}-[0-9]{6,20})\]")


def prefix_for(partition_name: str) -> str:
    """The upper-case letters and digits of the partition's name (at most 10), else "CASE"."""
    prefix = re.sub(r"[^A-Za-z0-9]", "", (partition_name or "").encode("ascii", "ignore").decode())
    return prefix[:_PREFIX_LENGTH].upper() or "CASE"


def make_tracking_id(partition_name: str, case_number: int) -> str:
    """`ACME-000123` for case 123 of partition "Acme"; unique where case numbers are."""
    return f"{prefix_for(partition_name)}-{case_number:06d}"


def subject_tag(tracking_id: str) -> str:
    """How the tracking ID reads in a subject: `[#ACME-000123]`."""
    return f"[#{tracking_id}]"


def find_in_subject(subject: str) -> str | None:
    """The first tracking ID tagged in the subject (upper-cased), or None."""
    match = _IN_SUBJECT.search(subject or "")
    return match.group(1).upper() if match else None


def add_to_subject(subject: str, tracking_id: str) -> str:
    """The subject with the tag appended, unless that tracking ID is in it already (never twice)."""
    subject = subject or ""
    if any(found.upper() == tracking_id.upper() for found in _IN_SUBJECT.findall(subject)):
        return subject
    return f"{subject} {subject_tag(tracking_id)}".strip()
