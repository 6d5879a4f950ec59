"""Paging for every API collection: {"items": [...], "next": CURSOR_OR_NULL}, keyset on id.

A cursor is the id of the last item of the page before, so a page never skips or repeats a
row when rows are added or deleted in between. Use it as

    rows, next_cursor = page_select(select(Mailbox).where(...), Mailbox.id)
    return paged(rows, next_cursor, mailbox_json)

or `page_items(list_of_rows)` for a list already loaded (each row with an `id`).
"""
from __future__ import annotations

from flask import current_app, jsonify, request

from ..core.database import db
from ..core.directory.lookups import parse_id
from . import ApiError

MAX_LIMIT = 500


def paging_args() -> tuple[int, int | None]:
    """?limit= (1..500, the instance's PAGE_SIZE by default) and ?cursor=, or a 400 naming the bad one."""
    fields = {}
    limit = current_app.config["PAGE_SIZE"]
    raw_limit = request.args.get("limit")
    if raw_limit not in (None, ""):
        asked = parse_id(raw_limit)  # a whole number from 1, as an id is
        if asked is None or asked > MAX_LIMIT:
            fields["limit"] = f"must be a whole number from 1 to {MAX_LIMIT}"
        else:
            limit = asked
    cursor = None
    raw_cursor = request.args.get("cursor")
    if raw_cursor not in (None, ""):
        cursor = parse_id(raw_cursor)
        if cursor is None:
            fields["cursor"] = "is not a cursor this API gave out"
    if fields:
        raise ApiError(400, "Bad paging parameters.", fields)
    return limit, cursor


def page_select(statement, id_column) -> tuple[list, str | None]:
    """One page of the statement's rows in id order, and the cursor of the next page (or None)."""
    limit, cursor = paging_args()
    if cursor is not None:
        statement = statement.where(id_column > cursor)
    rows = list(db.session.scalars(statement.order_by(id_column).limit(limit + 1)))
    return _split(rows, limit)


def page_items(items) -> tuple[list, str | None]:
    """The same paging over rows already loaded (for lists that a rule function answers)."""
    limit, cursor = paging_args()
    rows = sorted((row for row in items if cursor is None or row.id > cursor), key=lambda row: row.id)
    return _split(rows[: limit + 1], limit)


def _split(rows: list, limit: int) -> tuple[list, str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, str(rows[-1].id)
    return rows, None


def paged(rows: list, next_cursor: str | None, to_json):
    """The collection answer."""
    return jsonify(items=[to_json(row) for row in rows], next=next_cursor)
