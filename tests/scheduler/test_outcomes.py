"""settle and Backoff (scheduler/outcomes.py): each rule of DESIGN.md's states, without a database."""
from datetime import datetime, timedelta, timezone

import pytest

from scheduler.outcomes import Backoff, Claimed, Recipient, RecipientReply, Transaction, settle
from webapp.core.states import (
    DEFERRED,
    FAILED,
    RCPT_ACCEPTED,
    RCPT_DEFERRED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_TRAINING,
    SENT,
    TRAINING,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)
BACKOFF = Backoff(first=MINUTE, cap=60 * MINUTE)


def message(*recipients: tuple[str, str], attempts: int = 0, expires_in: timedelta = timedelta(days=4)) -> Claimed:
    """A claimed message to (address, role) recipients, all pending."""
    return Claimed(id=1, envelope_from="support@acme.test", data=None, rendered_version=1,
                   expires_at=NOW + expires_in, attempt_count=attempts,
                   recipients=[Recipient(n, address, role, RCPT_PENDING) for n, (address, role) in
                               enumerate(recipients, start=1)])


def replied(*replies: tuple[str, str, int, str], outcome: str = "accepted") -> Transaction:
    return Transaction(outcome, replies[0][2] if replies else None, "",
                       [RecipientReply(address, status, code, text) for address, status, code, text in replies])


# --- backoff ---------------------------------------------------------------------------------


def test_the_backoff_curve_is_one_minute_doubling_to_at_most_an_hour():
    assert [BACKOFF.wait(n) / MINUTE for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_message_deferred_a_thousand_times_still_waits_the_cap():
    assert BACKOFF.wait(1000) == 60 * MINUTE and BACKOFF.wait(0) == MINUTE


def test_the_configured_backoff_counts_in_the_products_minutes():
    config = {"MAILSENDER_MINUTE_SECONDS": 0.2, "MAILSENDER_BACKOFF_FIRST_MINUTES": 1.0,
              "MAILSENDER_BACKOFF_MAX_MINUTES": 60.0, "MAILSENDER_THROTTLE_MINUTES": 5.0,
              "MAILSENDER_QUOTA_RESET_HOUR": 0}
    assert Backoff.configured(config) == Backoff(timedelta(seconds=0.2), timedelta(seconds=12), 0.0, 0.2,
                                                 timedelta(seconds=1.0))


# --- settle ----------------------------------------------------------------------------------


def test_every_recipient_accepted_is_sent_and_each_recipient_keeps_its_reply():
    settled = settle(message(("a@x.test", "to"), ("b@x.test", "cc")),
                     [replied(("a@x.test", RCPT_ACCEPTED, 250, "OK"), ("b@x.test", RCPT_ACCEPTED, 250, "OK"))],
                     NOW, BACKOFF)
    assert settled.status == SENT and settled.retry_at is None and settled.last_error is None
    assert [(r.status, r.code, r.text) for r in settled.changed] == [(RCPT_ACCEPTED, 250, "OK")] * 2


def test_some_accepted_and_the_rest_refused_for_good_is_sent():
    settled = settle(message(("a@x.test", "to"), ("b@x.test", "to")),
                     [replied(("a@x.test", RCPT_ACCEPTED, 250, "OK"), ("b@x.test", RCPT_FAILED, 550, "No such user"))],
                     NOW, BACKOFF)
    assert settled.status == SENT and settled.last_error == "550 No such user"


def test_every_recipient_refused_for_good_is_failed():
    settled = settle(message(("a@x.test", "to")), [replied(("a@x.test", RCPT_FAILED, 550, "No such user"),
                                                           outcome="failed")], NOW, BACKOFF)
    assert settled.status == FAILED and settled.retry_at is None


def test_a_deferred_recipient_defers_the_message_by_the_backoff_of_its_attempts_so_far():
    settled = settle(message(("a@x.test", "to"), ("b@x.test", "to"), attempts=2),
                     [replied(("a@x.test", RCPT_ACCEPTED, 250, "OK"), ("b@x.test", RCPT_DEFERRED, 451, "Try later"))],
                     NOW, BACKOFF)
    assert settled.status == DEFERRED and settled.retry_at == NOW + 4 * MINUTE  # the third deferral
    assert settled.last_error == "451 Try later"


def test_a_retry_never_waits_past_the_messages_lifetime():
    settled = settle(message(("a@x.test", "to"), attempts=9, expires_in=10 * MINUTE),
                     [replied(("a@x.test", RCPT_DEFERRED, 451, "Try later"), outcome="deferred")], NOW, BACKOFF)
    assert settled.status == DEFERRED and settled.retry_at == NOW + 10 * MINUTE


def test_a_deferral_after_the_lifetime_fails_the_message_and_says_the_last_reply():
    settled = settle(message(("a@x.test", "to"), attempts=40, expires_in=-MINUTE),
                     [replied(("a@x.test", RCPT_DEFERRED, 451, "Try later"), outcome="deferred")], NOW, BACKOFF)
    assert settled.status == FAILED
    assert settled.last_error == "lifetime ended; last reply: 451 Try later"
    assert [(r.status, r.text) for r in settled.changed] == [(RCPT_FAILED, "lifetime ended; last reply: Try later")]


def test_the_log_recipient_never_holds_a_message_back():
    settled = settle(message(("a@x.test", "to"), ("log@acme.test", "log")),
                     [replied(("a@x.test", RCPT_ACCEPTED, 250, "OK"), ("log@acme.test", RCPT_DEFERRED, 451, "Later"))],
                     NOW, BACKOFF)
    assert settled.status == SENT


def test_the_log_recipient_accepted_alone_does_not_make_a_message_sent():
    settled = settle(message(("a@x.test", "to"), ("log@acme.test", "log")),
                     [replied(("a@x.test", RCPT_FAILED, 550, "No"), ("log@acme.test", RCPT_ACCEPTED, 250, "OK"))],
                     NOW, BACKOFF)
    assert settled.status == FAILED


def test_every_recipient_withheld_in_training_mode_ends_as_training():
    claimed = message(("customer@example.org", "to"))
    claimed.recipients[0].status = RCPT_TRAINING
    settled = settle(claimed, [], NOW, BACKOFF)
    assert settled.status == TRAINING and settled.changed == []


def test_replies_find_their_recipient_whatever_the_case_and_others_are_ignored():
    settled = settle(message(("Ann@X.test", "to")),
                     [replied(("ann@x.TEST", RCPT_ACCEPTED, 250, "OK"), ("stranger@x.test", RCPT_FAILED, 550, "No"))],
                     NOW, BACKOFF)
    assert settled.status == SENT and [r.address for r in settled.changed] == ["Ann@X.test"]


@pytest.mark.parametrize("status", [RCPT_ACCEPTED, RCPT_FAILED, RCPT_TRAINING])
def test_a_retry_goes_only_to_the_recipients_not_yet_settled(status):
    claimed = message(("a@x.test", "to"), ("b@x.test", "to"))
    claimed.recipients[0].status = status
    assert [r.address for r in claimed.to_send] == ["b@x.test"]
