"""Bodies the API cannot take: each is a 400 saying why (and naming the field where there is one),
never a 500 and never a row written."""
import pytest
from sqlalchemy import func, select

from webapp.core.database import db
from webapp.core.models import Department, OutgoingMessage


def _post(client, url, raw, headers=None, method="post"):
    return getattr(client, method)(url, data=raw, headers={"Content-Type": "application/json", **(headers or {})})


@pytest.mark.parametrize("url, raw, field, method", [
    ("/api/v1/departments", '{"name": "Sales\\udfff"}', "name", "post"),
    ("/api/v1/messages", '{"kind": "origination", "to": ["a@b.test"], "subject": "x\\ud800"}', "subject", "post"),
    ("/api/v1/messages", '{"to": ["a@b.test\\udc00"]}', "to", "post"),
    ("/api/v1/mail-sender/settings", '{"smtp_host": "a\\ud800"}', "smtp_host", "put"),
    ("/api/v1/mail-sender/test", '{"smtp_username": "\\ud800"}', "smtp_username", "post"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(app, client, admin_api, url, raw, field, method):
    response = _post(client, url, raw, admin_api, method)
    assert response.status_code == 400, response.text
    assert field in response.json["fields"] and "Unicode" in response.json["error"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(OutgoingMessage)) == 0
        assert db.session.scalar(select(func.count()).where(Department.name.like("Sales%"))) == 0


def test_a_lone_surrogate_in_a_login_is_a_400_not_a_500(client, seed):
    response = _post(client, "/api/v1/tokens", '{"username": "\\ud800", "password": "x"}')
    assert response.status_code == 400 and "username" in response.json["fields"]


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_a_body_nested_too_deep_is_a_400(client, admin_api, depth):
    raw = '{"name": ' + "[" * depth + "]" * depth + "}"
    response = _post(client, "/api/v1/departments", raw, admin_api)
    assert response.status_code == 400 and "nested deeper" in response.json["error"]


def test_a_body_nested_to_the_limit_reaches_the_rules(client, admin_api):
    raw = '{"name": ' + "[" * 31 + "]" * 31 + "}"
    response = _post(client, "/api/v1/departments", raw, admin_api)
    assert response.status_code == 422 and "name" in response.json["fields"]


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_a_number_that_is_not_finite_is_a_400(client, admin_api, number):
    raw = '{"kind": "reply", "incoming_id": ' + number + ', "to": ["a@b.test"]}'
    response = _post(client, "/api/v1/messages", raw, admin_api)
    assert response.status_code == 400 and number in response.json["error"], response.text


def test_an_id_too_large_for_the_database_is_a_422_naming_it(client, admin_api):
    raw = '{"kind": "reply", "incoming_id": ' + str(2 ** 80) + ', "to": ["a@b.test"]}'
    response = _post(client, "/api/v1/messages", raw, admin_api)
    assert response.status_code == 422 and "incoming_id" in response.json["fields"]


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe\x00", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_a_400(client, admin_api, raw):
    response = _post(client, "/api/v1/departments", raw, admin_api)
    assert response.status_code == 400 and response.json["error"].startswith("The body")


def test_the_smtp_test_takes_an_empty_body_as_the_saved_settings(client, admin_api):
    response = client.post("/api/v1/mail-sender/test", headers=admin_api)
    assert response.status_code == 200, response.text
