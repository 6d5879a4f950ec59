"""Departments, mailboxes and users over the API."""
from . import ApiError, bp, json_body, require_admin  # noqa: F401
