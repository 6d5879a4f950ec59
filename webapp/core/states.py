"""Every state and kind name: messages, recipients, roles, and the senders' wanted state."""
from __future__ import annotations

# --- message states and kinds -------------------------------------------------------------

QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
DEFERRED = "deferred"
FAILED = "failed"
TRAINING = "training"
REMOVED = "removed"
# Held for review: the server may have taken it (an unclear outcome, twice, or once with "hold
# for review"). Nothing sends it again until an administrator says "Send again".
HELD = "held"
# Cancelled by its author or an administrator before it left (undo, or send later), or by the
# customer writing again on the same case before a scheduled reply went.
CANCELLED = "cancelled"
# Not stored: how the API and the window show a queued message whose time has not come (its
# send_at, or the undo hold). The claim reads it as queued with retry_at as its "not before".
SCHEDULED = "scheduled"
# States whose rendered bytes are the raw copy of what was sent (or withheld in training mode).
RAW_COPY_STATES = (SENT, TRAINING)
MESSAGE_STATES = (QUEUED, SENDING, SENT, DEFERRED, FAILED, TRAINING, REMOVED, HELD, CANCELLED)
# The states a message is shown in (and listed by, ?status=).
SHOWN_STATES = (*MESSAGE_STATES, SCHEDULED)
PENDING_STATES = (QUEUED, DEFERRED, SENDING)
# The states whose messages the retention purge removes once they ended long enough ago: never
# one that may still be sent (queued, deferred, sending, held), nor the kept ones (training,
# "kept and viewable"; cancelled, never sent).
PURGED_STATES = (SENT, FAILED, REMOVED)

REPLY = "reply"
ORIGINATION = "origination"
FORWARD = "forward"
COLLABORATE = "collaborate"
REDIRECT = "redirect"
MESSAGE_KINDS = (REPLY, ORIGINATION, FORWARD, COLLABORATE, REDIRECT)

# Per-recipient outcomes.
RCPT_PENDING = "pending"
RCPT_ACCEPTED = "accepted"
RCPT_DEFERRED = "deferred"
RCPT_FAILED = "failed"
RCPT_TRAINING = "training"
# The connection was lost after the end of data, before the reply: the server may have taken it.
RCPT_UNCLEAR = "unclear"
# Its message was cancelled before it left: nothing was sent to it.
RCPT_CANCELLED = "cancelled"

# A delivery attempt's outcome: what one SMTP transaction (or the try at one) did.
ATTEMPT_ACCEPTED = "accepted"
ATTEMPT_DEFERRED = "deferred"
ATTEMPT_FAILED = "failed"
# Not tried: the server could not be reached for an earlier message of the batch. The message
# waits and says why, but no attempt is billed to it (no DeliveryAttempt row, no attempt counted).
ATTEMPT_UNTRIED = "untried"

# --- classes of SMTP answer (scheduler/outcomes.py holds the table that assigns them) ---------

ANSWER_ACCEPTED = "accepted"
ANSWER_RECIPIENT_PERMANENT = "recipient_permanent"
ANSWER_MESSAGE_PERMANENT = "message_permanent"
ANSWER_THROTTLED = "throttled"
ANSWER_QUOTA = "quota"
ANSWER_CONFIGURATION = "configuration"
ANSWER_TRANSIENT = "transient"
ANSWER_UNCLEAR = "unclear"
# As the window names them.
ANSWER_LABELS = {
    ANSWER_ACCEPTED: "accepted",
    ANSWER_RECIPIENT_PERMANENT: "recipient refused for good",
    ANSWER_MESSAGE_PERMANENT: "message refused for good",
    ANSWER_THROTTLED: "provider throttling",
    ANSWER_QUOTA: "provider quota reached",
    ANSWER_CONFIGURATION: "configuration fault",
    ANSWER_TRANSIENT: "temporary failure",
    ANSWER_UNCLEAR: "unclear: the server may have taken it",
}
ANSWER_CLASSES = tuple(ANSWER_LABELS)

# "After an unclear outcome" (the settings' after_unclear).
UNCLEAR_RETRY_ONCE = "retry_once"
UNCLEAR_HOLD = "hold"
UNCLEAR_ACTIONS = (UNCLEAR_RETRY_ONCE, UNCLEAR_HOLD)

ROLE_ADMIN = "admin"
ROLE_AGENT = "agent"
ROLES = (ROLE_ADMIN, ROLE_AGENT)

WANTED_RUNNING = "running"
WANTED_STOPPED = "stopped"

LOG_ROLE = "log"

# A monitor notification's delivery on one channel (e-mail, webhook).
CHANNEL_OFF = "off"  # not configured: nothing was tried
CHANNEL_OK = "ok"
CHANNEL_PENDING = "pending"  # an attempt is due at its next time: the first, or a retry
CHANNEL_FAILED = "failed"  # given up: the reason is recorded
CHANNEL_STATES = (CHANNEL_OFF, CHANNEL_PENDING, CHANNEL_OK, CHANNEL_FAILED)
