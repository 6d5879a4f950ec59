"""create-partition and create-user --partition/--department."""
from sqlalchemy import select

from webapp.core.database import db
from webapp.core.directory.lookups import root_department
from webapp.core.models import AuditEvent, Department, Partition, User


def test_create_partition_makes_it_with_its_root(app, runner, seed):
    result = runner.invoke(args=["create-partition", "Globex"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        partition = db.session.scalars(select(Partition).where(Partition.name == "Globex")).one()
        assert root_department(partition.id).name == "Globex"
        assert db.session.scalars(select(AuditEvent).where(AuditEvent.action == "partition.create",
                                                           AuditEvent.partition_id == partition.id)).one()
    again = runner.invoke(args=["create-partition", "Globex"])
    assert again.exit_code == 1 and "exists already" in again.output


def test_create_user_goes_into_the_named_partition_and_departments(app, runner, seed):
    runner.invoke(args=["create-partition", "Globex"])
    with app.app_context():
        partition = db.session.scalars(select(Partition).where(Partition.name == "Globex")).one()
        db.session.add(Department(partition_id=partition.id, name="Sales", parent_id=root_department(partition.id).id))
        db.session.commit()
    result = runner.invoke(args=["create-user", "gina", "--role", "agent", "--partition", "Globex",
                                 "--department", "Sales", "--email", "gina@globex.test", "--password-stdin"],
                           input="gina-pass-1\n")
    assert result.exit_code == 0, result.output
    with app.app_context():
        gina = db.session.scalars(select(User).where(User.username == "gina")).one()
        assert gina.partition.name == "Globex" and [d.name for d in gina.departments] == ["Sales"]
    login = app.test_client().post("/api/v1/tokens", json={"username": "gina", "password": "gina-pass-1"})
    assert login.status_code == 201


def test_create_user_refuses_what_does_not_exist_or_is_bad(runner, seed):
    def create(*args):
        return runner.invoke(args=["create-user", *args, "--password-stdin"], input="some-pass-1\n")

    assert "No partition named" in create("hal", "--role", "agent", "--partition", "Nowhere").output
    assert "No department named" in create("hal", "--role", "agent", "--department", "Nowhere").output
    bad_email = create("hal", "--role", "agent", "--email", "not-an-address")
    assert bad_email.exit_code == 1 and "address" in bad_email.output
    taken = create("agent", "--role", "agent")
    assert taken.exit_code == 1 and "taken" in taken.output
