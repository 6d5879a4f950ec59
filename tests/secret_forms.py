"""Looking for a secret everywhere: the forms that would give it away, and every text the
database holds, so that a test can say where one leaked and in which form."""
from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

from sqlalchemy import String, Text, select

from webapp.core.database import db


def giveaway_forms(secret: str, username: str | None = None) -> dict[str, str]:
    """name → text: the secret plain, in base64, URL-encoded, and inside AUTH PLAIN and XOAUTH2."""
    data = secret.encode("utf-8")
    forms = {"plain": secret, "base64": base64.b64encode(data).decode("ascii"),
             "url-encoded": quote(secret, safe=""), "form-encoded": quote_plus(secret)}
    if username is not None:
        user = username.encode("utf-8")
        forms["AUTH PLAIN"] = base64.b64encode(b"\0" + user + b"\0" + data).decode("ascii")
        forms["XOAUTH2"] = base64.b64encode(b"user=" + user + b"\x01auth=Bearer " + data + b"\x01\x01").decode("ascii")
    return forms


def leaks(text: str, secrets: dict[str, str], username: str | None = None) -> list[str]:
    """'smtp_password as base64', ... for each form of each secret (name → value) in `text`."""
    return [f"{name} as {form}" for name, secret in secrets.items()
            for form, value in giveaway_forms(secret, username).items() if value in text]


def database_texts(app) -> list[tuple[str, str]]:
    """(table.column, value) for every text and string value in every table."""
    found = []
    with app.app_context():
        for table in db.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, (String, Text))]
            json_columns = [c for c in table.columns if c.type.__class__.__name__ == "JSON"]
            if not columns and not json_columns:
                continue
            for row in db.session.execute(select(*columns, *json_columns)):
                for column, value in zip([*columns, *json_columns], row):
                    if value is not None:
                        found.append((f"{table.name}.{column.name}", value if isinstance(value, str) else repr(value)))
    return found
