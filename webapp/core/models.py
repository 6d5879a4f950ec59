"""The schema. Every table a partition owns carries partition_id, and every query filters by it.

No Flask views here: the engine (scheduler/) and the views both import this module.
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.ext.associationproxy import association_proxy
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .clock import utcnow
from .database import db
from .settings.fields import DEFAULTS
from .states import (
    CHANNEL_OFF,
    QUEUED,
    RAW_COPY_STATES,
    RCPT_PENDING,
    ROLE_ADMIN,
    ROLE_AGENT,
    SCHEDULED,
    WANTED_STOPPED,
)

# The largest value an INTEGER column (every id, every whole-number setting) holds on PostgreSQL.
INTEGER_MAX = 2**31 - 1


def sqlite_time(moment: datetime) -> str:
    """A moment as TZDateTime stores it on SQLite (through SQLAlchemy): UTC text that sorts as the
    time. For values handed to the driver directly."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def from_sqlite_time(text: str) -> datetime:
    """The moment of a TZDateTime value read straight from SQLite's driver."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


class TZDateTime(db.TypeDecorator):
    """A UTC timestamp that comes back timezone-aware on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        if value is not None and dialect.name == "sqlite":
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


# --- tenants and nodes --------------------------------------------------------------------


class Partition(db.Model):
    __tablename__ = "partition"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    # What the administrator asked of this partition's senders on every node.
    senders_wanted: Mapped[str] = mapped_column(String(10), default=WANTED_STOPPED)
    senders_wanted_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class Node(db.Model):
    """One running server process. Its lease on the name keeps a twin from multiplying senders."""

    __tablename__ = "node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The token of the process that holds the lease, fresh for each life of a node (a
    # process that lost its lease and took it again is another life): claims carry it.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(TZDateTime)
    # Where that process runs, so that a restart on the same host can see that it died and
    # take the name at once: the host's name, its process id, and what tells that process from
    # a later one given the same id (scheduler/node.py, process_identity).
    lease_host: Mapped[str | None] = mapped_column(String(255))
    lease_pid: Mapped[int | None] = mapped_column(Integer)
    lease_process: Mapped[str | None] = mapped_column(String(200))
    # When this life of the node took its name, and the product version it runs (core/version.py).
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    version: Mapped[str | None] = mapped_column(String(64))
    last_seen: Mapped[datetime | None] = mapped_column(TZDateTime)
    # When it last shut down cleanly (None while it runs, and after a crash: a node whose lease
    # ran out without it is listed as dead, scheduler/status.py).
    stopped_at: Mapped[datetime | None] = mapped_column(TZDateTime)


class ForgottenNode(db.Model):
    """A node an administrator of a partition forgot: not listed in that partition's status while
    it has not started again since (Node.started_at, set each time it takes its name). Nodes serve
    every partition, so forgetting one is each partition's own: another still sees it dead."""

    __tablename__ = "forgotten_node"

    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"), primary_key=True)
    forgotten_at: Mapped[datetime] = mapped_column(TZDateTime)


class SenderInstance(db.Model):
    """One sender that a node defines for a partition, with its heartbeat."""

    __tablename__ = "sender_instance"
    __table_args__ = (UniqueConstraint("node_id", "partition_id", "slot"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"))
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)
    running: Mapped[bool] = mapped_column(Boolean, default=False)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    last_batch_end_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Since when the sender runs but cannot deliver (the server unreachable): last_error says why.
    undeliverable_since: Mapped[datetime | None] = mapped_column(TZDateTime)

    node: Mapped[Node] = relationship()


class SendSlot(db.Model):
    """One message sent under the partition's rate limit, shared by every node (scheduler/rate.py).

    Slots older than one product minute are deleted as new ones are taken, so the table stays tiny.
    """

    __tablename__ = "send_slot"
    __table_args__ = (Index("ix_send_slot_partition_taken", "partition_id", "taken_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"))
    # The database's clock, so that nodes with skewed clocks agree on the window.
    taken_at: Mapped[datetime] = mapped_column(TZDateTime)


# --- directory ----------------------------------------------------------------------------


class Department(db.Model):
    __tablename__ = "department"
    __table_args__ = (UniqueConstraint("partition_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # NULL only for the partition's root.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("department.id"))

    @property
    def is_root(self) -> bool:
        return self.parent_id is None


# A mailbox's priority unless one is given; a message takes its mailbox's.
DEFAULT_PRIORITY = 5


class Mailbox(db.Model):
    __tablename__ = "mailbox"
    __table_args__ = (UniqueConstraint("partition_id", "address"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    department_id: Mapped[int] = mapped_column(ForeignKey("department.id"))
    # Lower numbers are sent first when Mail Sender Priority is on.
    priority: Mapped[int] = mapped_column(Integer, default=DEFAULT_PRIORITY)

    department: Mapped[Department] = relationship()


user_department = Table(
    "user_department",
    db.metadata,
    Column("user_id", ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True),
    Column("department_id", ForeignKey("department.id"), primary_key=True),
)


class User(UserMixin, db.Model):
    __tablename__ = "user_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    # Unique across partitions: a login names a user, not a partition.
    username: Mapped[str] = mapped_column(String(150), unique=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    role: Mapped[str] = mapped_column(String(10), default=ROLE_AGENT)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bumped when all the user's sessions must end (disabled, password changed or reset):
    # sessions carry the number.
    session_version: Mapped[int] = mapped_column(Integer, default=1)
    reply_from_mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailbox.id", ondelete="SET NULL"))
    origination_from_mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailbox.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)

    departments: Mapped[list[Department]] = relationship(secondary=user_department, order_by="Department.id")
    partition: Mapped[Partition] = relationship()

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive users
        return not self.disabled

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"


class UserSession(db.Model):
    """One login in one browser. Its cookie carries a key; the row keeps only the key's digest.

    Logging out deletes the row, and a session idle for MAILSENDER_SESSION_IDLE_MINUTES no
    longer counts: a copied cookie then opens nothing.
    """

    __tablename__ = "user_session"
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(TZDateTime, index=True)


class LoginFailure(db.Model):
    """One failed login, counted against its username and its client address for a sliding
    window (webapp/core/directory/login_throttle.py). Rows older than the window are deleted.

    No partition owns it: the username may name no user, and an address tries any.
    """

    __tablename__ = "login_failure"
    __table_args__ = (
        Index("ix_login_failure_username_at", "username", "at"),
        Index("ix_login_failure_address_at", "address", "at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    # As typed, folded to lower case: there may be no such user.
    username: Mapped[str] = mapped_column(String(150))
    address: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(TZDateTime, index=True)


class ApiToken(db.Model):
    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    # The first characters of the token, to tell tokens apart in a list; never enough to use it.
    prefix: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime)

    user: Mapped[User] = relationship()


# --- settings -----------------------------------------------------------------------------


class MailSenderSettings(db.Model):
    """The administrator's parameters for one partition.

    Each parameter's default is its field's (settings/fields.py, DESIGN.md's table), so that the
    window, the API and a new partition's row say the same.
    """

    __tablename__ = "mail_sender_settings"
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), unique=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # The version queued messages must have been rendered under: the last that changed a field
    # of RENDERING_FIELDS (settings/fields.py). Older bytes are rendered again when claimed.
    render_version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(150))

    training_enabled: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["training_enabled"])
    # NULL: the domains of the partition's mailboxes.
    company_domains: Mapped[list | None] = mapped_column(JSON)
    tracking_id_enabled: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["tracking_id_enabled"])
    batch_size: Mapped[int] = mapped_column(Integer, default=DEFAULTS["batch_size"])
    sleep_minutes: Mapped[int] = mapped_column(Integer, default=DEFAULTS["sleep_minutes"])
    allow_change_reply_from: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["allow_change_reply_from"])
    origination_from_mailbox_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailbox.id", ondelete="SET NULL")
    )
    allow_change_origination_from: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["allow_change_origination_from"])
    envelope_sender_mailbox: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["envelope_sender_mailbox"])
    log_email_address: Mapped[str] = mapped_column(String(320), default=DEFAULTS["log_email_address"])
    column_width: Mapped[int | None] = mapped_column(Integer)
    smtp_host: Mapped[str] = mapped_column(String(255), default=DEFAULTS["smtp_host"])
    smtp_port: Mapped[int] = mapped_column(Integer, default=DEFAULTS["smtp_port"])
    smtp_timeout_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULTS["smtp_timeout_seconds"])
    smtp_ehlo_name: Mapped[str] = mapped_column(String(255), default=DEFAULTS["smtp_ehlo_name"])
    smtp_starttls: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["smtp_starttls"])
    smtp_auth: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["smtp_auth"])
    smtp_username: Mapped[str] = mapped_column(String(320), default=DEFAULTS["smtp_username"])
    smtp_password_enc: Mapped[str | None] = mapped_column(Text)
    smtp_ssl: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["smtp_ssl"])
    oauth2_enabled: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["oauth2_enabled"])
    oauth2_provider: Mapped[str] = mapped_column(String(20), default=DEFAULTS["oauth2_provider"])
    oauth2_grant: Mapped[str] = mapped_column(String(30), default=DEFAULTS["oauth2_grant"])
    oauth2_authorization_url: Mapped[str] = mapped_column(String(2000), default=DEFAULTS["oauth2_authorization_url"])
    oauth2_token_url: Mapped[str] = mapped_column(String(2000), default=DEFAULTS["oauth2_token_url"])
    oauth2_client_id: Mapped[str] = mapped_column(String(500), default=DEFAULTS["oauth2_client_id"])
    oauth2_client_secret_enc: Mapped[str | None] = mapped_column(Text)
    oauth2_service_account_key_enc: Mapped[str | None] = mapped_column(Text)
    oauth2_refresh_token_enc: Mapped[str | None] = mapped_column(Text)
    oauth2_authorized_by: Mapped[str | None] = mapped_column(String(150))
    oauth2_authorized_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    default_charset: Mapped[str] = mapped_column(String(40), default=DEFAULTS["default_charset"])
    priority_enabled: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["priority_enabled"])
    after_unclear: Mapped[str] = mapped_column(String(20), default=DEFAULTS["after_unclear"])
    unclear_retry_minutes: Mapped[int] = mapped_column(Integer, default=DEFAULTS["unclear_retry_minutes"])
    monitor_enabled: Mapped[bool] = mapped_column(Boolean, default=DEFAULTS["monitor_enabled"])
    monitor_sleep_minutes: Mapped[int] = mapped_column(Integer, default=DEFAULTS["monitor_sleep_minutes"])
    monitor_pending_threshold: Mapped[int] = mapped_column(Integer, default=DEFAULTS["monitor_pending_threshold"])
    # Blank: no webhook. The secret is bound to the URL (SECRET_DESTINATIONS).
    webhook_url: Mapped[str] = mapped_column(String(2000), default=DEFAULTS["webhook_url"])
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text)


# --- cases and messages -------------------------------------------------------------------


class Case(db.Model):
    __tablename__ = "case_record"
    __table_args__ = (UniqueConstraint("partition_id", "tracking_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    tracking_id: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(Text, default="")
    owner_user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)


class IncomingMessage(db.Model):
    __tablename__ = "incoming_message"
    __table_args__ = (UniqueConstraint("partition_id", "idempotency_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("case_record.id"))
    from_address: Mapped[str] = mapped_column(String(998), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(998), default="")
    # Its place in the customer's thread, which a reply continues: In-Reply-To's msg-id ("" for
    # none) and the msg-ids of References, in order (for a raw message, as read from its bytes).
    in_reply_to: Mapped[str] = mapped_column(String(998), default="")
    reference_ids: Mapped[list] = mapped_column(JSON, default=list)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    answered_in_training: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))

    mailbox: Mapped[Mailbox] = relationship()
    case: Mapped[Case] = relationship()


class OutgoingMessage(db.Model):
    __tablename__ = "outgoing_message"
    __table_args__ = (
        UniqueConstraint("partition_id", "user_id", "idempotency_key"),
        # The claim's scan, answered from this index alone: reading the rows themselves (a few
        # KB each, with their bodies and bytes) made a claim twenty times slower.
        Index("ix_outgoing_claim", "partition_id", "status", "queued_at", "id", "retry_at", "lease_until",
              "priority"),
        # The same in priority order (Enable Mail Sender Priority): without it, a claim sorted every
        # due message of the partition by priority first.
        Index("ix_outgoing_claim_priority", "partition_id", "status", "priority", "queued_at", "id", "retry_at",
              "lease_until"),
        # The lists' keyset pages (the outbox, GET /api/v1/messages), newest or oldest first by
        # id, for each filter they take: an administrator's or an agent's own, any state or one.
        # Without them a page of one state sorted every message of that state by id.
        Index("ix_outgoing_list", "partition_id", "id"),
        Index("ix_outgoing_list_status", "partition_id", "status", "id"),
        Index("ix_outgoing_list_user", "partition_id", "user_id", "id"),
        Index("ix_outgoing_list_user_status", "partition_id", "user_id", "status", "id"),
        # The scheduled replies a customer's new message on the case cancels (outbox.record_incoming).
        Index("ix_outgoing_case", "case_id", "status"),
        # The ended messages past retention, oldest first (scheduler/monitor/retention.py). Not
        # the status: it changes at every claim, finished_at only when a message ends or is requeued.
        Index("ix_outgoing_finished", "partition_id", "finished_at", "id"),
        # An id is never given twice, once the retention purge has deleted the newest messages
        # too: SQLite would otherwise number the next one after the largest id left.
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(10), default=QUEUED)
    kind: Mapped[str] = mapped_column(String(12))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="SET NULL"), index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("case_record.id"))
    incoming_id: Mapped[int | None] = mapped_column(ForeignKey("incoming_message.id"))
    tracking_id: Mapped[str | None] = mapped_column(String(40))
    # Made once, when queued, so a retry after a crash carries the same one.
    message_id: Mapped[str] = mapped_column(String(998))
    from_mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailbox.id", ondelete="SET NULL"))
    from_address: Mapped[str] = mapped_column(String(998), default="")
    envelope_from: Mapped[str] = mapped_column(String(320), default="")
    to_addresses: Mapped[list] = mapped_column(JSON, default=list)
    cc_addresses: Mapped[list] = mapped_column(JSON, default=list)
    bcc_addresses: Mapped[list] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    keep_case_ownership: Mapped[bool] = mapped_column(Boolean, default=False)
    # Claim order when priority is on: the priority of the mailbox the message came in on.
    priority: Mapped[int] = mapped_column(Integer, default=DEFAULT_PRIORITY)
    training: Mapped[bool] = mapped_column(Boolean, default=False)
    charset: Mapped[str | None] = mapped_column(String(40))
    # The version of the settings the bytes (content.rendered) were built under; re-rendered when it changes.
    rendered_version: Mapped[int | None] = mapped_column(Integer)
    # When it joins the queue: when it was submitted, or for a message held (the undo hold) or
    # scheduled (send_at), when that ends; its lifetime counts from then.
    queued_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # Deferred: its next try. Queued: "not before" (the undo hold or send_at); no sender claims
    # it earlier (scheduler/claims.py).
    retry_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # The time its author asked it to go out at (POST /api/v1/messages send_at), else None.
    send_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    claim_owner: Mapped[str | None] = mapped_column(String(300))
    lease_until: Mapped[datetime | None] = mapped_column(TZDateTime)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # Deliveries whose outcome was unclear (lost after the end of data): a second one holds it.
    unclear_count: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    stuck_notified_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))

    recipients: Mapped[list["MessageRecipient"]] = relationship(
        back_populates="message", order_by="MessageRecipient.id", cascade="all, delete-orphan"
    )
    attempts: Mapped[list["DeliveryAttempt"]] = relationship(
        back_populates="message", order_by="DeliveryAttempt.id", cascade="all, delete-orphan"
    )
    from_mailbox: Mapped[Mailbox | None] = relationship()
    user: Mapped[User | None] = relationship()
    content: Mapped["MessageContent"] = relationship(cascade="all, delete-orphan", single_parent=True)

    # The large parts live in message_content; these read and write them as if they were columns.
    body_text = association_proxy("content", "body_text", creator=lambda value: MessageContent(body_text=value))
    body_html = association_proxy("content", "body_html", creator=lambda value: MessageContent(body_html=value))
    attachments = association_proxy("content", "attachments", creator=lambda value: MessageContent(attachments=value))
    rendered = association_proxy("content", "rendered", creator=lambda value: MessageContent(rendered=value))

    @property
    def is_scheduled(self) -> bool:
        """Queued, but its time (the undo hold, or send_at) has not come: no sender may claim it."""
        return self.status == QUEUED and self.retry_at is not None and self.retry_at > utcnow()

    @property
    def shown_status(self) -> str:
        """The state as the API and the window show it: SCHEDULED before its time."""
        return SCHEDULED if self.is_scheduled else self.status

    @property
    def has_raw_copy(self) -> bool:
        return self.status in RAW_COPY_STATES

    @property
    def raw_copy(self) -> bytes | None:
        """What the server accepted (or what training mode withheld): the rendered bytes, which
        are never rendered again once the message is settled so."""
        return self.rendered if self.has_raw_copy else None


class MessageContent(db.Model):
    """A queued message's large parts: bodies, attachments and the rendered bytes.

    Apart from outgoing_message because the engine rewrites that row at every claim and
    every outcome: with kilobytes of body and bytes in it, each of those writes copied them
    all. These are written when the message is queued, and again only when it is re-rendered.
    """

    __tablename__ = "message_content"
    message_id: Mapped[int] = mapped_column(ForeignKey("outgoing_message.id", ondelete="CASCADE"), primary_key=True)
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str] = mapped_column(Text, default="")
    # [{filename, content_type, content_base64}]
    attachments: Mapped[list] = mapped_column(JSON, default=list)
    # The bytes to send, rendered under the message's rendered_version.
    rendered: Mapped[bytes | None] = mapped_column(LargeBinary)


class MessageRecipient(db.Model):
    """One envelope recipient and where it stands; a retry goes only to the deferred ones."""

    __tablename__ = "message_recipient"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("outgoing_message.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    # to, cc, bcc, or log (the Bcc log address, whose outcome never decides the message's state).
    role: Mapped[str] = mapped_column(String(5))
    status: Mapped[str] = mapped_column(String(10), default=RCPT_PENDING)
    code: Mapped[int | None] = mapped_column(Integer)
    text: Mapped[str | None] = mapped_column(Text)

    message: Mapped[OutgoingMessage] = relationship(back_populates="recipients")


class DeliveryAttempt(db.Model):
    """One SMTP transaction for one message, with every recipient's reply."""

    __tablename__ = "delivery_attempt"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("outgoing_message.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    node: Mapped[str] = mapped_column(String(300), default="")
    # accepted, deferred, failed, training
    outcome: Mapped[str] = mapped_column(String(10))
    code: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="")
    # [{address, code, text}]
    recipients: Mapped[list] = mapped_column(JSON, default=list)
    # The class of the answer that decided it (states.ANSWER_*), and the server's queue id.
    answer: Mapped[str | None] = mapped_column(String(20))
    queue_id: Mapped[str | None] = mapped_column(String(100))
    # Milliseconds per stage: {connect, commands, end}.
    timings: Mapped[dict | None] = mapped_column(JSON)
    # Who held the claim's lease: the sender that made it.
    lease_owner: Mapped[str | None] = mapped_column(String(300))
    # The SMTP route it went by ("" for the partition's own SMTP settings).
    route: Mapped[str] = mapped_column(String(100), default="")

    message: Mapped[OutgoingMessage] = relationship(back_populates="attempts")


class RouteState(db.Model):
    """What the engine knows of an SMTP route beyond its settings: paused for a configuration
    fault, or held for a provider's quota. One row per partition and route ("" for the
    partition's own SMTP settings), written by the senders, read by every node and the window.
    """

    __tablename__ = "route_state"
    __table_args__ = (UniqueConstraint("partition_id", "route"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"))
    route: Mapped[str] = mapped_column(String(100), default="")
    # Paused: nothing is claimed for the route while the settings are those of this version; a
    # Save (a new version) or a successful Test lifts it.
    paused_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_version: Mapped[int | None] = mapped_column(Integer)
    # When the administrators were told of the pause (the monitor tells them once).
    pause_notified_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # Held for a provider's quota until then.
    held_until: Mapped[datetime | None] = mapped_column(TZDateTime)
    held_reason: Mapped[str | None] = mapped_column(Text)


# --- monitor ------------------------------------------------------------------------------


class MonitorState(db.Model):
    """One row per partition: the monitor's memory between runs, shared by every node."""

    __tablename__ = "monitor_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), unique=True)
    # The round mark: the node that ran the last round and when; the next round is due after it.
    last_run_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    last_run_node: Mapped[str | None] = mapped_column(String(200))
    above_threshold: Mapped[bool] = mapped_column(Boolean, default=False)
    threshold_notified_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    alert_active: Mapped[bool] = mapped_column(Boolean, default=False)
    notify_error: Mapped[str | None] = mapped_column(Text)


class QueueFigures(db.Model):
    """One row per partition: the pending and stuck counts as last counted in full, for a queue
    too long to count at every request (scheduler/monitor/definitions.py, queue_counts)."""

    __tablename__ = "queue_figures"
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), unique=True)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    stuck: Mapped[int] = mapped_column(Integer, default=0)
    # The database's clock when the count began; None before the first count.
    counted_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # A count under way, by one process at a time, until then: a count that died frees it then.
    counting_until: Mapped[datetime | None] = mapped_column(TZDateTime)


class PurgeState(db.Model):
    """One row per partition: the retention purge's round mark, shared by every node, and what
    the last purge removed (scheduler/monitor/retention.py)."""

    __tablename__ = "purge_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), unique=True)
    # The round mark: the node that took the last purge and when; the next is due after it.
    last_run_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    last_run_node: Mapped[str | None] = mapped_column(String(200))
    # The last purge that ran to its end: when it ended, and the rows it removed of each kind.
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    messages: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    audit_events: Mapped[int] = mapped_column(Integer, default=0)
    notifications: Mapped[int] = mapped_column(Integer, default=0)
    # The transactions it took (a slice of rows each).
    slices: Mapped[int] = mapped_column(Integer, default=0)


class Notification(db.Model):
    """One monitor notification and what each channel made of it (scheduler/monitor/notifications.py)."""

    __tablename__ = "notification"
    __table_args__ = (
        # The webhook retries due in a partition (scheduler/monitor/webhook.py, retry_due).
        Index("ix_notification_webhook_due", "partition_id", "webhook_status", "webhook_next_at"),
        # Ids never given twice, the purge's deletions notwithstanding (as outgoing_message).
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    recipients: Mapped[list] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    # What the notification is about, as figures (the webhook's JSON carries them).
    facts: Mapped[dict] = mapped_column(JSON, default=dict)
    # The e-mail to the administrators: accepted by the SMTP server, else why not.
    ok: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    # The webhook: one of CHANNEL_STATES, its attempts so far, the last failure's reason and
    # HTTP status, and when the next attempt is due (while retrying; also the lease of the
    # node making it).
    webhook_status: Mapped[str] = mapped_column(String(20), default=CHANNEL_OFF)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_error: Mapped[str | None] = mapped_column(Text)
    webhook_code: Mapped[int | None] = mapped_column(Integer)
    webhook_next_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    webhook_done_at: Mapped[datetime | None] = mapped_column(TZDateTime)


# --- audit --------------------------------------------------------------------------------


class AuditEvent(db.Model):
    __tablename__ = "audit_event"
    # The events past retention, oldest first (scheduler/monitor/retention.py).
    __table_args__ = (Index("ix_audit_event_partition_at", "partition_id", "at", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    partition_id: Mapped[int | None] = mapped_column(ForeignKey("partition.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(150), default="")
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str] = mapped_column(String(50), default="")
    target_id: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
