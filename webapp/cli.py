"""The commands of API.md: init, create-partition, create-user, serve; and `demo` for `make run`."""
from __future__ import annotations

import os
import sys

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from .core.database import db
from .core.directory.checks import DirectoryError
from .core.directory.departments import create_partition
from .core.directory.lookups import find_partition
from .core.directory.users import create_user
from .core.models import Department, Partition, User
from .core.security import create_key_file, generate_password, load_secret_key
from .core.states import ROLE_ADMIN, ROLES

FIRST_PARTITION = "Default"
FIRST_ADMIN = "admin"


def register(app) -> None:
    for command in (init_command, create_partition_command, create_user_command, serve_command, demo_command):
        app.cli.add_command(command)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def admin_password_from_environment() -> str | None:
    """The first administrator's password when MAILSENDER_ADMIN_PASSWORD gives one (init, demo)."""
    return os.environ.get("MAILSENDER_ADMIN_PASSWORD") or None


def initialise(admin_password: str | None = None) -> str | None:
    """Brings this instance up to date; returns the admin's new password when it made one.

    Running it again changes nothing that exists.
    """
    # Here rather than at the top: Alembic costs every process that builds the app 8 MB, and
    # only init and the demo migrate.
    from .core.migrations import upgrade

    app = current_app
    if not app.config["MAILSENDER_SECRET_KEY"]:
        if create_key_file(app.instance_path):
            click.echo(f"Made the secret key file in {app.instance_path}.")
        app.config["MAILSENDER_SECRET_KEY"] = load_secret_key(app.instance_path, None)
    upgrade(db.engine)

    made_password = None
    partition = db.session.scalars(select(Partition).order_by(Partition.id)).first()
    if partition is None:
        partition = create_partition(FIRST_PARTITION)
    if db.session.scalars(select(User).where(User.username == FIRST_ADMIN)).first() is None:
        password = admin_password or admin_password_from_environment()
        if not password:
            password = made_password = generate_password()
        create_user(partition, FIRST_ADMIN, password, ROLE_ADMIN)
    db.session.commit()
    return made_password


@click.command("init")
@with_appcontext
def init_command():
    """Create or upgrade the schema, the first partition and the admin user."""
    made_password = initialise()
    if made_password:
        click.echo(f"Created user {FIRST_ADMIN!r} with password: {made_password}")
    click.echo("Initialised.")


@click.command("create-partition")
@with_appcontext
@click.argument("name")
def create_partition_command(name):
    """Add a partition with its root department."""
    try:
        create_partition(name)
    except DirectoryError as error:
        _fail(str(error))
    db.session.commit()
    click.echo(f"Created partition {name!r}.")


@click.command("create-user")
@with_appcontext
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--partition", "partition_name", default=None, help="Default: the first partition.")
@click.option("--department", "department_names", multiple=True, help="Repeatable; default: the root.")
@click.option("--email", default="")
@click.option("--password-stdin", is_flag=True, required=True, help="Read the password from standard input.")
def create_user_command(name, role, partition_name, department_names, email, password_stdin):
    """Add a user."""
    password = sys.stdin.readline().rstrip("\r\n")
    if partition_name:
        partition = find_partition(partition_name)
        if partition is None:
            _fail(f"No partition named {partition_name!r}.")
    else:
        partition = db.session.scalars(select(Partition).order_by(Partition.id)).first()
        if partition is None:
            _fail("No partition yet: run `flask --app webapp init` first.")
    departments = []
    for department_name in department_names:
        department = db.session.scalars(
            select(Department).where(Department.partition_id == partition.id, Department.name == department_name)
        ).first()
        if department is None:
            _fail(f"No department named {department_name!r} in partition {partition.name!r}.")
        departments.append(department)
    try:
        create_user(partition, name, password, role, email=email, departments=departments or None)
    except DirectoryError as error:
        _fail(str(error))
    db.session.commit()
    click.echo(f"Created {role} {name!r} in partition {partition.name!r}.")


def _serve(host: str, port: int) -> None:
    """Serves the app with waitress and runs this node (senders and their scheduler) beside it.

    SIGTERM and SIGINT stop both cleanly: the senders finish the message in flight, release
    the rest of their claims and give up the node's lease before the process exits.
    """
    import signal

    from waitress import create_server

    from scheduler.node import start_node, stop_node

    from .core.logs import configure_logging

    app = current_app._get_current_object()
    configure_logging(app.config)
    server = create_server(app, host=host, port=port, threads=8)

    def _shutdown(signum, _frame):
        raise SystemExit(128 + signum)  # waitress's loop ends on SystemExit

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _shutdown)
    click.echo(f"Serving on http://{host}:{port} as node {app.config['NODE_NAME']!r}")
    try:
        start_node(app)
        server.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean stop short
        stop_node()
        try:
            server.close()
        except OSError:
            pass  # already closed by waitress on the way out
        click.echo("Stopped.")


@click.command("serve")
@with_appcontext
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=5000, type=int)
def serve_command(host, port):
    """Serve the app (waitress) with this node's senders and monitor."""
    _serve(host, port)


@click.command("demo")
@with_appcontext
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=5000, type=int)
@click.option("--smtp-port", default=8025, type=int, help="The local capture SMTP server's port.")
def demo_command(host, port, smtp_port):
    """`make run`: seed demo data, start a capture SMTP server, and serve."""
    from .demo import seed_demo, start_capture_server

    capture_dir = os.path.join(current_app.instance_path, "captured")
    start_capture_server(capture_dir, smtp_port)
    current_app.config["DEMO_CAPTURE_DIR"] = capture_dir
    from .views import demo

    current_app.register_blueprint(demo.bp)
    for line in seed_demo(smtp_port):
        click.echo(line)
    click.echo(f"Captured mail: http://{host}:{port}/demo/captured")
    _serve(host, port)
