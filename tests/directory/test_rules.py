"""The directory's rules, called as the views and the API call them (SQLite and PostgreSQL)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD
from webapp.core.database import db
from webapp.core.directory import departments, lookups, mailboxes, tokens, users
from webapp.core.directory.checks import DirectoryError
from webapp.core.directory.lookups import root_department
from webapp.core.directory.tokens import issue_token, user_for_token
from webapp.core.models import ApiToken, AuditEvent, Department, Mailbox, User

pytestmark = pytest.mark.databases


@pytest.fixture
def ctx(app, seed):
    """An app context with the seeded admin as the actor."""
    with app.app_context():
        admin = db.session.get(User, seed["admin_id"])
        context = {"partition_id": seed["partition_id"], "admin": admin,
               "agent": db.session.get(User, seed["agent_id"]),
               "root": root_department(seed["partition_id"])}
        # End the read transaction: on SQLite it holds the write lock that other fixtures need.
        db.session.commit()
        yield context


def _department(ctx, name, parent=None):
    data = {"name": name, "parent_id": parent.id if parent else None}
    department = departments.create_department(ctx["partition_id"], data, actor=ctx["admin"])
    db.session.commit()
    return department


def _mailbox(ctx, address, department=None, **extra):
    data = {"address": address, "name": address, "department_id": department.id if department else None, **extra}
    mailbox = mailboxes.create_mailbox(ctx["partition_id"], data, actor=ctx["admin"])
    db.session.commit()
    return mailbox


def _refusal(call, *args, **kwargs) -> DirectoryError:
    with pytest.raises(DirectoryError) as caught:
        call(*args, **kwargs)
    db.session.rollback()
    return caught.value


def _events(action):
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# --- departments --------------------------------------------------------------------------


def test_a_department_goes_under_the_root_by_default_and_is_audited(ctx):
    sales = _department(ctx, "Sales")
    assert sales.parent_id == ctx["root"].id
    [event] = _events("department.create")
    assert (event.actor, event.target_id, event.details["name"]) == ("admin", sales.id, "Sales")


def test_department_names_are_unique_in_the_partition(ctx):
    _department(ctx, "Sales")
    error = _refusal(departments.create_department, ctx["partition_id"], {"name": "sales"}, actor=ctx["admin"])
    assert error.status == 422 and "exists already" in error.fields["name"]


def test_a_department_name_is_required_and_has_no_line_breaks(ctx):
    error = _refusal(departments.create_department, ctx["partition_id"], {"name": "  "}, actor=ctx["admin"])
    assert "required" in error.fields["name"]
    error = _refusal(departments.create_department, ctx["partition_id"], {"name": "A\r\nB"}, actor=ctx["admin"])
    assert "line breaks" in error.fields["name"]


def test_a_department_moves_and_renames_and_is_audited(ctx):
    sales, support = _department(ctx, "Sales"), _department(ctx, "Support")
    departments.update_department(support, {"name": "Help desk", "parent_id": sales.id}, actor=ctx["admin"])
    db.session.commit()
    assert (support.name, support.parent_id) == ("Help desk", sales.id)
    [event] = _events("department.update")
    assert event.details == {"name": ["Support", "Help desk"], "parent_id": [ctx["root"].id, sales.id]}


def test_a_move_under_a_descendant_is_refused_as_a_cycle(ctx):
    sales = _department(ctx, "Sales")
    north = _department(ctx, "North", sales)
    city = _department(ctx, "City", north)
    error = _refusal(departments.update_department, sales, {"parent_id": city.id}, actor=ctx["admin"])
    assert error.status == 422 and "cycle" in error.fields["parent_id"]
    error = _refusal(departments.update_department, sales, {"parent_id": sales.id}, actor=ctx["admin"])
    assert "cycle" in error.fields["parent_id"]
    assert db.session.get(Department, sales.id).parent_id == ctx["root"].id
    assert _events("department.update") == []


def test_the_root_cannot_be_moved_or_deleted_but_can_be_renamed(ctx):
    sales = _department(ctx, "Sales")
    root = ctx["root"]
    error = _refusal(departments.update_department, root, {"parent_id": sales.id}, actor=ctx["admin"])
    assert "root" in error.fields["parent_id"]
    error = _refusal(departments.delete_department, root, actor=ctx["admin"])
    assert error.status == 409 and "root" in error.message
    departments.update_department(root, {"name": "Acme HQ", "parent_id": None}, actor=ctx["admin"])
    db.session.commit()
    assert root_department(ctx["partition_id"]).name == "Acme HQ"


def test_a_department_in_use_is_not_deleted_and_the_reason_names_what_uses_it(ctx):
    sales = _department(ctx, "Sales")
    _department(ctx, "North", sales)
    _mailbox(ctx, "sales@acme.test", sales)
    users.update_user(ctx["agent"], {"department_ids": [sales.id]}, actor=ctx["admin"])
    db.session.commit()
    error = _refusal(departments.delete_department, sales, actor=ctx["admin"])
    assert error.status == 409
    assert "1 mailbox (sales@acme.test)" in error.message
    assert "1 user (agent)" in error.message
    assert "1 child department (North)" in error.message
    assert db.session.get(Department, sales.id) is not None


def test_an_unused_department_is_deleted_and_audited(ctx):
    sales = _department(ctx, "Sales")
    sales_id = sales.id
    departments.delete_department(sales, actor=ctx["admin"])
    db.session.commit()
    assert db.session.get(Department, sales_id) is None
    [event] = _events("department.delete")
    assert event.target_id == sales_id and event.details == {"name": "Sales"}


def test_the_tree_lists_the_root_first_and_each_parent_before_its_children(ctx):
    support = _department(ctx, "Support")
    sales = _department(ctx, "Sales")
    _department(ctx, "Zeta", sales)
    _department(ctx, "Alpha", support)
    tree = [(d.name, depth) for d, depth in lookups.department_tree(ctx["partition_id"])]
    assert tree == [("Acme", 0), ("Sales", 1), ("Zeta", 2), ("Support", 1), ("Alpha", 2)]


# --- mailboxes ----------------------------------------------------------------------------


def test_a_bad_address_writes_no_mailbox(ctx):
    error = _refusal(mailboxes.create_mailbox, ctx["partition_id"], {"address": "a@acme.test\r\nBcc: x@evil.test"},
                     actor=ctx["admin"])
    assert error.status == 422 and error.fields["address"]
    assert db.session.scalars(select(Mailbox)).first() is None
    assert _events("mailbox.create") == []


def test_a_display_name_may_not_hide_a_line_break_in_an_encoded_word(ctx):
    error = _refusal(mailboxes.create_mailbox, ctx["partition_id"],
                     {"address": "a@acme.test", "name": "Sales =?UTF-8?Q?=0D=0ABcc:_x@evil.test?="},
                     actor=ctx["admin"])
    assert set(error.fields) == {"name"}


def test_a_mailbox_gets_the_root_priority_5_and_a_lower_case_domain(ctx):
    mailbox = _mailbox(ctx, "Sales.Team@ACME.Test")
    assert (mailbox.address, mailbox.department_id, mailbox.priority) == ("Sales.Team@acme.test", ctx["root"].id, 5)
    [event] = _events("mailbox.create")
    assert event.details["address"] == "Sales.Team@acme.test"


def test_a_mailbox_address_is_unique_in_its_partition_only(other_partition, ctx):
    _mailbox(ctx, "info@acme.test")
    error = _refusal(mailboxes.create_mailbox, ctx["partition_id"], {"address": "INFO@acme.test"},
                     actor=ctx["admin"])
    assert "exists already" in error.fields["address"]
    other = mailboxes.create_mailbox(other_partition["partition_id"], {"address": "info@acme.test"},
                                     actor="test")
    db.session.commit()
    assert other.partition_id == other_partition["partition_id"]


def test_every_bad_mailbox_field_is_named_at_once(other_partition, ctx):
    error = _refusal(mailboxes.create_mailbox, ctx["partition_id"], {
        "address": "bad", "name": "x\ny", "priority": "high",
        "department_id": other_partition["department_id"]}, actor=ctx["admin"])
    assert set(error.fields) == {"address", "name", "priority", "department_id"}
    assert error.fields["department_id"] == "No such department."


def test_a_priority_is_a_whole_number_in_range(ctx):
    for priority in (-1, 1001, "1.5", True, [1]):
        error = _refusal(mailboxes.create_mailbox, ctx["partition_id"],
                         {"address": "a@acme.test", "priority": priority}, actor=ctx["admin"])
        assert "priority" in error.fields, priority


def test_moving_a_mailbox_changes_the_users_mailboxes_at_once(ctx):
    sales = _department(ctx, "Sales")
    mailbox = _mailbox(ctx, "sales@acme.test")
    agent = ctx["agent"]
    assert [m.address for m in lookups.user_mailboxes(agent)] == ["sales@acme.test"]
    mailboxes.update_mailbox(mailbox, {"department_id": sales.id}, actor=ctx["admin"])
    db.session.commit()
    assert lookups.user_mailboxes(agent) == []
    users.update_user(agent, {"department_ids": [sales.id]}, actor=ctx["admin"])
    db.session.commit()
    assert [m.address for m in lookups.user_mailboxes(agent)] == ["sales@acme.test"]
    [event] = _events("mailbox.update")
    assert event.details == {"department_id": [ctx["root"].id, sales.id]}


def test_a_mailbox_edit_checks_the_address_and_its_uniqueness(ctx):
    _mailbox(ctx, "info@acme.test")
    sales = _mailbox(ctx, "sales@acme.test")
    error = _refusal(mailboxes.update_mailbox, sales, {"address": "info@acme.test", "priority": 2},
                     actor=ctx["admin"])
    assert "exists already" in error.fields["address"]
    assert db.session.get(Mailbox, sales.id).priority == 5  # nothing half-written
    mailboxes.update_mailbox(sales, {"address": "orders@acme.test", "priority": 2}, actor=ctx["admin"])
    db.session.commit()
    assert (sales.address, sales.priority) == ("orders@acme.test", 2)


# --- users --------------------------------------------------------------------------------


def test_a_new_user_is_in_the_root_unless_departments_are_given(ctx):
    sales = _department(ctx, "Sales")
    support = _department(ctx, "Support")
    plain = users.add_user(ctx["partition_id"], {"username": "carol", "password": "carol-pass-1",
                                                     "role": "agent"}, actor=ctx["admin"])
    several = users.add_user(ctx["partition_id"], {
        "username": "dave", "password": "dave-pass-1", "role": "agent", "email": "dave@acme.test",
        "department_ids": [sales.id, str(support.id)]}, actor=ctx["admin"])
    db.session.commit()
    assert [d.name for d in plain.departments] == ["Acme"]
    assert sorted(d.name for d in several.departments) == ["Sales", "Support"]
    assert {e.details["username"] for e in _events("user.create")} >= {"carol", "dave"}


def test_every_bad_user_field_is_named_and_nothing_is_written(other_partition, ctx):
    error = _refusal(users.add_user, ctx["partition_id"], {
        "username": "has space", "password": "short", "role": "boss", "email": "not-an-address",
        "department_ids": [other_partition["department_id"]], "disabled": "yes"}, actor=ctx["admin"])
    assert set(error.fields) == {"username", "password", "role", "email", "department_ids", "disabled"}
    assert db.session.scalars(select(User).where(User.username == "has space")).first() is None


def test_usernames_are_unique_across_partitions(other_partition, ctx):
    error = _refusal(users.add_user, ctx["partition_id"], {
        "username": "Globex-Admin", "password": "long-enough", "role": "agent"}, actor=ctx["admin"])
    assert error.status == 409 and "taken" in error.message


def test_disabling_a_user_ends_sessions_and_revokes_every_token_at_once(ctx):
    agent = ctx["agent"]
    tokens = [issue_token(agent), issue_token(agent)]
    db.session.commit()
    version = agent.session_version
    users.update_user(agent, {"disabled": True}, actor=ctx["admin"])
    db.session.commit()
    assert agent.disabled and agent.session_version == version + 1
    assert all(row.revoked_at is not None for row in db.session.scalars(select(ApiToken)))
    assert [user_for_token(token) for token in tokens] == [None, None]
    [event] = _events("user.disable")
    assert event.details == {"username": "agent", "tokens_revoked": 2}
    # Enabling again does not bring the old tokens back.
    users.update_user(agent, {"disabled": False}, actor=ctx["admin"])
    db.session.commit()
    assert [user_for_token(token) for token in tokens] == [None, None]
    assert _events("user.enable")


def test_a_password_reset_ends_sessions_and_keeps_no_secret_in_the_audit(ctx):
    agent = ctx["agent"]
    version = agent.session_version
    users.update_user(agent, {"password": "brand-new-pass"}, actor=ctx["admin"])
    db.session.commit()
    assert agent.session_version == version + 1
    from webapp.core.directory.users import authenticate

    assert authenticate("agent", "brand-new-pass") is agent
    assert authenticate("agent", AGENT_PASSWORD) is None
    [event] = _events("user.password_reset")
    assert "brand-new-pass" not in str(event.details)


def test_the_last_active_administrator_can_be_neither_disabled_nor_demoted(ctx):
    admin = ctx["admin"]
    for change, field in (({"disabled": True}, "disabled"), ({"role": "agent"}, "role")):
        error = _refusal(users.update_user, admin, change, actor=admin)
        assert error.status == 409 and "last active administrator" in error.fields[field]
    assert admin.role == "admin" and not admin.disabled


def test_an_administrator_may_go_once_another_active_one_exists(ctx):
    admin = ctx["admin"]
    second = users.add_user(ctx["partition_id"], {"username": "root2", "password": "second-pass",
                                                      "role": "admin", "disabled": True}, actor=admin)
    db.session.commit()
    # A disabled administrator does not count.
    assert _refusal(users.update_user, admin, {"role": "agent"}, actor=admin).status == 409
    users.update_user(second, {"disabled": False}, actor=admin)
    users.update_user(admin, {"role": "agent"}, actor=admin)
    db.session.commit()
    assert admin.role == "agent"
    assert _refusal(users.update_user, second, {"disabled": True}, actor=second).status == 409


def test_an_administrator_in_another_partition_does_not_count(other_partition, ctx):
    assert _refusal(users.update_user, ctx["admin"], {"disabled": True}, actor=ctx["admin"]).status == 409


def test_a_user_changes_their_own_password_with_the_current_one(ctx):
    agent = ctx["agent"]
    error = _refusal(users.change_own_password, agent, "wrong", "another-pass-1")
    assert "wrong" in error.fields["current_password"]
    error = _refusal(users.change_own_password, agent, AGENT_PASSWORD, "short")
    assert set(error.fields) == {"new_password"}
    version = agent.session_version
    users.change_own_password(agent, AGENT_PASSWORD, "another-pass-1")
    db.session.commit()
    from webapp.core.directory.users import authenticate

    assert authenticate("agent", "another-pass-1") is agent and agent.session_version == version + 1
    [event] = _events("user.password_change")
    assert event.actor == "agent" and "another-pass-1" not in str(event.details)


def test_a_user_edit_changes_the_fields_it_names_and_is_audited(ctx):
    agent = ctx["agent"]
    sales = _department(ctx, "Sales")
    users.update_user(agent, {"username": "agent007", "email": "Bond@ACME.test",
                                  "department_ids": [sales.id, ctx["root"].id]}, actor=ctx["admin"])
    db.session.commit()
    assert (agent.username, agent.email) == ("agent007", "Bond@acme.test")
    assert sorted(d.id for d in agent.departments) == sorted([sales.id, ctx["root"].id])
    [event] = _events("user.update")
    assert event.details["username"] == ["agent", "agent007"]
    # No department named means the root.
    users.update_user(agent, {"department_ids": []}, actor=ctx["admin"])
    db.session.commit()
    assert [d.id for d in agent.departments] == [ctx["root"].id]


def test_revoking_a_token_is_audited_once(ctx):
    issue_token(ctx["agent"])
    db.session.commit()
    row = db.session.scalars(select(ApiToken)).one()
    tokens.revoke_token(row, actor=ctx["admin"])
    tokens.revoke_token(row, actor=ctx["admin"])
    db.session.commit()
    assert len(_events("token.revoke")) == 1
    assert tokens.user_tokens(ctx["agent"]) == []


def test_create_user_still_refuses_a_foreign_department(other_partition, ctx):
    from webapp.core.models import Partition

    partition = db.session.get(Partition, ctx["partition_id"])
    foreign = db.session.get(Department, other_partition["department_id"])
    error = _refusal(users.create_user, partition, "eve", ADMIN_PASSWORD, "agent", departments=[foreign])
    assert "department_ids" in error.fields
