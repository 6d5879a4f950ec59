"""The demo that `make run` serves: sample data and a local SMTP server that captures mail.

A production `serve` never starts any of this.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes, policy

from flask import current_app
from sqlalchemy import select

from .cli import FIRST_ADMIN, admin_password_from_environment, initialise
from .core.database import db
from .core.directory.lookups import root_department
from .core.directory.users import create_user
from .core.models import Department, Mailbox, MailSenderSettings, User
from .core.security import generate_password, hash_password

DEPARTMENTS = ("Sales", "Support")
MAILBOXES = (  # address, name, department (None: root), priority
    ("info@example.com", "Example Info", None, 5),
    ("sales@example.com", "Example Sales", "Sales", 3),
    ("support@example.com", "Example Support", "Support", 1),
    ("billing@example.com", "Example Billing", "Support", 4),
)
AGENTS = (("alice", "Sales"), ("bob", "Support"))
# The Monitor's notification goes to the administrators' addresses; it lands in the capture too.
ADMIN_EMAIL = "admin@example.com"


def _credentials() -> dict:
    """The demo passwords, made once and kept in the instance folder so each run prints the same."""
    path = os.path.join(current_app.instance_path, "demo-credentials.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    else:
        saved = {name: generate_password() for name in (FIRST_ADMIN, *(agent for agent, _ in AGENTS))}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(saved, handle)
    if admin_password_from_environment():
        saved[FIRST_ADMIN] = admin_password_from_environment()
    return saved


def seed_demo(smtp_port: int) -> list[str]:
    """Creates what is missing of the demo and returns the lines to print."""
    passwords = _credentials()
    initialise(admin_password=passwords[FIRST_ADMIN])
    admin = db.session.scalars(select(User).where(User.username == FIRST_ADMIN)).one()
    if not admin.email:
        admin.email = ADMIN_EMAIL
    partition = admin.partition
    root = root_department(partition.id)
    departments = {}
    for name in DEPARTMENTS:
        department = db.session.scalars(
            select(Department).where(Department.partition_id == partition.id, Department.name == name)
        ).first()
        if department is None:
            department = Department(partition_id=partition.id, name=name, parent_id=root.id)
            db.session.add(department)
            db.session.flush()
        departments[name] = department
    for address, name, department_name, priority in MAILBOXES:
        exists = db.session.scalars(
            select(Mailbox).where(Mailbox.partition_id == partition.id, Mailbox.address == address)
        ).first()
        if exists is None:
            department = departments[department_name] if department_name else root
            db.session.add(Mailbox(partition_id=partition.id, address=address, name=name,
                                   department_id=department.id, priority=priority))
    for username, department_name in AGENTS:
        user = db.session.scalars(select(User).where(User.username == username)).first()
        if user is None:
            create_user(partition, username, passwords[username], "agent",
                        email=f"{username}@example.com", departments=[departments[department_name]])
    # The demo's passwords are the ones printed, whatever an earlier run set.
    for user in db.session.scalars(select(User).where(User.username.in_(list(passwords)))):
        user.password_hash = hash_password(passwords[user.username])
    settings = db.session.scalars(
        select(MailSenderSettings).where(MailSenderSettings.partition_id == partition.id)
    ).one()
    if (settings.smtp_host, settings.smtp_port) != ("127.0.0.1", smtp_port):
        settings.smtp_host, settings.smtp_port = "127.0.0.1", smtp_port
        settings.version += 1
    if settings.origination_from_mailbox_id is None:
        # So that an agent can write a new message at once; each picks among their own mailboxes.
        info = db.session.scalars(select(Mailbox).where(Mailbox.partition_id == partition.id,
                                                        Mailbox.address == MAILBOXES[0][0])).one()
        settings.origination_from_mailbox_id = info.id
        settings.allow_change_origination_from = settings.allow_change_reply_from = True
        settings.version += 1
        settings.render_version = settings.version
    lines = [f"Demo users (partition {partition.name!r}):"]
    lines += [f"  {name:<6} password {password}" for name, password in passwords.items()]
    lines.append("The senders start stopped: press Start in the Mail Sender window.")
    # Committing last: on SQLite every transaction holds the write lock until it ends.
    db.session.commit()
    return lines


# A captured mail's file: the capture time in nanoseconds (see _CaptureHandler), nothing that names a path.
CAPTURED_NAME = re.compile(r"\A[0-9]+\.eml\Z")
ENVELOPE_FROM, ENVELOPE_TO = "X-Captured-Mail-From", "X-Captured-Rcpt-To"


@dataclass(frozen=True)
class CapturedMail:
    name: str
    captured_at: datetime
    sender: str
    to: str
    subject: str
    envelope_from: str
    envelope_to: str
    text: str  # the message as received, headers and body


def captured_names(folder: str) -> list[str]:
    """The captured mails' file names, newest first."""
    if not os.path.isdir(folder):
        return []
    return sorted((name for name in os.listdir(folder) if CAPTURED_NAME.match(name)),
                  key=lambda name: int(name[:-4]), reverse=True)


def read_captured(folder: str, name: str) -> CapturedMail | None:
    """The captured mail in the file `name`, or None when there is no such mail."""
    if not CAPTURED_NAME.match(name):
        return None
    try:
        with open(os.path.join(folder, name), "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    message = message_from_bytes(raw, policy=policy.default)
    as_sent = message_from_bytes(raw, policy=policy.compat32)

    def header(field: str) -> str:
        # Python 3.11's header parser raises on some malformed addresses ("a@["): show those as sent.
        try:
            return str(message.get(field, ""))
        except Exception:  # any header the parser cannot read is shown as it came
            return str(as_sent.get(field, ""))

    received = raw.split(b"\r\n", 2)[-1]  # without the two envelope lines the capture put first
    return CapturedMail(
        name=name,
        captured_at=datetime.fromtimestamp(int(name[:-4]) / 1e9, timezone.utc),
        sender=header("From"),
        to=", ".join(header(field) for field in ("To", "Cc") if as_sent.get(field)),
        subject=header("Subject"),
        envelope_from=header(ENVELOPE_FROM),
        envelope_to=header(ENVELOPE_TO),
        text=received.decode("utf-8", "replace"),
    )


class _CaptureHandler:
    def __init__(self, folder: str):
        self.folder = folder

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}.eml"
        header = (f"{ENVELOPE_FROM}: {envelope.mail_from}\r\n"
                  f"{ENVELOPE_TO}: {', '.join(envelope.rcpt_tos)}\r\n").encode("utf-8")
        with open(os.path.join(self.folder, name), "wb") as handle:
            handle.write(header + envelope.original_content)
        return "250 Message captured"


def start_capture_server(folder: str, port: int):
    """An SMTP server on loopback that keeps every message it gets as a file in `folder`."""
    from aiosmtpd.controller import Controller

    os.makedirs(folder, exist_ok=True)
    controller = Controller(_CaptureHandler(folder), hostname="127.0.0.1", port=port)
    controller.start()
    return controller
