"""Sections that poll answer 204 when nothing they show changed, without rendering.

htmx leaves a section alone on a 204 (base.html's responseHandling, as htmx's default); a 304
would be swapped in, empty. So the section's root element carries the tag of what it shows
(`hx-headers` with If-None-Match), each poll says what the window has, and the answer is the
section only when the tag differs. A tag is a digest of the figures the section shows, made
from them before any template is rendered.
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable

from flask import make_response, request

from ..web import is_htmx


def tag_of(*figures) -> str:
    """The tag of a section showing `figures` (anything JSON can write, dates as text)."""
    text = json.dumps(figures, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def age_step(seconds: float | None):
    """An age as precisely as a section shows it: seconds under two minutes, else minutes."""
    if seconds is None:
        return None
    return int(seconds) if seconds < 120 else f"{int(seconds // 60)} min"


def polled(tag: str, render: Callable[[], tuple | str]):
    """204 when the htmx request already shows `tag`; else what `render()` answers, tagged."""
    if is_htmx() and f'"{tag}"' in request.headers.get("If-None-Match", ""):
        answer = make_response("", 204)
    else:
        answer = make_response(render())
    answer.headers["ETag"] = f'"{tag}"'
    return answer
