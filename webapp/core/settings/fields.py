"""The Mail Sender parameters, as one table of fields.

FIELDS is the one list of parameters: their API names, labels, defaults, help and the toggles
that show them. The window iterates it, the validator walks it, the JSON comes from it.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # models.py imports this table for its defaults
    from ..models import MailSenderSettings

# Field kinds: how a value is read, checked and shown.
BOOL, INT, TEXT, ADDRESS, DOMAINS, MAILBOX, CHOICE, URL, CHARSET, SECRET, SECRET_JSON = (
    "bool", "int", "text", "address", "domains", "mailbox", "choice", "url", "charset", "secret",
    "secret_json",
)
SECRET_KINDS = (SECRET, SECRET_JSON)

PROVIDERS = (("microsoft", "Microsoft 365"), ("google", "Google"), ("other", "Other"))
GRANTS = (("client_credentials", "Client credentials"), ("authorization_code", "Authorization code"),
          ("service_account", "Service account"))
ALL_GRANTS = ",".join(value for value, _ in GRANTS)
# The charsets outgoing text may be written in: IANA's MIME names for text in mail, each one a
# codec of Python's that keeps ASCII as ASCII. Python knows many more codecs (idna, punycode,
# unicode_escape, hz …) that are no charset a reader understands.
MIME_CHARSETS = tuple(name for name in (
    "UTF-8", "US-ASCII", *(f"ISO-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)),
    *(f"windows-{n}" for n in range(1250, 1259)), "KOI8-R", "KOI8-U", "IBM866", "Shift_JIS", "EUC-JP",
    "ISO-2022-JP", "EUC-KR", "GB2312", "GBK", "GB18030", "Big5", "Big5-HKSCS", "TIS-620",
) if codecs.lookup(name) and "To: x\n".encode(name) == b"To: x\n")


@dataclass(frozen=True)
class Field:
    """One parameter of the window and of the API."""

    name: str  # the API field name, also the form input's name
    label: str  # how the window and its message boxes name it
    kind: str
    # The typed default: what a new partition starts with, and the column's default (models.py).
    default: object
    help: str
    # When the field matters: "a|b" = a or b is on; "a&g=x,y" = a is on and g is x or y.
    show_if: str = ""
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 320
    min_length: int = 0  # a secret's shortest allowed length
    nullable: bool = False  # an int that may be blank
    default_text: str = ""  # how the window words the default where the value does not say it
    group: str = ""  # the window's group it is shown in (GROUPS); "": none

    @property
    def shown_default(self) -> str:
        """The default as the window states it: on/off, a number, a text, or "blank"."""
        if self.default_text:
            return self.default_text
        if self.kind == BOOL:
            return "on" if self.default else "off"
        return "blank" if self.default in (None, "") else str(self.default)


# The window's groups of fields, by key: the legend each is shown under. The monitor's settings
# are a form of their own in the Monitor area of the window, not a part of Parameters.
DEFAULT_FROM, SMTP, OAUTH2, MONITOR = "default_from", "smtp", "oauth2", "monitor"
GROUPS = {DEFAULT_FROM: "Default From address", SMTP: "SMTP", OAUTH2: "OAuth2", MONITOR: "Monitor"}

FIELDS: tuple[Field, ...] = (
    Field("training_enabled", "Enable training", BOOL, False,
          "Nothing leaves the company: recipients outside the company domains are withheld and the message kept."),
    Field("company_domains", "Company domains", DOMAINS, None,
          "Domains that count as inside the company in training mode; separate them with commas. Blank: the mailboxes' domains.",
          max_length=4000, default_text="the domains of the partition's mailboxes"),
    Field("tracking_id_enabled", "Tracking ID", BOOL, True,
          "Put the case's tracking ID into the subject (forwards, collaborations and kept cases always get it)."),
    Field("batch_size", "Mail Sender batch size", INT, 100,
          "How many messages one sender takes from the queue each time it wakes (1 to 10000); the rest wait "
          "for its next wake.", minimum=1, maximum=10000),
    Field("sleep_minutes", "Sleep time", INT, 1,
          "Minutes a sender waits between batches (0 to 1440; 0: the next batch at once).", minimum=0, maximum=1440),
    Field("allow_change_reply_from", "Allow users to change default for replies", BOOL, False,
          "A reply goes out from the mailbox the customer wrote to; on: users may pick another of their mailboxes.",
          group=DEFAULT_FROM),
    Field("origination_from_mailbox_id", "Default From: for originations", MAILBOX, None,
          "The system default: the mailbox new messages go out from. With none and no allowed preference, an "
          "origination is refused.", default_text="none", group=DEFAULT_FROM),
    Field("allow_change_origination_from", "Allow users to change default for originations", BOOL, False,
          "On: users may pick another of their own mailboxes for new messages.", group=DEFAULT_FROM),
    Field("envelope_sender_mailbox", "SMTP Envelope Sender", BOOL, True,
          "Redirected messages: on, MAIL FROM is our mailbox (bounces come back to us); off, the original sender's.",
          group=DEFAULT_FROM),
    Field("log_email_address", "Log e-mail address", ADDRESS, "",
          "Added to every outgoing message as a hidden (envelope-only) Bcc recipient."),
    Field("column_width", "Outgoing mail column width", INT, None,
          "Blank: no hard wrap (recommended); else wrap plain text at that width (1 to 1000, standard 72).",
          minimum=1, maximum=1000, nullable=True),
    Field("smtp_host", "SMTP server", TEXT, "localhost", "The host name or address of the SMTP server.",
          max_length=255, group=SMTP),
    Field("smtp_port", "SMTP port", INT, 25, "1 to 65535: 25 or 587 for STARTTLS, 465 for SSL.",
          minimum=1, maximum=65535, group=SMTP),
    Field("smtp_timeout_seconds", "SMTP server timeout", INT, 60,
          "Seconds an open connection is kept idle when nothing waits to be sent (1 to 600).", minimum=1, maximum=600,
          group=SMTP),
    Field("smtp_ehlo_name", "EHLO name", TEXT, "",
          "The name this node gives in EHLO: a fully qualified host name many relays require. Blank: the "
          "node's own fully qualified name.", max_length=255, default_text="the node's fully qualified name",
          group=SMTP),
    Field("smtp_starttls", "Use SMTP TLS", BOOL, False, "Upgrade the connection with STARTTLS.", group=SMTP),
    Field("smtp_auth", "Use SMTP Auth", BOOL, False, "Log in to the SMTP server with a user and password.",
          group=SMTP),
    Field("smtp_username", "SMTP User", TEXT, "",
          "The user to log in as (with OAuth2: the mailbox the token is for).", show_if="smtp_auth|oauth2_enabled",
          group=SMTP),
    Field("smtp_password", "SMTP Password", SECRET, None,
          "Stored encrypted and never shown; leave blank to keep the stored one.", show_if="smtp_auth",
          max_length=1000, group=SMTP),
    Field("smtp_ssl", "Secure SMTP (SSL)", BOOL, False,
          "Implicit TLS from the first byte (usually port 465) instead of STARTTLS.",
          show_if="smtp_auth|oauth2_enabled", group=SMTP),
    Field("oauth2_enabled", "Use OAuth2 SMTP", BOOL, False, "Log in with an OAuth2 token (XOAUTH2) as the SMTP user.",
          group=OAUTH2),
    Field("oauth2_provider", "OAuth2 provider", CHOICE, "", "Who issues the tokens.",
          show_if="oauth2_enabled", choices=PROVIDERS, default_text="none", group=OAUTH2),
    Field("oauth2_grant", "OAuth2 grant", CHOICE, "", "How the token is obtained.",
          show_if="oauth2_enabled", choices=GRANTS, default_text="none", group=OAUTH2),
    Field("oauth2_authorization_url", "Authorization Url", URL, "",
          "The provider's page where an administrator signs in and consents (authorization code grant).",
          show_if="oauth2_enabled&oauth2_grant=authorization_code", max_length=2000, group=OAUTH2),
    Field("oauth2_token_url", "Token URL", URL, "", "Where tokens are fetched (https; http only to a server on loopback).",
          show_if=f"oauth2_enabled&oauth2_grant={ALL_GRANTS}", max_length=2000, group=OAUTH2),
    Field("oauth2_client_id", "Client (Application) ID", TEXT, "",
          "The ID the provider gave this application when it was registered there.",
          show_if="oauth2_enabled&oauth2_grant=client_credentials,authorization_code", max_length=500, group=OAUTH2),
    Field("oauth2_client_secret", "Client Secret", SECRET, None,
          "Stored encrypted and never shown; leave blank to keep the stored one.",
          show_if="oauth2_enabled&oauth2_grant=client_credentials,authorization_code", max_length=1000, group=OAUTH2),
    Field("oauth2_service_account_key", "Service Account Key", SECRET_JSON, None,
          "Google: the JSON key (with domain-wide delegation; the SMTP user is the subject). Stored encrypted, never shown.",
          show_if="oauth2_enabled&oauth2_grant=service_account", max_length=20000, group=OAUTH2),
    Field("default_charset", "Default character set", CHARSET, "UTF-8",
          "Charset of outgoing text (UTF-8, ISO-8859-1 … 16, windows-1250 … 1258, KOI8-R, Shift_JIS, ISO-2022-JP, "
          "GB18030, Big5 and the like); where a text does not fit it, UTF-8 is used instead.", max_length=40),
    Field("priority_enabled", "Enable Mail Sender Priority", BOOL, False,
          "Send mail of lower-numbered mailboxes first; off: in queue order only."),
    Field("after_unclear", "After an unclear outcome", CHOICE, "retry_once",
          "When the connection is lost after a message was sent and before the server answered, the server "
          "may have it. Retry once: send it again, with the same Message-ID, after the wait below; a second "
          "such outcome holds it. Hold for review: hold it at once for Send again or Mark as sent.",
          choices=(("retry_once", "Retry once"), ("hold", "Hold for review")), default_text="Retry once"),
    Field("unclear_retry_minutes", "Unclear retry wait", INT, 30,
          "Minutes before an unclear message is sent once more (1 to 1440).", minimum=1, maximum=1440,
          show_if="after_unclear=retry_once"),
    Field("monitor_enabled", "Enable Monitor", BOOL, True,
          "Watch the queue and notify the administrators when mail gets stuck or piles up.", group=MONITOR),
    Field("monitor_sleep_minutes", "Monitor Sleep time (in minutes)", INT, 5,
          "How long the monitor waits between two looks at the queue (1 to 1440).", minimum=1, maximum=1440,
          group=MONITOR),
    Field("monitor_pending_threshold", "Notify if Pending Messages count exceeds:", INT, 1000,
          "The administrators are notified when more messages than this wait to be sent (0 or more).", minimum=0,
          group=MONITOR),
    Field("webhook_url", "Monitor webhook URL", URL, "",
          "Each monitor notification is also POSTed here as signed JSON, whatever the SMTP server does "
          "(https; http only to a server on loopback; redirects are not followed). Blank: no webhook.",
          max_length=2000, group=MONITOR),
    Field("webhook_secret", "Monitor webhook secret", SECRET, None,
          "Signs each webhook call (HMAC-SHA256 in X-MailSender-Signature); at least 16 characters. "
          "Stored encrypted and never shown; leave blank to keep the stored one.", max_length=1000, min_length=16,
          group=MONITOR),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
# The window's two forms: the monitor's settings in the Monitor area, every other field in Parameters.
MONITOR_FIELDS = tuple(f for f in FIELDS if f.group == MONITOR)
PARAMETER_FIELDS = tuple(f for f in FIELDS if f.group != MONITOR)
# The typed default of every parameter by API name; models.py makes them the columns' defaults.
DEFAULTS = {f.name: f.default for f in FIELDS}
SECRET_FIELDS = tuple(f.name for f in FIELDS if f.kind in SECRET_KINDS)
# The fields a queued message's bytes depend on: a save of one re-renders the queue before it is
# sent (settings.render_version). A save of any other leaves every queued message's bytes valid.
RENDERING_FIELDS = (
    "training_enabled", "company_domains", "tracking_id_enabled", "allow_change_reply_from",
    "origination_from_mailbox_id", "allow_change_origination_from", "envelope_sender_mailbox",
    "log_email_address", "column_width", "default_charset",
)
# The others, named too, so that a new field must be put in one list or the other (a test checks).
NON_RENDERING_FIELDS = (
    "batch_size", "sleep_minutes", "smtp_host", "smtp_port", "smtp_ehlo_name", "after_unclear",
    "unclear_retry_minutes", "smtp_timeout_seconds", "smtp_starttls", "smtp_auth",
    "smtp_username", "smtp_password", "smtp_ssl", "oauth2_enabled", "oauth2_provider", "oauth2_grant",
    "oauth2_authorization_url", "oauth2_token_url", "oauth2_client_id", "oauth2_client_secret",
    "oauth2_service_account_key", "priority_enabled", "monitor_enabled", "monitor_sleep_minutes",
    "monitor_pending_threshold", "webhook_url", "webhook_secret",
)
# Where each stored secret is sent. It is only ever sent where it was saved for: a change to
# any of these needs the secret typed again (validate._bind_stored_secrets).
SECRET_DESTINATIONS = {
    "smtp_password": ("smtp_host", "smtp_port"),
    "oauth2_client_secret": ("oauth2_token_url",),
    "oauth2_service_account_key": ("oauth2_token_url",),
    "webhook_secret": ("webhook_url",),
}
# The refresh token an administrator's consent left: it cannot be typed, so a change drops it.
REFRESH_TOKEN_DESTINATIONS = ("oauth2_token_url",)
# Answered by GET and ignored by PUT, so that a GET's answer can be sent back as it is.
READ_ONLY_FIELDS = ("version", "updated_at", "updated_by", "company_domains_effective",
                    "oauth2_authorized_by", "oauth2_authorized_at", "ssl_allowed", "warnings")


def runs_of_groups(fields: tuple[Field, ...]) -> list[tuple[str, str, tuple[Field, ...]]]:
    """The fields in the table's order, cut where the group changes: (group, legend, fields);
    the window draws each grouped run as a fieldset under its legend."""
    runs: list[tuple[str, str, tuple[Field, ...]]] = []
    for f in fields:
        if runs and runs[-1][0] == f.group:
            group, legend, members = runs[-1]
            runs[-1] = (group, legend, (*members, f))
        else:
            runs.append((f.group, GROUPS.get(f.group, ""), (f,)))
    return runs


def label_of(name: str) -> str:
    known = FIELDS_BY_NAME.get(name)
    return known.label if known else name


def show_if_holds(rule: str, values: dict) -> bool:
    """Whether a field with this show_if rule is shown for these values (mailsender.js does the same)."""
    if not rule:
        return True
    for alternative in rule.split("|"):
        if all(_term_holds(term, values) for term in alternative.split("&")):
            return True
    return False


def _term_holds(term: str, values: dict) -> bool:
    name, has_value, wanted = term.partition("=")
    value = values.get(name)
    if not has_value:
        return value is True
    return str(value or "") in wanted.split(",")


# --- reading a row ------------------------------------------------------------------------


def secret_column(name: str) -> str:
    return f"{name}_enc"


def secrets_set(settings: MailSenderSettings) -> dict[str, bool]:
    """{"smtp_password": True, ...}: which secrets are stored (never their values)."""
    return {name: bool(getattr(settings, secret_column(name))) for name in SECRET_FIELDS}


def saved_values(settings: MailSenderSettings) -> dict:
    """Every non-secret parameter of the row, keyed by API name, as the API answers it."""
    return {f.name: getattr(settings, f.name) for f in FIELDS if f.kind not in SECRET_KINDS}


def form_values(settings: MailSenderSettings) -> dict:
    """The saved parameters as the form shows them: strings for inputs, booleans for checkboxes."""
    shown = {}
    for f in FIELDS:
        if f.kind in SECRET_KINDS:
            shown[f.name] = ""
            continue
        value = getattr(settings, f.name)
        if f.kind == BOOL:
            shown[f.name] = bool(value)
        elif f.kind == DOMAINS:
            shown[f.name] = ", ".join(value or [])
        else:
            shown[f.name] = "" if value is None else str(value)
    return shown


def form_fields(form, fields: tuple[Field, ...] = PARAMETER_FIELDS) -> dict:
    """A submitted form of these fields (the Parameters form's unless told otherwise) as the
    validator takes it, in the same shape as a PUT's body.

    An unticked checkbox is not sent by the browser, so every checkbox of the form counts as
    named: off. The fields of the other form are not named, so they keep their saved values.
    """
    submitted = {}
    for f in fields:
        if f.kind == BOOL:
            submitted[f.name] = f.name in form
        else:
            submitted[f.name] = form.get(f.name, "")
    # Only this form's secrets: another form's stored secret is never cleared from here.
    own = {f.name for f in fields}
    submitted["clear_secrets"] = [name for name in form.getlist("clear_secrets") if name in own]
    if form.get("version"):
        submitted["version"] = form.get("version")
    return submitted
