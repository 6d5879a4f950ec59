"""/admin/directory in the browser's terms: htmx sections, messages by label, what was typed kept."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.conftest import AGENT_PASSWORD, login
from webapp.core.database import db
from webapp.core.directory.mailboxes import create_mailbox
from webapp.core.models import AuditEvent, Department, Mailbox, User


def _root_element(html: str) -> tuple[str, str]:
    """The tag and id of the fragment's one root element (after the template's leading blanks)."""
    match = re.match(r'\s*<(\w+)[^>]*\bid="([^"]+)"', html)
    assert match, html[:200]
    return match.group(1), match.group(2)


def _department_id(app, name):
    with app.app_context():
        return db.session.scalars(select(Department.id).where(Department.name == name)).one()


def _mailboxes(app, seed, *addresses):
    with app.app_context():
        ids = [create_mailbox(seed["partition_id"], {"address": a}, actor="test").id for a in addresses]
        db.session.commit()
        return ids


def test_the_window_shows_three_sections_each_its_own_partial(admin_client, admin_htmx):
    page = admin_client.get("/admin/directory").text
    for section in ("departments", "mailboxes", "users"):
        assert f'id="{section}"' in page
        fragment = admin_htmx.get(f"/admin/directory/{section}")
        assert fragment.status_code == 200
        assert _root_element(fragment.text) == ("section", section)
        assert 'hx-target="this"' in fragment.text.split(">", 1)[0]
        assert "<html" not in fragment.text
        # The page includes the very markup that the section's route answers.
        assert fragment.text.strip().split("\n", 3)[:3] == page[page.index(f'<section class="section" id="{section}"'):].split("\n", 3)[:3]


def test_agents_and_strangers_cannot_use_the_sections(client, agent_client):
    for url in ("/admin/directory/departments", "/admin/directory/mailboxes", "/admin/directory/users"):
        assert agent_client.get(url).status_code == 403
    assert agent_client.post("/admin/directory/departments", data={"name": "x"}).status_code in (400, 403)


@pytest.mark.databases
def test_a_department_is_added_and_the_other_sections_are_told(app, admin_htmx):
    response = admin_htmx.post("/admin/directory/departments", {"name": "Sales", "parent_id": ""})
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "departments-changed"
    assert "Department Sales added." in response.text and 'data-department-id' in response.text
    # The listening sections offer the new department at once.
    assert "Acme / Sales" in admin_htmx.get("/admin/directory/mailboxes").text
    with app.app_context():
        assert db.session.scalars(select(AuditEvent).where(AuditEvent.action == "department.create")).one()


def test_a_refused_mailbox_names_each_field_by_label_and_keeps_what_was_typed(admin_htmx):
    response = admin_htmx.post("/admin/directory/mailboxes",
                               {"address": "not an address", "name": "Help desk", "priority": "soon"})
    assert response.status_code == 422
    assert _root_element(response.text) == ("section", "mailboxes")
    box = response.text[response.text.index('class="error-box"'):response.text.index("</div>")]
    assert "<strong>Address</strong>" in box and "<strong>Priority</strong>" in box
    assert "Display name" not in box
    assert 'value="not an address"' in response.text and 'value="Help desk"' in response.text
    assert 'value="soon"' in response.text


def test_a_mailbox_is_added_and_moved_in_place(app, seed, admin_htmx):
    admin_htmx.post("/admin/directory/departments", {"name": "Sales"})
    sales_id = _department_id(app, "Sales")
    added = admin_htmx.post("/admin/directory/mailboxes",
                            {"address": "sales@acme.test", "name": "Sales", "department_id": "", "priority": "3"})
    assert added.status_code == 200 and "Mailbox sales@acme.test added." in added.text
    with app.app_context():
        mailbox_id = db.session.scalars(select(Mailbox.id)).one()
    editing = admin_htmx.get(f"/admin/directory/mailboxes?edit={mailbox_id}")
    assert 'aria-label="Edit mailbox sales@acme.test"' in editing.text and 'value="3"' in editing.text
    saved = admin_htmx.post(f"/admin/directory/mailboxes/{mailbox_id}", {
        "address": "sales@acme.test", "name": "Sales", "department_id": str(sales_id), "priority": "3"})
    assert saved.status_code == 200 and "saved" in saved.text
    with app.app_context():
        assert db.session.get(Mailbox, mailbox_id).department_id == sales_id


def test_a_taken_address_on_edit_keeps_the_row_open_with_what_was_typed(app, seed, admin_htmx):
    _, second = _mailboxes(app, seed, "info@acme.test", "sales@acme.test")
    response = admin_htmx.post(f"/admin/directory/mailboxes/{second}", {
        "address": "info@acme.test", "name": "Typed name", "department_id": "", "priority": "5"})
    assert response.status_code == 422
    assert 'aria-label="Edit mailbox sales@acme.test"' in response.text
    assert 'value="Typed name"' in response.text and "exists already" in response.text


def test_a_cycle_is_refused_in_the_window(app, admin_htmx):
    admin_htmx.post("/admin/directory/departments", {"name": "Sales"})
    sales_id = _department_id(app, "Sales")
    admin_htmx.post("/admin/directory/departments", {"name": "North", "parent_id": str(sales_id)})
    north_id = _department_id(app, "North")
    # The form offers no parent that would make a cycle...
    editing = admin_htmx.get(f"/admin/directory/departments?edit={sales_id}").text
    form = editing[editing.index('aria-label="Edit department Sales"'):editing.index("</form>")]
    assert f'value="{north_id}"' not in form and f'value="{sales_id}"' not in form
    # ...and the server refuses one all the same.
    response = admin_htmx.post(f"/admin/directory/departments/{sales_id}", {"name": "Sales", "parent_id": str(north_id)})
    assert response.status_code == 422
    assert "<strong>Parent</strong>" in response.text and "cycle" in response.text


def test_a_department_in_use_is_refused_with_the_reason_in_the_window(app, seed, admin_htmx):
    admin_htmx.post("/admin/directory/departments", {"name": "Sales"})
    sales_id = _department_id(app, "Sales")
    with app.app_context():
        create_mailbox(seed["partition_id"], {"address": "sales@acme.test", "department_id": sales_id}, actor="t")
        db.session.commit()
    response = admin_htmx.post(f"/admin/directory/departments/{sales_id}/delete")
    assert response.status_code == 409
    assert "in use by 1 mailbox (sales@acme.test)" in response.text
    root_id = _department_id(app, "Acme")
    refused = admin_htmx.post(f"/admin/directory/departments/{root_id}/delete")
    assert refused.status_code == 409 and "root department cannot be deleted" in refused.text
    assert "Delete department Acme" not in refused.text  # the root offers no Delete at all


def test_an_unused_department_is_deleted_in_the_window(app, admin_htmx):
    admin_htmx.post("/admin/directory/departments", {"name": "Temp"})
    response = admin_htmx.post(f"/admin/directory/departments/{_department_id(app, 'Temp')}/delete")
    assert response.status_code == 200 and "Department Temp deleted." in response.text
    assert response.headers["HX-Trigger"] == "departments-changed"


@pytest.mark.databases
def test_the_last_administrator_is_protected_in_the_window(app, seed, admin_htmx):
    url = f"/admin/directory/users/{seed['admin_id']}"
    fields = {"username": "admin", "email": "admin@acme.test", "role": "admin", "department_ids": ["1"]}
    disabled = admin_htmx.post(url, {**fields, "disabled": "1"})
    assert disabled.status_code == 409
    assert "<strong>Disabled</strong>" in disabled.text and "last active administrator" in disabled.text
    demoted = admin_htmx.post(url, {**fields, "role": "agent"})
    assert demoted.status_code == 409 and "<strong>Role</strong>" in demoted.text
    with app.app_context():
        admin = db.session.get(User, seed["admin_id"])
        assert admin.role == "admin" and not admin.disabled


@pytest.mark.databases
def test_a_user_disabled_in_the_window_loses_their_session_on_the_next_request(app, seed, admin_htmx):
    agent_session = app.test_client()
    login(agent_session, "agent", AGENT_PASSWORD)
    assert agent_session.get("/account").status_code == 200
    response = admin_htmx.post(f"/admin/directory/users/{seed['agent_id']}", {
        "username": "agent", "email": "agent@acme.test", "role": "agent", "department_ids": ["1"],
        "disabled": "1"})
    assert response.status_code == 200 and "disabled" in response.text
    after = agent_session.get("/account")
    assert after.status_code == 302 and after.headers["Location"].startswith("/login")


def test_a_user_is_added_with_several_departments_and_errors_name_labels(app, admin_htmx):
    admin_htmx.post("/admin/directory/departments", {"name": "Sales"})
    admin_htmx.post("/admin/directory/departments", {"name": "Support"})
    ids = [str(_department_id(app, name)) for name in ("Sales", "Support")]
    refused = admin_htmx.post("/admin/directory/users", {"username": "carol", "email": "carol@", "role": "agent",
                                                          "department_ids": ids, "password": "short"})
    assert refused.status_code == 422
    assert "<strong>Email</strong>" in refused.text and "<strong>Password</strong>" in refused.text
    assert 'value="carol"' in refused.text and 'value="carol@"' in refused.text
    assert 'value="short"' not in refused.text  # a password is never sent back
    assert refused.text.count(" selected>Acme / S") == 2  # both chosen departments still chosen
    added = admin_htmx.post("/admin/directory/users", {"username": "carol", "email": "carol@acme.test",
                                                        "role": "agent", "department_ids": ids,
                                                        "password": "carol-pass-1"})
    assert added.status_code == 200 and "User carol added." in added.text
    with app.app_context():
        carol = db.session.scalars(select(User).where(User.username == "carol")).one()
        assert sorted(d.name for d in carol.departments) == ["Sales", "Support"]


def test_an_admin_resets_a_password_in_the_window(app, seed, admin_client, admin_htmx):
    response = admin_htmx.post(f"/admin/directory/users/{seed['agent_id']}", {
        "username": "agent", "email": "agent@acme.test", "role": "agent", "department_ids": ["1"],
        "password": "reset-pass-1"})
    assert response.status_code == 200 and "password was reset, and their API tokens revoked" in response.text
    assert login(app.test_client(), "agent", "reset-pass-1").status_code == 302
    # Resetting one's own password keeps one's own session.
    admin_htmx.post(f"/admin/directory/users/{seed['admin_id']}", {
        "username": "admin", "email": "admin@acme.test", "role": "admin", "department_ids": ["1"],
        "password": "admin-new-pass"})
    assert admin_client.get("/admin/directory").status_code == 200


@pytest.mark.databases
def test_another_partitions_ids_answer_404_in_the_window(admin_htmx, other_partition):
    other = other_partition
    for url in (f"/admin/directory/departments?edit={other['department_id']}",
                f"/admin/directory/mailboxes?edit={other['mailbox_id']}",
                f"/admin/directory/users?edit={other['agent_id']}"):
        response = admin_htmx.get(url)
        assert response.status_code == 404 and "No such" in response.text, url
    for url, data in ((f"/admin/directory/departments/{other['department_id']}", {"name": "Mine"}),
                      (f"/admin/directory/departments/{other['department_id']}/delete", {}),
                      (f"/admin/directory/mailboxes/{other['mailbox_id']}", {"address": "x@acme.test"}),
                      (f"/admin/directory/users/{other['agent_id']}", {"username": "mine", "role": "agent"})):
        response = admin_htmx.post(url, data)
        assert response.status_code == 404 and "No such" in response.text, url
    page = admin_htmx.get("/admin/directory/mailboxes").text + admin_htmx.get("/admin/directory/users").text
    assert "globex" not in page.lower()
    refused = admin_htmx.post("/admin/directory/mailboxes",
                              {"address": "x@acme.test", "department_id": str(other["department_id"])})
    assert refused.status_code == 422 and "<strong>Department</strong>" in refused.text


def test_long_lists_page(app, seed, admin_htmx):
    _mailboxes(app, seed, *[f"box{n:02d}@acme.test" for n in range(30)])
    first = admin_htmx.get("/admin/directory/mailboxes").text
    assert first.count("data-mailbox-id") == 25 and "Page 1 of 2" in first
    assert 'hx-get="/admin/directory/mailboxes?page=2"' in first
    second = admin_htmx.get("/admin/directory/mailboxes?page=2").text
    assert second.count("data-mailbox-id") == 5 and "box29@acme.test" in second and "box00@" not in second
