"""Each parameter has one typed default, in the table of fields; the schema's columns use it."""
from webapp.core.database import db
from webapp.core.models import MailSenderSettings
from webapp.core.settings.fields import DEFAULTS, FIELDS, SECRET_KINDS, saved_values
from webapp.core.settings.store import get_settings


def _column_default(name: str):
    table = MailSenderSettings.__table__
    column = table.c[name] if name in table.c else table.c[f"{name}_enc"]
    return column.default.arg if column.default is not None else None


def test_each_parameters_default_is_its_columns_default_value_and_type():
    for field in FIELDS:
        default = _column_default(field.name)
        assert (default, type(default)) == (field.default, type(field.default)), field.name


def test_a_new_partition_starts_with_every_default(app, seed):
    with app.app_context():
        saved = saved_values(get_settings(seed["partition_id"]))
        db.session.rollback()
    assert saved == {name: value for name, value in DEFAULTS.items()
                     if next(f for f in FIELDS if f.name == name).kind not in SECRET_KINDS}


def test_the_window_words_each_default_from_the_typed_value():
    shown = {field.name: field.shown_default for field in FIELDS}
    assert (shown["training_enabled"], shown["tracking_id_enabled"], shown["batch_size"]) == ("off", "on", "100")
    assert (shown["column_width"], shown["log_email_address"], shown["smtp_password"]) == ("blank",) * 3
    assert shown["company_domains"] == "the domains of the partition's mailboxes"
    assert shown["oauth2_provider"] == shown["origination_from_mailbox_id"] == "none"
