"""The schema and the database set-up, on SQLite and on the real PostgreSQL."""
from datetime import datetime, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from webapp.core.database import db
from webapp.core.directory.departments import create_partition
from webapp.core.directory.lookups import root_department, user_mailboxes
from webapp.core.directory.users import create_user
from webapp.core.models import Department, Mailbox, MailSenderSettings, MonitorState, OutgoingMessage, User
from webapp.core.security import decrypt_secret, encrypt_secret
from webapp.core.states import QUEUED

pytestmark = pytest.mark.databases


def test_a_partition_comes_with_its_root_settings_and_monitor_state(app):
    with app.app_context():
        partition = create_partition("Tenant")
        db.session.commit()
        root = root_department(partition.id)
        assert root.is_root and root.name == "Tenant"
        assert db.session.scalars(
            select(MailSenderSettings).where(MailSenderSettings.partition_id == partition.id)).one()
        assert db.session.scalars(select(MonitorState).where(MonitorState.partition_id == partition.id)).one()
        assert partition.senders_wanted == "stopped"


def test_settings_defaults_are_the_designs(app):
    with app.app_context():
        partition = create_partition("Tenant")
        db.session.commit()
        s = db.session.scalars(select(MailSenderSettings).where(MailSenderSettings.partition_id == partition.id)).one()
        assert (s.version, s.training_enabled, s.tracking_id_enabled, s.batch_size, s.sleep_minutes) == (1, False, True, 100, 1)
        assert (s.allow_change_reply_from, s.origination_from_mailbox_id, s.allow_change_origination_from) == (False, None, False)
        assert (s.envelope_sender_mailbox, s.log_email_address, s.column_width) == (True, "", None)
        assert (s.smtp_host, s.smtp_port, s.smtp_timeout_seconds) == ("localhost", 25, 60)
        assert (s.smtp_starttls, s.smtp_auth, s.smtp_ssl, s.oauth2_enabled) == (False, False, False, False)
        assert (s.default_charset, s.priority_enabled) == ("UTF-8", False)
        assert (s.monitor_enabled, s.monitor_sleep_minutes, s.monitor_pending_threshold) == (True, 5, 1000)


def test_a_user_starts_in_the_root_department(app, seed):
    with app.app_context():
        user = db.session.get(User, seed["agent_id"])
        assert [d.name for d in user.departments] == ["Acme"]


def test_a_users_mailboxes_are_those_of_their_departments_only(app, seed):
    with app.app_context():
        root = root_department(seed["partition_id"])
        sales = Department(partition_id=seed["partition_id"], name="Sales", parent_id=root.id)
        db.session.add(sales)
        db.session.flush()
        db.session.add_all([
            Mailbox(partition_id=seed["partition_id"], address="info@acme.test", department_id=root.id),
            Mailbox(partition_id=seed["partition_id"], address="sales@acme.test", department_id=sales.id),
        ])
        agent = db.session.get(User, seed["agent_id"])
        admin = db.session.get(User, seed["admin_id"])
        agent.departments = [sales]
        db.session.commit()
        assert [m.address for m in user_mailboxes(agent)] == ["sales@acme.test"]
        # No exception for administrators, and no inheritance down the tree.
        assert [m.address for m in user_mailboxes(admin)] == ["info@acme.test"]


def test_a_mailbox_address_is_unique_in_its_partition_only(app, seed):
    with app.app_context():
        other = create_partition("Other")
        db.session.flush()
        for partition_id in (seed["partition_id"], other.id):
            db.session.add(Mailbox(partition_id=partition_id, address="help@shared.test",
                                   department_id=root_department(partition_id).id))
        db.session.commit()
        db.session.add(Mailbox(partition_id=other.id, address="help@shared.test",
                               department_id=root_department(other.id).id))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


def test_timestamps_come_back_in_utc(app, seed):
    with app.app_context():
        user = db.session.get(User, seed["agent_id"])
        assert user.created_at.tzinfo is not None
        moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        message = OutgoingMessage(partition_id=seed["partition_id"], kind="origination",
                                  message_id="<1@acme.test>", status=QUEUED, queued_at=moment)
        db.session.add(message)
        db.session.commit()
        db.session.expire_all()
        assert db.session.get(OutgoingMessage, message.id).queued_at == moment


def test_secrets_are_encrypted_at_rest(app):
    with app.app_context():
        stored = encrypt_secret("hunter2")
        assert "hunter2" not in stored
        assert decrypt_secret(stored) == "hunter2"
        assert decrypt_secret(None) is None


def test_foreign_keys_are_enforced(app, seed):
    with app.app_context():
        from webapp.core.models import Partition

        if db.engine.dialect.name == "sqlite":
            assert db.session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        # The foreign keys hold: a user cannot point at a missing partition.
        db.session.add(User(partition_id=9999, username="ghost", password_hash="x"))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
        assert db.session.get(Partition, seed["partition_id"]) is not None


def test_usernames_are_unique(app, seed):
    from webapp.core.directory.checks import DirectoryError

    with app.app_context():
        partition = create_partition("Other")
        with pytest.raises(DirectoryError) as refused:
            create_user(partition, "agent", "pw", "agent")
        assert refused.value.field == "username" and refused.value.status == 409
