"""The directory over the API: /api/v1/departments, /mailboxes, /users, /me/password."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import AGENT_PASSWORD, api_token, csrf_from, login
from tests.directory.conftest import OTHER_PASSWORD
from webapp.core.database import db
from webapp.core.models import AuditEvent


def _post(client, url, headers, **body):
    return client.post(url, json=body, headers=headers)


def _patch(client, url, headers, **body):
    return client.patch(url, json=body, headers=headers)


def _department(client, headers, name, parent_id=None):
    response = _post(client, "/api/v1/departments", headers, name=name, parent_id=parent_id)
    assert response.status_code == 201, response.text
    return response.json


def _mailbox(client, headers, address, department_id=None, **extra):
    response = _post(client, "/api/v1/mailboxes", headers, address=address, department_id=department_id, **extra)
    assert response.status_code == 201, response.text
    return response.json


def _from_addresses(client, headers):
    response = client.get("/api/v1/mailboxes?for=from", headers=headers)
    assert response.status_code == 200
    return [item["address"] for item in response.json["items"]]


# --- departments --------------------------------------------------------------------------


@pytest.mark.databases
def test_departments_are_created_listed_root_first_and_paged(client, admin_api, agent_api):
    sales = _department(client, admin_api, "Sales")
    assert set(sales) == {"id", "name", "parent_id"}
    for name in ("Support", "Billing", "Legal"):
        _department(client, admin_api, name, sales["id"])
    first = client.get("/api/v1/departments?limit=2", headers=agent_api).json
    assert [item["name"] for item in first["items"]] == ["Acme", "Sales"]
    assert first["items"][0]["parent_id"] is None and first["next"]
    second = client.get(f"/api/v1/departments?limit=2&cursor={first['next']}", headers=agent_api).json
    third = client.get(f"/api/v1/departments?limit=2&cursor={second['next']}", headers=agent_api).json
    assert [item["name"] for item in second["items"] + third["items"]] == ["Support", "Billing", "Legal"]
    assert third["next"] is None


def test_bad_paging_parameters_are_named(client, agent_api):
    response = client.get("/api/v1/departments?limit=0&cursor=abc", headers=agent_api)
    assert response.status_code == 400 and set(response.json["fields"]) == {"limit", "cursor"}
    assert client.get("/api/v1/departments?limit=501", headers=agent_api).status_code == 400


def test_only_administrators_change_departments(client, agent_api):
    assert _post(client, "/api/v1/departments", agent_api, name="Sales").status_code == 403
    assert client.get("/api/v1/departments", headers=agent_api).status_code == 200


@pytest.mark.databases
def test_a_cycle_is_refused_over_the_api(client, admin_api):
    sales = _department(client, admin_api, "Sales")
    north = _department(client, admin_api, "North", sales["id"])
    response = _patch(client, f"/api/v1/departments/{sales['id']}", admin_api, parent_id=north["id"])
    assert response.status_code == 422 and "cycle" in response.json["fields"]["parent_id"]
    moved = _patch(client, f"/api/v1/departments/{north['id']}", admin_api, name="Nord", parent_id=1)
    assert moved.status_code == 200 and moved.json == {"id": north["id"], "name": "Nord", "parent_id": 1}


@pytest.mark.databases
def test_the_root_is_protected_over_the_api(client, admin_api):
    sales = _department(client, admin_api, "Sales")
    root_id = client.get("/api/v1/departments", headers=admin_api).json["items"][0]["id"]
    response = _patch(client, f"/api/v1/departments/{root_id}", admin_api, parent_id=sales["id"])
    assert response.status_code == 422 and "root" in response.json["fields"]["parent_id"]
    response = client.delete(f"/api/v1/departments/{root_id}", headers=admin_api)
    assert response.status_code == 409 and "root" in response.json["error"]


@pytest.mark.databases
def test_a_department_in_use_answers_409_with_the_reason(client, admin_api):
    sales = _department(client, admin_api, "Sales")
    _mailbox(client, admin_api, "sales@acme.test", sales["id"])
    response = client.delete(f"/api/v1/departments/{sales['id']}", headers=admin_api)
    assert response.status_code == 409
    assert "in use" in response.json["error"] and "sales@acme.test" in response.json["error"]
    empty = _department(client, admin_api, "Empty")
    assert client.delete(f"/api/v1/departments/{empty['id']}", headers=admin_api).status_code == 204
    assert client.get(f"/api/v1/departments/{empty['id']}", headers=admin_api).status_code == 404


def test_a_bad_body_is_a_400_not_a_500(client, admin_api):
    assert client.post("/api/v1/departments", data="[]", headers=admin_api).status_code == 400
    response = _post(client, "/api/v1/departments", admin_api, name=["x"], parent_id={"a": 1})
    assert response.status_code == 422 and set(response.json["fields"]) == {"name", "parent_id"}
    response = _patch(client, "/api/v1/users/1", admin_api, department_ids="1", disabled="no")
    assert response.status_code == 422 and set(response.json["fields"]) == {"department_ids", "disabled"}


# --- mailboxes ----------------------------------------------------------------------------


@pytest.mark.databases
def test_admins_list_every_mailbox_and_agents_only_theirs(client, admin_api, agent_api):
    sales = _department(client, admin_api, "Sales")
    root_box = _mailbox(client, admin_api, "info@acme.test")
    _mailbox(client, admin_api, "sales@acme.test", sales["id"], name="Sales", priority=2)
    assert root_box == {"id": root_box["id"], "address": "info@acme.test", "name": "",
                        "department_id": 1, "priority": 5}
    everything = client.get("/api/v1/mailboxes", headers=admin_api).json
    assert sorted(item["address"] for item in everything["items"]) == ["info@acme.test", "sales@acme.test"]
    mine = client.get("/api/v1/mailboxes", headers=agent_api).json
    assert [item["address"] for item in mine["items"]] == ["info@acme.test"]
    sales_id = everything["items"][1]["id"]
    assert client.get(f"/api/v1/mailboxes/{sales_id}", headers=agent_api).status_code == 404
    assert client.get(f"/api/v1/mailboxes/{sales_id}", headers=admin_api).json["priority"] == 2


@pytest.mark.databases
def test_for_from_gives_the_callers_own_and_a_move_changes_it_at_once(client, admin_api, agent_api):
    sales = _department(client, admin_api, "Sales")
    mailbox = _mailbox(client, admin_api, "sales@acme.test")
    # Administrators too get only their own departments' mailboxes as From choices.
    _mailbox(client, admin_api, "elsewhere@acme.test", sales["id"])
    assert _from_addresses(client, admin_api) == ["sales@acme.test"]
    assert _from_addresses(client, agent_api) == ["sales@acme.test"]
    _patch(client, f"/api/v1/mailboxes/{mailbox['id']}", admin_api, department_id=sales["id"])
    assert _from_addresses(client, agent_api) == []
    assert _from_addresses(client, admin_api) == []
    assert client.get("/api/v1/mailboxes?for=to", headers=agent_api).status_code == 400


def test_mailbox_paging_over_the_callers_own(client, admin_api, agent_api):
    for number in range(5):
        _mailbox(client, admin_api, f"box{number}@acme.test")
    first = client.get("/api/v1/mailboxes?for=from&limit=3", headers=agent_api).json
    second = client.get(f"/api/v1/mailboxes?for=from&limit=3&cursor={first['next']}", headers=agent_api).json
    addresses = [item["address"] for item in first["items"] + second["items"]]
    assert sorted(addresses) == [f"box{n}@acme.test" for n in range(5)] and second["next"] is None


def test_a_bad_or_taken_address_is_named(client, admin_api):
    response = _post(client, "/api/v1/mailboxes", admin_api, address="a@acme.test\r\nBcc: b@evil.test")
    assert response.status_code == 422 and "address" in response.json["fields"]
    _mailbox(client, admin_api, "info@acme.test")
    response = _post(client, "/api/v1/mailboxes", admin_api, address="INFO@acme.test")
    assert response.status_code == 422 and "exists already" in response.json["fields"]["address"]
    assert _post(client, "/api/v1/mailboxes", admin_api, address="ok@acme.test", priority="x").json[
        "fields"] == {"priority": "The priority must be a whole number."}


def test_only_administrators_change_mailboxes(client, admin_api, agent_api):
    mailbox = _mailbox(client, admin_api, "info@acme.test")
    assert _post(client, "/api/v1/mailboxes", agent_api, address="x@acme.test").status_code == 403
    assert _patch(client, f"/api/v1/mailboxes/{mailbox['id']}", agent_api, name="x").status_code == 403


# --- users --------------------------------------------------------------------------------


@pytest.mark.databases
def test_users_are_created_listed_and_edited(client, admin_api, agent_api):
    sales = _department(client, admin_api, "Sales")
    response = _post(client, "/api/v1/users", admin_api, username="carol", password="carol-pass-1",
                     role="agent", email="carol@acme.test", department_ids=[sales["id"], 1])
    assert response.status_code == 201
    carol = response.json
    assert {k: carol[k] for k in ("username", "role", "email", "disabled")} == {
        "username": "carol", "role": "agent", "email": "carol@acme.test", "disabled": False}
    assert sorted(carol["department_ids"]) == [1, sales["id"]] and "password" not in str(carol)
    listed = client.get("/api/v1/users?limit=2", headers=admin_api).json
    assert [u["username"] for u in listed["items"]] == ["admin", "agent"] and listed["next"]
    edited = _patch(client, f"/api/v1/users/{carol['id']}", admin_api, role="admin", department_ids=[])
    assert edited.json["role"] == "admin" and edited.json["department_ids"] == [1]
    assert client.get("/api/v1/users", headers=agent_api).status_code == 403
    assert _post(client, "/api/v1/users", agent_api, username="x").status_code == 403


def test_a_new_users_fields_are_all_named(client, admin_api):
    response = _post(client, "/api/v1/users", admin_api, username="", password="x", role="root",
                     email="nope", department_ids=[999])
    assert response.status_code == 422
    assert set(response.json["fields"]) == {"username", "password", "role", "email", "department_ids"}
    taken = _post(client, "/api/v1/users", admin_api, username="agent", password="long-enough",
                  role="agent")
    assert taken.status_code == 409 and "taken" in taken.json["error"]


@pytest.mark.databases
def test_a_disabled_users_session_and_token_are_dead_on_the_next_request(app, client, seed, admin_api):
    agent_session = app.test_client()
    assert login(agent_session, "agent", AGENT_PASSWORD).status_code == 302
    agent_api = api_token(client, "agent", AGENT_PASSWORD)
    assert agent_session.get("/api/v1/me").status_code == 200
    assert client.get("/api/v1/me", headers=agent_api).status_code == 200
    response = _patch(client, f"/api/v1/users/{seed['agent_id']}", admin_api, disabled=True)
    assert response.status_code == 200 and response.json["disabled"] is True
    assert agent_session.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers=agent_api).status_code == 401
    # Enabled again, the user logs in afresh; the old token stays revoked.
    _patch(client, f"/api/v1/users/{seed['agent_id']}", admin_api, disabled=False)
    assert client.get("/api/v1/me", headers=agent_api).status_code == 401
    assert client.get("/api/v1/me", headers=api_token(client, "agent", AGENT_PASSWORD)).status_code == 200


@pytest.mark.databases
def test_the_last_administrator_is_protected_over_the_api(client, seed, admin_api):
    url = f"/api/v1/users/{seed['admin_id']}"
    disabled = _patch(client, url, admin_api, disabled=True)
    assert disabled.status_code == 409 and "last active administrator" in disabled.json["fields"]["disabled"]
    demoted = _patch(client, url, admin_api, role="agent")
    assert demoted.status_code == 409 and "last active administrator" in demoted.json["fields"]["role"]
    assert client.get("/api/v1/me", headers=admin_api).json["role"] == "admin"


def test_an_admin_resets_a_password_and_the_old_session_ends(app, client, seed, admin_api):
    agent_session = app.test_client()
    login(agent_session, "agent", AGENT_PASSWORD)
    response = _patch(client, f"/api/v1/users/{seed['agent_id']}", admin_api, password="reset-pass-1")
    assert response.status_code == 200
    assert agent_session.get("/api/v1/me").status_code == 401
    assert login(app.test_client(), "agent", "reset-pass-1").status_code == 302
    short = _patch(client, f"/api/v1/users/{seed['agent_id']}", admin_api, password="x")
    assert short.status_code == 422 and "password" in short.json["fields"]


def test_an_admin_resetting_their_own_password_keeps_their_cookie_session(admin_client, seed):
    csrf = csrf_from(admin_client.get("/admin/directory").text)
    response = admin_client.patch(f"/api/v1/users/{seed['admin_id']}", json={"password": "new-admin-pass"},
                                  headers={"X-CSRFToken": csrf})
    assert response.status_code == 200
    assert admin_client.get("/api/v1/me").status_code == 200


def test_a_user_changes_their_own_password_over_the_api(app, client, seed, agent_api):
    other_session = app.test_client()
    login(other_session, "agent", AGENT_PASSWORD)
    wrong = client.put("/api/v1/me/password", json={"current_password": "nope", "new_password": "new-pass-12"},
                       headers=agent_api)
    assert wrong.status_code == 422 and "current_password" in wrong.json["fields"]
    response = client.put("/api/v1/me/password",
                          json={"current_password": AGENT_PASSWORD, "new_password": "new-pass-12"},
                          headers=agent_api)
    assert response.status_code == 204
    assert other_session.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers=agent_api).status_code == 401  # a password change revokes it
    assert login(app.test_client(), "agent", "new-pass-12").status_code == 302


# --- partitions ---------------------------------------------------------------------------


@pytest.mark.databases
def test_another_partitions_ids_answer_404(client, seed, admin_api, other_partition):
    other = other_partition
    for method, url, body in (
        ("get", f"/api/v1/departments/{other['department_id']}", None),
        ("patch", f"/api/v1/departments/{other['department_id']}", {"name": "Mine"}),
        ("delete", f"/api/v1/departments/{other['department_id']}", None),
        ("get", f"/api/v1/mailboxes/{other['mailbox_id']}", None),
        ("patch", f"/api/v1/mailboxes/{other['mailbox_id']}", {"name": "Mine"}),
        ("get", f"/api/v1/users/{other['agent_id']}", None),
        ("patch", f"/api/v1/users/{other['agent_id']}", {"disabled": True}),
        ("get", "/api/v1/departments/999999", None),
    ):
        response = getattr(client, method)(url, json=body, headers=admin_api)
        assert response.status_code == 404, (method, url, response.text)
    # References inside a body are as unknown as the ids in a path.
    response = _post(client, "/api/v1/mailboxes", admin_api, address="x@acme.test",
                     department_id=other["department_id"])
    assert response.status_code == 422 and response.json["fields"]["department_id"] == "No such department."
    listed = client.get("/api/v1/departments", headers=admin_api).json["items"]
    assert [item["name"] for item in listed] == ["Acme"]
    assert client.get("/api/v1/mailboxes", headers=admin_api).json["items"] == []
    assert {u["username"] for u in client.get("/api/v1/users", headers=admin_api).json["items"]} == {
        "admin", "agent"}
    globex_headers = api_token(client, "globex-admin", OTHER_PASSWORD)
    token_id = client.get("/api/v1/tokens", headers=globex_headers).json["items"][0]["id"]
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=admin_api).status_code == 404


def test_an_admin_revokes_anyones_token_in_the_partition(client, seed, admin_api, agent_api):
    token_id = client.get("/api/v1/tokens", headers=agent_api).json["items"][0]["id"]
    assert client.get(f"/api/v1/tokens?user_id={seed['agent_id']}", headers=admin_api).json["items"][0][
        "id"] == token_id
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=admin_api).status_code == 204
    assert client.get("/api/v1/me", headers=agent_api).status_code == 401


def test_an_agent_cannot_revoke_someone_elses_token(client, admin_api, agent_api):
    token_id = client.get("/api/v1/tokens", headers=admin_api).json["items"][0]["id"]
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=agent_api).status_code == 404
    assert client.get("/api/v1/me", headers=admin_api).status_code == 200


@pytest.mark.databases
def test_every_api_change_is_audited(app, client, seed, admin_api):
    sales = _department(client, admin_api, "Sales")
    _patch(client, f"/api/v1/departments/{sales['id']}", admin_api, name="Sales EU")
    mailbox = _mailbox(client, admin_api, "info@acme.test")
    _patch(client, f"/api/v1/mailboxes/{mailbox['id']}", admin_api, department_id=sales["id"])
    carol = _post(client, "/api/v1/users", admin_api, username="carol", password="carol-pass-1",
                  role="agent").json
    _patch(client, f"/api/v1/users/{carol['id']}", admin_api, disabled=True, password="carol-pass-2")
    client.delete(f"/api/v1/departments/{_department(client, admin_api, 'Tmp')['id']}", headers=admin_api)
    with app.app_context():
        events = list(db.session.scalars(select(AuditEvent).where(AuditEvent.actor == "admin")))
        actions = [event.action for event in events]
        assert all(event.user_id == seed["admin_id"] and event.at is not None for event in events)
    for action in ("department.create", "department.update", "department.delete", "mailbox.create",
                   "mailbox.update", "user.create", "user.update", "user.disable", "user.password_reset"):
        assert action in actions, action
