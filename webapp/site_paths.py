"""Where a page may send a browser back to: a path of this site, never an address elsewhere."""
from urllib.parse import urlsplit

from flask import request, url_for


def local_path(target: str | None) -> str | None:
    """`target` as a path of this site with its query, or None. A full URL counts only when its
    host is this request's: anywhere else, returning there after a login would be an open redirect."""
    if not target or any(char == "\\" or ord(char) < 32 for char in target):
        return None  # browsers read a backslash as a slash, so that a path could name another host
    parts = urlsplit(target)
    if (parts.scheme or parts.netloc) and (parts.scheme not in ("http", "https") or parts.netloc != request.host):
        return None
    if not parts.path.startswith("/") or parts.path.startswith("//") or parts.path == url_for("auth.login"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")
