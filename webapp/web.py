"""What the views share: a section or its whole page, a list's pages, ids in a request.

A section of the window is a partial with one root element and a stable id. section_or_page
answers the partial alone to htmx, and the whole page that includes it to a browser that asked
for the URL itself (a reload, a link opened in a new tab); the directory's and the account's
sections, which htmx alone asks for, answer the partial.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from flask import current_app, render_template, request
from flask.json.provider import DefaultJSONProvider

from .core.database import begin_read, db
from .core.directory.lookups import parse_id


class RefusedJSON(ValueError):
    """JSON that parses but that the API does not take; `field` names where (None: the body)."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.field = field


class RequestJSON(DefaultJSONProvider):
    """The app's JSON: a body the rules could only fail on is refused as malformed JSON (a
    ValueError, which Flask answers 400 with the reason): one nested deeper than MAX_DEPTH, one
    with text that is no Unicode (a lone surrogate, such as \\ud800, which no database or
    header can take), or with a number that is not finite (Infinity, NaN, 1e400)."""

    MAX_DEPTH = 32

    def loads(self, s, **kwargs):
        kwargs.setdefault("parse_constant", _not_finite)
        kwargs.setdefault("parse_float", _finite_float)
        try:
            value = super().loads(s, **kwargs)
        except RecursionError:
            raise RefusedJSON(f"the JSON is nested deeper than {self.MAX_DEPTH}") from None
        _check_json(value, None, 0, self.MAX_DEPTH)
        return value


def _not_finite(name: str):
    raise RefusedJSON(f"{name} is no number the API takes")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number) or math.isnan(number):
        raise RefusedJSON(f"{text} is too large a number")
    return number


def _check_json(value, field: str | None, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise RefusedJSON(f"the JSON is nested deeper than {max_depth}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RefusedJSON(f"{field or 'the body'} holds text that is not valid Unicode (a lone surrogate)",
                              field) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, field, depth + 1, max_depth)
            _check_json(item, key if field is None else f"{field}.{key}", depth + 1, max_depth)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, field, depth + 1, max_depth)


# Answered without the session's connection: the static files, and the health checks, which ask
# the database on one of their own and must answer when it cannot be opened (scheduler/health.py).
WITHOUT_SESSION = ("static", "health.healthz", "health.readyz")


def read_only_gets(app) -> None:
    """A GET reads: its transaction begins as one that only reads, which on SQLite waits for no
    writer (the senders commit all the while) and holds none up. The few GETs that write say
    so first (database.end_read), and a write on the way (a session's renewal) goes apart."""

    @app.before_request
    def _begin_read():
        if request.method in ("GET", "HEAD") and request.endpoint not in WITHOUT_SESSION:
            begin_read()


def wants_json() -> bool:
    """Whether the request is the API's: its answers, errors too, are JSON."""
    return request.path.startswith("/api/")


def is_htmx() -> bool:
    """Whether htmx made the request: it swaps in a section, never a whole page."""
    return bool(request.headers.get("HX-Request"))


def section_or_page(section: str, page: str, context: dict, status: int = 200, *,
                    page_context: Callable[[], dict] | None = None):
    """The section alone for htmx; else the page that includes it, with what the page's other
    sections need too (`page_context()`, asked for only then)."""
    if is_htmx():
        return render_template(section, **context), status
    return render_template(page, **{**(page_context() if page_context else {}), **context}), status


@dataclass(frozen=True)
class Pager:
    """Where a list of the window stands: `page` of `pages`, `total` rows, `size` a page."""

    page: int
    pages: int
    total: int
    size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def pager(total: int, page: int | None = None) -> Pager:
    """The page asked for (`page`, else the request's ?page=), kept within the pages there are."""
    size = current_app.config["PAGE_SIZE"]
    pages = max(1, math.ceil(total / size))
    asked = page if page is not None else parse_id(request.values.get("page")) or 1
    return Pager(min(asked, pages), pages, total, size)


def paged_rows(statement, count_statement, page: int | None = None) -> tuple[list, Pager]:
    """One page of the statement's rows (ordered by the caller), and where it stands."""
    found = pager(db.session.scalar(count_statement), page)
    return list(db.session.scalars(statement.offset(found.offset).limit(found.size))), found


def id_arg(name: str) -> int | None:
    """The id in the request's argument `name`, or None when there is none or it is no id."""
    return parse_id(request.values.get(name))


def id_list(values) -> list[int]:
    """The ids among `values`, each once, in order; what is not an id is dropped."""
    return list(dict.fromkeys(found for found in map(parse_id, values) if found is not None))
