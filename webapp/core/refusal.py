"""Refusal: a request the rules turn down, with what the person asking needs to put it right.

Every rule that refuses input raises a Refusal, or a kind of it named for the rule
(DirectoryError, MessageError, FromRuleError, CheckRefused, ActionRefused). The web answers it
in one place (webapp/errors.py): as JSON under /api/ ({"error", "fields"}, with Retry-After on a
429) and as a page or a section elsewhere, with its status, after rolling back whatever the
request had begun to write. Never as a 500.
"""
from __future__ import annotations


class Refusal(Exception):
    """`status`: the HTTP answer (400, 403, 404, 409, 413, 422, 429); `message`: a sentence for a
    person; `fields`: every bad input by its API name, with why; `retry_after`: seconds, for a 429."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None, *,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = dict(fields or {})
        self.retry_after = retry_after

    @property
    def field(self) -> str | None:
        """The first input at fault, if the refusal names one."""
        return next(iter(self.fields), None)
