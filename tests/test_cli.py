"""The commands of API.md: init, create-partition, create-user."""
import os
import stat

from sqlalchemy import select

from webapp.core.database import db
from webapp.core.models import Department, Partition, User


def _init_config(app):
    # `init` makes the key file only where no key is configured.
    app.config["MAILSENDER_SECRET_KEY"] = None


def test_init_makes_partition_admin_and_key_file_and_prints_the_password(app, runner, monkeypatch):
    monkeypatch.delenv("MAILSENDER_SECRET_KEY", raising=False)
    monkeypatch.delenv("MAILSENDER_ADMIN_PASSWORD", raising=False)
    _init_config(app)
    result = runner.invoke(args=["init"])
    assert result.exit_code == 0, result.output
    assert "Created user 'admin' with password: " in result.output
    password = result.output.split("with password: ")[1].split()[0]
    key_file = os.path.join(app.instance_path, "secret.key")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    with app.app_context():
        from webapp.core.directory.users import authenticate

        assert authenticate("admin", password).is_admin
        assert [p.name for p in db.session.scalars(select(Partition))] == ["Default"]


def test_init_again_changes_nothing(app, runner, monkeypatch):
    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "chosen-pass")
    _init_config(app)
    assert runner.invoke(args=["init"]).exit_code == 0
    key = open(os.path.join(app.instance_path, "secret.key")).read()
    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "another-pass")
    result = runner.invoke(args=["init"])
    assert result.exit_code == 0 and "password" not in result.output
    assert open(os.path.join(app.instance_path, "secret.key")).read() == key
    with app.app_context():
        from webapp.core.directory.users import authenticate

        assert authenticate("admin", "chosen-pass") is not None
        assert db.session.query(Partition).count() == 1 and db.session.query(User).count() == 1


def test_init_with_a_configured_key_makes_no_key_file(app, runner, monkeypatch):
    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "chosen-pass")
    assert runner.invoke(args=["init"]).exit_code == 0
    assert not os.path.exists(os.path.join(app.instance_path, "secret.key"))


def test_create_partition_and_a_user_in_a_department(app, runner, monkeypatch):
    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "chosen-pass")
    runner.invoke(args=["init"])
    assert runner.invoke(args=["create-partition", "Globex"]).exit_code == 0
    duplicate = runner.invoke(args=["create-partition", "Globex"])
    assert duplicate.exit_code == 1 and "exists already" in duplicate.output
    result = runner.invoke(args=["create-user", "gina", "--role", "agent", "--partition", "Globex",
                                 "--department", "Globex", "--email", "gina@globex.test",
                                 "--password-stdin"], input="s3cret-pass\n")
    assert result.exit_code == 0, result.output
    with app.app_context():
        from webapp.core.directory.users import authenticate

        gina = authenticate("gina", "s3cret-pass")
        assert gina.partition.name == "Globex" and gina.email == "gina@globex.test"
        assert [d.name for d in gina.departments] == ["Globex"]


def test_create_user_names_what_is_wrong(app, runner, monkeypatch):
    monkeypatch.setenv("MAILSENDER_ADMIN_PASSWORD", "chosen-pass")
    runner.invoke(args=["init"])
    no_partition = runner.invoke(args=["create-user", "x", "--role", "agent", "--partition", "Nope",
                                       "--password-stdin"], input="pw\n")
    assert no_partition.exit_code == 1 and "No partition named 'Nope'" in no_partition.output
    no_department = runner.invoke(args=["create-user", "x", "--role", "agent", "--department", "Nope",
                                        "--password-stdin"], input="pw\n")
    assert no_department.exit_code == 1 and "No department named 'Nope'" in no_department.output
    taken = runner.invoke(args=["create-user", "admin", "--role", "agent", "--password-stdin"], input="pw\n")
    assert taken.exit_code == 1 and "taken" in taken.output
    with app.app_context():
        assert db.session.query(User).count() == 1
        assert db.session.scalars(select(Department)).one().name == "Default"
