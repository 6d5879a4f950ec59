"""Instance configuration: defaults, then the environment, then the instance folder's config.py."""
import os
import socket


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def from_environment(instance_path: str) -> dict:
    """Every setting of the instance, with its default in this one place."""
    return {
        "SQLALCHEMY_DATABASE_URI": os.environ.get("DATABASE_URL")
        or "sqlite:///" + os.path.join(instance_path, "mailsender.sqlite"),
        "MAILSENDER_SECRET_KEY": os.environ.get("MAILSENDER_SECRET_KEY") or None,
        "NODE_NAME": os.environ.get("NODE_NAME") or socket.gethostname(),
        "MAILSENDER_SENDERS": _int("MAILSENDER_SENDERS", 1),
        "MAILSENDER_SSL_ALLOWED": _bool("MAILSENDER_SSL_ALLOWED", True),
        # The log's lines (webapp/core/logs.py): json, one object a line, or text for a terminal;
        # and the least level written.
        "MAILSENDER_LOG_FORMAT": (os.environ.get("MAILSENDER_LOG_FORMAT") or "json").strip().lower(),
        "MAILSENDER_LOG_LEVEL": (os.environ.get("MAILSENDER_LOG_LEVEL") or "INFO").strip().upper(),
        # The length of the product's "minute" (sleep, monitor, backoff); tests shorten it.
        "MAILSENDER_MINUTE_SECONDS": _float("MAILSENDER_MINUTE_SECONDS", 60.0),
        # Each SMTP command's own timeout, in seconds: for the senders and the Test button alike.
        # (The "SMTP server timeout" parameter is how long an idle connection is kept open.)
        "MAILSENDER_SMTP_COMMAND_TIMEOUT": _float("MAILSENDER_SMTP_COMMAND_TIMEOUT", 60.0),
        # How long a stop waits for the batches on the wire before it gives them up (seconds):
        # less than a service manager's wait before its SIGKILL (often 30 s).
        "MAILSENDER_STOP_GRACE_SECONDS": _float("MAILSENDER_STOP_GRACE_SECONDS", 20.0),
        # An OAuth2 token request's timeout, in seconds: for the senders and the Test button alike.
        "MAILSENDER_OAUTH_TIMEOUT": _float("MAILSENDER_OAUTH_TIMEOUT", 30.0),
        # At most this many messages a minute per partition; 0 means no limit.
        "MAILSENDER_RATE_PER_MINUTE": _int("MAILSENDER_RATE_PER_MINUTE", 0),
        "MAILSENDER_LEASE_SECONDS": _float("MAILSENDER_LEASE_SECONDS", 120.0),
        # A sender in one step of a batch (an SMTP command, a claim) for longer than this stops
        # counting as running on the status lights (real seconds).
        "MAILSENDER_SENDER_STALL_SECONDS": _float("MAILSENDER_SENDER_STALL_SECONDS", 15.0),
        # The lease a node holds on its name, so that a twin process does not multiply senders.
        "MAILSENDER_NODE_LEASE_SECONDS": _float("MAILSENDER_NODE_LEASE_SECONDS", 30.0),
        # A CA bundle to verify SMTP servers' certificates with; none: the system's CAs.
        "MAILSENDER_SMTP_CA_FILE": os.environ.get("MAILSENDER_SMTP_CA_FILE") or None,
        # Deferral backoff, in product minutes, and the lifetime of a message in the queue.
        "MAILSENDER_BACKOFF_FIRST_MINUTES": _float("MAILSENDER_BACKOFF_FIRST_MINUTES", 1.0),
        "MAILSENDER_BACKOFF_MAX_MINUTES": _float("MAILSENDER_BACKOFF_MAX_MINUTES", 60.0),
        # Each wait is lengthened by up to this share, at random, so that a backlog deferred
        # together does not come back as one wave.
        "MAILSENDER_BACKOFF_JITTER": _float("MAILSENDER_BACKOFF_JITTER", 0.2),
        "MAILSENDER_LIFETIME_MINUTES": _float("MAILSENDER_LIFETIME_MINUTES", 4 * 24 * 60.0),
        # A throttled message (421, 4.7.x …) waits at least this long (product minutes), or the
        # provider's hint where longer; a provider's daily quota resets at this UTC hour.
        "MAILSENDER_THROTTLE_MINUTES": _float("MAILSENDER_THROTTLE_MINUTES", 5.0),
        "MAILSENDER_QUOTA_RESET_HOUR": _int("MAILSENDER_QUOTA_RESET_HOUR", 0),
        # Whether this node runs the monitor job (notifications still go out once, from any node).
        "MAILSENDER_MONITOR": _bool("MAILSENDER_MONITOR", True),
        "MAILSENDER_STUCK_AGE_MINUTES": _float("MAILSENDER_STUCK_AGE_MINUTES", 60.0),
        "MAILSENDER_RENOTIFY_MINUTES": _float("MAILSENDER_RENOTIFY_MINUTES", 24 * 60.0),
        # Retention, in product days (1440 product minutes each): sent, failed and removed
        # messages (their content, recipients and attempts, the row too), audit events and the
        # monitor's notifications older than this are purged, by one node a purge round, every
        # MAILSENDER_PURGE_MINUTES, in slices of MAILSENDER_PURGE_SLICE rows a transaction.
        "MAILSENDER_RETAIN_DAYS": _float("MAILSENDER_RETAIN_DAYS", 90.0),
        "MAILSENDER_AUDIT_RETAIN_DAYS": _float("MAILSENDER_AUDIT_RETAIN_DAYS", 365.0),
        "MAILSENDER_NOTIFICATION_RETAIN_DAYS": _float("MAILSENDER_NOTIFICATION_RETAIN_DAYS", 90.0),
        "MAILSENDER_PURGE_MINUTES": _float("MAILSENDER_PURGE_MINUTES", 60.0),
        "MAILSENDER_PURGE_SLICE": _int("MAILSENDER_PURGE_SLICE", 500),
        # Every message submitted (the API, Compose) waits this many real seconds before a sender
        # may claim it, so that its author can still undo it; 0: none.
        "MAILSENDER_UNDO_SECONDS": _float("MAILSENDER_UNDO_SECONDS", 10.0),
        "MAILSENDER_MAX_ATTACHMENT_BYTES": _int("MAILSENDER_MAX_ATTACHMENT_BYTES", 10 * 1024 * 1024),
        # A message's recipients (To, Cc and Bcc together) and its subject's characters, at most.
        "MAILSENDER_MAX_RECIPIENTS": _int("MAILSENDER_MAX_RECIPIENTS", 500),
        "MAILSENDER_MAX_SUBJECT_LENGTH": _int("MAILSENDER_MAX_SUBJECT_LENGTH", 2000),
        "MAILSENDER_TEST_RUNS_PER_MINUTE": _int("MAILSENDER_TEST_RUNS_PER_MINUTE", 5),
        # Logins: after this many failures within the window (product minutes), for one username
        # or from one client address, further attempts are refused until the window slides on.
        "MAILSENDER_LOGIN_FAILURE_LIMIT": _int("MAILSENDER_LOGIN_FAILURE_LIMIT", 10),
        "MAILSENDER_LOGIN_WINDOW_MINUTES": _float("MAILSENDER_LOGIN_WINDOW_MINUTES", 1.0),
        # A session without a request for this long (product minutes) has ended.
        "MAILSENDER_SESSION_IDLE_MINUTES": _float("MAILSENDER_SESSION_IDLE_MINUTES", 12 * 60.0),
        # Served over TLS (directly or behind a proxy): cookies are Secure, plain HTTP is
        # redirected to HTTPS, and browsers are told to keep to HTTPS (HSTS). Off, so that
        # http://localhost works.
        "MAILSENDER_HTTPS": _bool("MAILSENDER_HTTPS", False),
        # The reverse proxies in front of the site whose X-Forwarded-* headers are believed (the
        # client's address, scheme, host, port and path prefix); 0: none, the headers are ignored,
        # since anyone could send them.
        "MAILSENDER_PROXY_HOPS": _int("MAILSENDER_PROXY_HOPS", 0),
        # GET /metrics: with a token, only `Authorization: Bearer <token>` reads it; without one,
        # only a client on loopback does.
        "MAILSENDER_METRICS_TOKEN": os.environ.get("MAILSENDER_METRICS_TOKEN") or None,
        # argon2id cost; tests may lower it to keep the suite fast.
        "PASSWORD_TIME_COST": _int("MAILSENDER_PASSWORD_TIME_COST", 3),
        "PASSWORD_MEMORY_KIB": _int("MAILSENDER_PASSWORD_MEMORY_KIB", 65536),
        "PAGE_SIZE": 25,
        "WTF_CSRF_TIME_LIMIT": None,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
    }
