"""Passwords, API token digests and secrets at rest."""
from __future__ import annotations

import hashlib
import os
import secrets

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


# A hash to check unknown users against, so that they cost the same time as known ones.
_DUMMY_HASH: dict[tuple[int, int], str] = {}


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when the password matches; spends the same work when there is no user."""
    hasher = _hasher()
    if password_hash is None:
        key = (hasher.time_cost, hasher.memory_cost)
        password_hash = _DUMMY_HASH.setdefault(key, hasher.hash(secrets.token_hex(8)))
        try:
            hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            pass
        return False
    try:
        return hasher.verify(password_hash, password)
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
