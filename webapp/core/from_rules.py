"""The From rules: which mailbox a message goes out from, and which preferences a user may store.

`decide_from` is the one place that decides the From mailbox; the compose form, the messages
API and the preferences (page and API) all ask it or `check_preferences`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import audit
from .addresses import Address, AddressError, check_header_value, parse_address
from .directory.lookups import get_in_partition, parse_id, user_mailboxes
from .models import IncomingMessage, Mailbox, MailSenderSettings, User
from .refusal import Refusal
from .states import COLLABORATE, FORWARD, ORIGINATION, REDIRECT, REPLY

# Kinds that go out from the system default (or an allowed preference or choice).
ORIGINATION_LIKE = (ORIGINATION, FORWARD, COLLABORATE)


class FromRuleError(Refusal):
    """A From that the rules refuse: 403 for a mailbox outside the rule, 422 for none usable.
    The field at fault is the From choice unless another is named."""

    def __init__(self, status: int, message: str, field_name: str = "from_mailbox_id"):
        super().__init__(status, message, {field_name: message})


@dataclass
class FromDecision:
    """The From mailbox and header, the envelope sender, and which rule chose them."""

    mailbox: Mailbox
    from_address: str
    envelope_from: str
    source: str  # "choice", "preference", "incoming mailbox", "system default", "original sender"


@dataclass
class RulesInEffect:
    """What a user may choose, for the preferences page and API."""

    mailboxes: list[Mailbox]
    reply_change_allowed: bool
    origination_change_allowed: bool
    system_origination_mailbox: Mailbox | None
    reply_preference: Mailbox | None  # the stored one, whether or not it applies now
    origination_preference: Mailbox | None
    reply_preference_applies: bool
    origination_preference_applies: bool
    notes: list[str] = field(default_factory=list)


def mailbox_header(mailbox: Mailbox) -> str:
    """The From header for a mailbox: `Name <address>`, or the address alone."""
    name = (mailbox.name or "").strip()
    try:
        check_header_value(name)
    except AddressError:
        name = ""  # a name that is unsafe in a header is left out rather than the mail refused
    return Address(_normalised(mailbox.address), name).formatted()


def _normalised(address: str) -> str:
    local, _, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower()}"


def _owned(user: User, mailbox_id: int | None) -> Mailbox | None:
    if mailbox_id is None:
        return None
    return next((mailbox for mailbox in user_mailboxes(user) if mailbox.id == mailbox_id), None)


def _system_default(settings: MailSenderSettings) -> Mailbox | None:
    return get_in_partition(Mailbox, settings.origination_from_mailbox_id, settings.partition_id)


def _parse_choice(value) -> int | None:
    if value is None or value == "":
        return None
    found = parse_id(value)
    if found is None:
        raise FromRuleError(422, "The From mailbox must be a mailbox id.")
    return found


def decide_from(user: User, kind: str, settings: MailSenderSettings, *,
                incoming: IncomingMessage | None = None, chosen_mailbox_id=None) -> FromDecision:
    """The From for a message of `kind` that `user` sends, per DESIGN.md "Default From".

    - reply: the mailbox the customer wrote to; a per-message choice, else the user's
      preference, replaces it only while replies may change From, and only with one of the
      user's mailboxes.
    - origination, forward, collaborate: the system default; a choice or preference (one of the
      user's mailboxes) only while originations may change From.
    - redirect: the original sender stays in From; the mailbox is the one it came in on.
    A stored preference that the settings now forbid is ignored. Raises FromRuleError: 403 for
    a chosen mailbox outside the rule, 422 when no From is usable. Writes nothing.
    """
    choice = _parse_choice(chosen_mailbox_id)
    if kind == REDIRECT:
        if incoming is None:
            raise FromRuleError(422, "A redirect needs the incoming message.", "incoming_id")
        if choice is not None and choice != incoming.mailbox_id:
            raise FromRuleError(403, "A redirect goes out as the original sender, through the "
                                     "mailbox it came in on: its From cannot be chosen.")
        try:
            sender = parse_address(incoming.from_address)
        except AddressError as error:
            raise FromRuleError(422, f"The incoming message's sender cannot be used: {error}",
                                "incoming_id") from None
        envelope = _normalised(incoming.mailbox.address) if settings.envelope_sender_mailbox else sender.address
        return FromDecision(incoming.mailbox, sender.formatted(), envelope, "original sender")

    if kind == REPLY:
        if incoming is None:
            raise FromRuleError(422, "A reply needs the incoming message it answers.", "incoming_id")
        default, default_source = incoming.mailbox, "incoming mailbox"
        allowed = settings.allow_change_reply_from
        preference_id = user.reply_from_mailbox_id
        why_not = "Replies go out from the mailbox the customer wrote to; changing it is not allowed."
    elif kind in ORIGINATION_LIKE:
        default, default_source = _system_default(settings), "system default"
        allowed = settings.allow_change_origination_from
        preference_id = user.origination_from_mailbox_id
        why_not = "New messages go out from the system default mailbox; changing it is not allowed."
    else:
        raise FromRuleError(422, f"Unknown kind {kind!r}.", "kind")

    if choice is not None and (default is None or choice != default.id):
        if not allowed:
            raise FromRuleError(403, why_not)
        mailbox = _owned(user, choice)
        if mailbox is None:
            raise FromRuleError(403, "That mailbox is not one of your mailboxes.")
        return _decision(mailbox, "choice")
    if choice is None and allowed:
        preferred = _owned(user, preference_id)
        if preferred is not None:
            return _decision(preferred, "preference")
    if default is None:
        raise FromRuleError(422, "No From mailbox is usable: there is no system default for new "
                                 "messages" + (", and you have not chosen one of your mailboxes."
                                               if allowed else "."))
    return _decision(default, default_source)


def _decision(mailbox: Mailbox, source: str) -> FromDecision:
    return FromDecision(mailbox, mailbox_header(mailbox), _normalised(mailbox.address), source)


def rules_in_effect(user: User, settings: MailSenderSettings) -> RulesInEffect:
    """The user's mailboxes, what may be changed, and in words why a choice is not offered."""
    mailboxes = user_mailboxes(user)
    system = _system_default(settings)
    reply_pref = get_in_partition(Mailbox, user.reply_from_mailbox_id, user.partition_id)
    orig_pref = get_in_partition(Mailbox, user.origination_from_mailbox_id, user.partition_id)
    owned_ids = {mailbox.id for mailbox in mailboxes}
    rules = RulesInEffect(
        mailboxes=mailboxes,
        reply_change_allowed=settings.allow_change_reply_from,
        origination_change_allowed=settings.allow_change_origination_from,
        system_origination_mailbox=system,
        reply_preference=reply_pref,
        origination_preference=orig_pref,
        reply_preference_applies=bool(settings.allow_change_reply_from and reply_pref
                                      and reply_pref.id in owned_ids),
        origination_preference_applies=bool(settings.allow_change_origination_from and orig_pref
                                            and orig_pref.id in owned_ids),
    )
    notes = rules.notes
    if settings.allow_change_reply_from:
        notes.append("Replies go out from the mailbox the customer wrote to, unless you choose "
                     "another of your mailboxes here or in a message.")
    else:
        notes.append("Replies go out from the mailbox the customer wrote to. You cannot choose "
                     "another: the administrator has not allowed changing the From of replies.")
    default_text = system.address if system else "none is set"
    if settings.allow_change_origination_from:
        notes.append(f"New messages, forwards and collaborations go out from the system default "
                     f"({default_text}), unless you choose one of your mailboxes here or in a message.")
    else:
        notes.append(f"New messages, forwards and collaborations go out from the system default "
                     f"({default_text}). You cannot choose another: the administrator has not "
                     f"allowed changing the From of new messages.")
        if system is None:
            notes.append("With no system default, new messages are refused until an "
                         "administrator sets one.")
    if not mailboxes:
        notes.append("None of your departments has a mailbox, so there is nothing to choose from.")
    for label, pref, applies in (("replies", reply_pref, rules.reply_preference_applies),
                                 ("new messages", orig_pref, rules.origination_preference_applies)):
        if pref is not None and not applies:
            notes.append(f"Your stored preference for {label} ({pref.address}) is not used now: "
                         f"the current rules do not allow it, so the default applies.")
    return rules


def check_preferences(user: User, settings: MailSenderSettings, changes: dict) -> dict:
    """The preference columns to write for `changes` (keys reply_from_mailbox_id and/or
    origination_from_mailbox_id; None clears), or one FromRuleError naming every refused field:
    422 when one is no mailbox id, else 403 (a mailbox not among the user's, or where changing
    is not allowed). Writes nothing.
    """
    checked: dict = {}
    refused: dict[str, FromRuleError] = {}
    whats = {}
    for name, allowed, what in (
        ("reply_from_mailbox_id", settings.allow_change_reply_from, "replies"),
        ("origination_from_mailbox_id", settings.allow_change_origination_from, "new messages"),
    ):
        if name not in changes:
            continue
        whats[name] = what
        try:
            value = _parse_choice(changes[name])
        except FromRuleError as error:
            refused[name] = FromRuleError(422, error.message, name)
            continue
        if value is None or value == getattr(user, name):
            checked[name] = value  # clearing, or keeping what is stored, is always allowed
            continue
        if not allowed:
            refused[name] = FromRuleError(403, f"Changing the From of {what} is not allowed.", name)
        elif _owned(user, value) is None:
            refused[name] = FromRuleError(403, "That mailbox is not one of your mailboxes.", name)
        else:
            checked[name] = value
    if len(refused) == 1:
        raise next(iter(refused.values()))
    if refused:
        status = 422 if any(error.status == 422 for error in refused.values()) else 403
        error = FromRuleError(status, "Your preferences were not saved. " + " ".join(
            f"{whats[name].capitalize()}: {e.message}" for name, e in refused.items()))
        error.fields = {name: e.message for name, e in refused.items()}
        raise error
    return checked


def save_preferences(user: User, settings: MailSenderSettings, changes: dict, actor: User) -> dict:
    """Checks and applies the changes, audited; the caller commits. Returns what was written."""
    checked = check_preferences(user, settings, changes)
    for name, value in checked.items():
        setattr(user, name, value)
    if checked:
        audit.record(actor, "preferences.update", partition_id=user.partition_id, target=user, **checked)
    return checked
