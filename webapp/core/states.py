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
# States whose rendered bytes are the raw copy of what was sent (or withheld in training mode).
RAW_COPY_STATES = (SENT, TRAINING)
MESSAGE_STATES = (QUEUED, SENDING, SENT, DEFERRED, FAILED, TRAINING, REMOVED)
PENDING_STATES = (QUEUED, DEFERRED, SENDING)

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

# A delivery attempt's outcome: what one SMTP transaction (or the try at one) did.
ATTEMPT_ACCEPTED = "accepted"
ATTEMPT_DEFERRED = "deferred"
ATTEMPT_FAILED = "failed"
# Not tried: the server could not be reached for an earlier message of the batch. The message
# waits and says why, but no attempt is billed to it (no DeliveryAttempt row, no attempt counted).
ATTEMPT_UNTRIED = "untried"

ROLE_ADMIN = "admin"
ROLE_AGENT = "agent"
ROLES = (ROLE_ADMIN, ROLE_AGENT)

WANTED_RUNNING = "running"
WANTED_STOPPED = "stopped"

LOG_ROLE = "log"
