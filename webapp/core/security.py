"""Passwords, API token digests, secrets at rest, and secrets kept out of every text we store."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from typing import Iterable
from urllib.parse import quote, quote_plus

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from flask import current_app

TOKEN_PREFIX_LENGTH = 8
KEY_FILE_NAME = "secret.key"


# --- passwords ----------------------------------------------------------------------------


def _hasher() -> PasswordHasher:
    return PasswordHasher(
        time_cost=current_app.config["PASSWORD_TIME_COST"],
        memory_cost=current_app.config["PASSWORD_MEMORY_KIB"],
    )


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when the password matches (unknown users are checked against a hash of their own,
    users._unknown_user_hash, so that they cost the same)."""
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    return secrets.token_urlsafe(12)


# --- API tokens ---------------------------------------------------------------------------


def new_api_token() -> tuple[str, str, str]:
    """A fresh token: (token shown once, its prefix, its SHA-256 digest to store)."""
    token = "ms_" + secrets.token_urlsafe(32)
    return token, token[:TOKEN_PREFIX_LENGTH], token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- secrets at rest ----------------------------------------------------------------------


def key_file_path(instance_path: str) -> str:
    return os.path.join(instance_path, KEY_FILE_NAME)


def load_secret_key(instance_path: str, configured: str | None) -> str | None:
    """The Fernet key: the configured one, else the instance's key file, else None."""
    if configured:
        return configured
    path = key_file_path(instance_path)
    if os.path.exists(path):
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    return None


def create_key_file(instance_path: str) -> bool:
    """Writes a new key file readable by its owner only; False when one exists already."""
    path = key_file_path(instance_path)
    os.makedirs(instance_path, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(Fernet.generate_key().decode("ascii"))
    return True


class SecretKeyMissing(RuntimeError):
    pass


def _fernet() -> Fernet:
    key = current_app.config.get("MAILSENDER_SECRET_KEY")
    if not key:
        raise SecretKeyMissing(
            "No secret key: set MAILSENDER_SECRET_KEY or run `flask --app webapp init`."
        )
    return Fernet(key.encode("ascii") if isinstance(key, str) else key)


def encrypt_secret(plain: str) -> str:
    return _fernet().encrypt(plain.encode("utf-8")).decode("ascii")


def decrypt_secret(token: str | None) -> str | None:
    """The plain secret, or None when none is stored or it was made with another key."""
    if not token:
        return None
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken:
        return None


# --- secrets in texts ---------------------------------------------------------------------

SCRUBBED = "[secret]"
# Shorter runs of base64 would match ordinary words; a secret's plain form is always replaced.
_MIN_ENCODED_LENGTH = 6


def _base64_cores(data: bytes) -> list[str]:
    """The base64 characters that `data` alone decides, at each of the three byte offsets it can
    start at inside a longer base64 text (an AUTH PLAIN or XOAUTH2 string, a JSON blob, anything)."""
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        start, end = -(-offset * 8 // 6), (offset + len(data)) * 8 // 6
        for core in {encoded[start:end], encoded[start:end].replace("+", "-").replace("/", "_")}:
            if len(core) >= _MIN_ENCODED_LENGTH:
                cores.append(core)
    return cores


def secret_forms(secret: str, username: str | None = None) -> list[str]:
    """The texts that would give `secret` away: plain, base64 (at any alignment, standard or
    URL-safe, so also inside AUTH PLAIN and XOAUTH2 strings), URL-encoded and JSON-escaped."""
    data = secret.encode("utf-8")
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
             secret.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')}
    forms.update(_base64_cores(data))
    if username is not None:
        user = username.encode("utf-8")
        for wrapped in (b"\0" + user + b"\0" + data, b"user=" + user + b"\x01auth=Bearer " + data + b"\x01\x01"):
            forms.add(base64.b64encode(wrapped).decode("ascii"))
    return [form for form in forms if form]


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/_-]+")


def _private_key(secret: str) -> str | None:
    if not secret.lstrip().startswith("{"):
        return None
    try:
        key = json.loads(secret)
    except ValueError:
        return None
    return key.get("private_key") if isinstance(key, dict) and isinstance(key.get("private_key"), str) else None


def _pattern(form: str) -> str:
    pattern = re.escape(form).replace("\\%", "%")
    # A server may echo %2f for %2F: the hex digits of a URL escape match in either case.
    pattern = re.sub(r"%([0-9A-F]{2})", lambda m: "%(?i:" + m.group(1) + ")", pattern)
    if _BASE64_TEXT.fullmatch(form):
        # With the characters around it that the secret shares with its neighbours, and the padding.
        pattern = "[A-Za-z0-9+/_-]{0,2}" + pattern + "[A-Za-z0-9+/_-]{0,2}={0,2}"
    return pattern


class Scrubber:
    """Replaces every form of the secrets it knows (secret_forms) with SCRUBBED: the one way a
    text that a server, a token endpoint or an error wrote is made safe to store or show."""

    def __init__(self, secrets: Iterable[str | None] = (), username: str | None = None):
        self._username = username
        self._forms: set[str] = set()
        self._regex: re.Pattern | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        self._forms.update(secret_forms(secret, self._username))
        # A service-account key's private key is what a token endpoint's error would quote.
        private_key = _private_key(secret)
        if private_key:
            self._forms.update(secret_forms(private_key))
        self._regex = None

    def __call__(self, text: str | None) -> str | None:
        if not text or not self._forms:
            return text
        if self._regex is None:
            self._regex = re.compile("|".join(_pattern(form) for form in sorted(self._forms, key=len, reverse=True)))
        return self._regex.sub(SCRUBBED, text)
