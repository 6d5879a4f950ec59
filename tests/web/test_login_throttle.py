"""Login throttling: ten failures within a minute, for one username or from one address, and
further attempts answer 429 with Retry-After until the window has slid past them."""
import pytest
from sqlalchemy import func, select

from tests.conftest import AGENT_PASSWORD, csrf_from
from webapp.core.database import db
from webapp.core.models import AuditEvent, LoginFailure

LIMIT = 10


def attempt(client, username: str, password: str, address: str = "192.0.2.1"):
    """A login through the form, from `address`."""
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": csrf_from(page.text)},
                       environ_base={"REMOTE_ADDR": address})


def attempt_api(client, username: str, password: str, address: str = "192.0.2.1"):
    return client.post("/api/v1/tokens", json={"username": username, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def _fail(client, times: int, username: str = "agent", address: str = "192.0.2.1"):
    for _ in range(times):
        assert attempt(client, username, "wrong", address).status_code == 401


def _throttled_events(app):
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == "user.login_throttled")))


@pytest.mark.databases
def test_ten_failures_for_a_username_throttle_it_from_every_address(client, seed, product_clock):
    for number in range(LIMIT):
        assert attempt(client, "agent", "wrong", address=f"198.51.100.{number}").status_code == 401
    refused = attempt(client, "agent", AGENT_PASSWORD, address="203.0.113.9")
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert "Too many failed logins. Try again in" in refused.text
    assert 'name="password"' in refused.text and 'value="agent"' in refused.text
    # Another username is not throttled.
    assert attempt(client, "admin", "wrong", address="203.0.113.9").status_code == 401


def test_the_username_is_counted_whatever_its_case(client, seed, product_clock):
    for number in range(LIMIT):
        assert attempt(client, "Agent" if number % 2 else " AGENT", "wrong", f"198.51.100.{number}").status_code == 401
    assert attempt(client, "agent", AGENT_PASSWORD, address="203.0.113.9").status_code == 429


@pytest.mark.databases
def test_ten_failures_from_an_address_throttle_it_for_every_username(client, seed, product_clock):
    for number in range(LIMIT):
        assert attempt(client, f"guess{number}", "wrong", address="192.0.2.7").status_code == 401
    assert attempt(client, "agent", AGENT_PASSWORD, address="192.0.2.7").status_code == 429
    assert attempt(client, "agent", AGENT_PASSWORD, address="192.0.2.8").status_code == 302


def test_the_tenth_failure_throttles_not_the_ninth(client, seed, product_clock):
    _fail(client, LIMIT - 1)
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 302
    _fail(client, 1)
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 429


def test_the_window_slides_and_then_the_right_password_works(app, client, seed, product_clock):
    _fail(client, LIMIT)
    product_clock.move(seconds=20)
    refused = attempt(client, "agent", AGENT_PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) == 40
    # Refused attempts are not counted: they do not push the end of the window back.
    product_clock.move(seconds=30)
    for _ in range(5):
        assert attempt(client, "agent", "wrong").status_code == 429
    product_clock.move(seconds=10, milliseconds=1)
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 302


def test_only_the_failures_within_the_last_minute_count(client, seed, product_clock):
    for _ in range(LIMIT * 2):
        _fail(client, 1)
        product_clock.move(seconds=7)
    # Eight of the twenty lie within the last minute.
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 302
    _fail(client, 2)
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 429


def test_failures_that_left_the_window_are_deleted(app, client, seed, product_clock):
    _fail(client, 3)
    product_clock.move(minutes=1, seconds=1)
    _fail(client, 1)
    with app.app_context():
        assert db.session.scalar(select(func.count(LoginFailure.id))) == 1


def test_the_limit_and_the_window_are_the_instance_configurations(app, client, seed, product_clock):
    app.config.update(MAILSENDER_LOGIN_FAILURE_LIMIT=3, MAILSENDER_LOGIN_WINDOW_MINUTES=5)
    _fail(client, 3)
    product_clock.move(minutes=4)
    refused = attempt(client, "agent", AGENT_PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) == 60


@pytest.mark.databases
def test_the_api_answers_a_throttled_token_request_with_json_and_retry_after(client, seed, product_clock):
    for _ in range(LIMIT):
        assert attempt_api(client, "agent", "wrong").status_code == 401
    refused = attempt_api(client, "agent", AGENT_PASSWORD)
    assert refused.status_code == 429
    assert refused.json["error"].startswith("Too many failed logins")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    # The form and the API count the same failures.
    assert attempt(client, "agent", AGENT_PASSWORD).status_code == 429
    product_clock.move(minutes=1, seconds=1)
    assert attempt_api(client, "agent", AGENT_PASSWORD).status_code == 201


def test_the_audit_trail_records_once_that_throttling_began(app, client, seed, product_clock):
    _fail(client, LIMIT)
    for _ in range(3):
        assert attempt(client, "agent", "wrong").status_code == 429
    [event] = _throttled_events(app)
    assert event.partition_id == seed["partition_id"] and event.target_id == seed["agent_id"]
    assert event.details == {"username": "agent", "address": "192.0.2.1", "reached": ["username", "address"]}


def test_an_address_throttled_for_unknown_usernames_is_audited_without_a_partition(app, client, seed,
                                                                                 product_clock):
    for number in range(LIMIT):
        assert attempt(client, f"guess{number}", "wrong", address="192.0.2.7").status_code == 401
    [event] = _throttled_events(app)
    assert event.partition_id is None and event.details["reached"] == ["address"]


@pytest.mark.databases
@pytest.mark.parametrize("username", ["\u0000", "agent\u0000", "ag\nent", "\x7f"])
def test_a_username_with_a_control_character_is_a_wrong_login_not_a_500(client, seed, product_clock, username):
    assert attempt_api(client, username, AGENT_PASSWORD).status_code == 401
    assert attempt(client, username, AGENT_PASSWORD).status_code == 401
    _fail(client, LIMIT - 2, username)
    # And it counts, like any unknown username, towards the throttle.
    assert attempt(client, username, "wrong").status_code == 429
