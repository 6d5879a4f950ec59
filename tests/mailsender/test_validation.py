"""The one validation function of the Mail Sender parameters: each rule alone, then all at once."""
import json

import pytest

from tests.conftest import add_other_partition
from webapp.core.database import db
from webapp.core.security import encrypt_secret
from webapp.core.settings import store as settings_store
from webapp.core.settings import validate as settings_validate

SERVICE_KEY = json.dumps({"type": "service_account", "client_email": "robot@project.iam.test",
                          "private_key": "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"})


def validate(app, partition_id, submitted):
    with app.app_context():
        return settings_validate.validate_settings(settings_store.get_settings(partition_id), submitted)


def test_the_defaults_are_valid_and_change_nothing(app, seed):
    result = validate(app, seed["partition_id"], {})
    assert result.errors == {} and result.changed == []


# Each case breaks exactly one rule, starting from the defaults, and names the one field at fault.
ONE_RULE_BROKEN = [
    ("server required", {"smtp_host": ""}, "smtp_host"),
    ("server syntax", {"smtp_host": "mail server.test"}, "smtp_host"),
    ("port required", {"smtp_port": ""}, "smtp_port"),
    ("port not a number", {"smtp_port": "twenty-five"}, "smtp_port"),
    ("port low", {"smtp_port": 0}, "smtp_port"),
    ("port high", {"smtp_port": 65536}, "smtp_port"),
    ("batch low", {"batch_size": 0}, "batch_size"),
    ("batch high", {"batch_size": 10001}, "batch_size"),
    ("sleep low", {"sleep_minutes": -1}, "sleep_minutes"),
    ("sleep high", {"sleep_minutes": 1441}, "sleep_minutes"),
    ("timeout low", {"smtp_timeout_seconds": 0}, "smtp_timeout_seconds"),
    ("timeout high", {"smtp_timeout_seconds": 601}, "smtp_timeout_seconds"),
    ("width low", {"column_width": 0}, "column_width"),
    ("width high", {"column_width": 1001}, "column_width"),
    ("monitor sleep low", {"monitor_sleep_minutes": 0}, "monitor_sleep_minutes"),
    ("monitor sleep high", {"monitor_sleep_minutes": 1441}, "monitor_sleep_minutes"),
    ("threshold negative", {"monitor_pending_threshold": -1}, "monitor_pending_threshold"),
    ("a boolean is true or false", {"training_enabled": "yes"}, "training_enabled"),
    ("auth needs a user", {"smtp_auth": True, "smtp_password": "pw"}, "smtp_username"),
    ("auth needs a password", {"smtp_auth": True, "smtp_username": "relay"}, "smtp_password"),
    ("credentials not in plain text",
     {"smtp_host": "mail.acme.test", "smtp_auth": True, "smtp_username": "relay", "smtp_password": "pw"},
     "smtp_starttls"),
    ("SSL and STARTTLS exclude each other", {"smtp_ssl": True, "smtp_starttls": True}, "smtp_ssl"),
    ("log address syntax", {"log_email_address": "not an address"}, "log_email_address"),
    ("log address with a display name", {"log_email_address": "Log <log@acme.test>"}, "log_email_address"),
    ("log address with a line break", {"log_email_address": "log@acme.test\r\nBcc: x@evil.test"},
     "log_email_address"),
    ("company domain syntax", {"company_domains": ["acme.test", "bad_domain!"]}, "company_domains"),
    ("company domains as text", {"company_domains": "acme.test, -bad.test"}, "company_domains"),
    ("charset unknown", {"default_charset": "no-such-charset"}, "default_charset"),
    ("charset not a text codec", {"default_charset": "rot13"}, "default_charset"),
    ("charset required", {"default_charset": ""}, "default_charset"),
    ("SMTP user without line breaks", {"smtp_username": "relay\nx"}, "smtp_username"),
    ("a trailing line break is refused, not trimmed", {"smtp_username": "relay\r\n"}, "smtp_username"),
    ("threshold fits the column", {"monitor_pending_threshold": 2**31}, "monitor_pending_threshold"),
    ("a password without NUL", {"smtp_password": "a\x00b"}, "smtp_password"),
    ("provider from the list", {"oauth2_provider": "yahoo"}, "oauth2_provider"),
    ("token URL is http(s)", {"oauth2_token_url": "ftp://login.test/token"}, "oauth2_token_url"),
    ("authorization URL is http(s)", {"oauth2_authorization_url": "javascript:alert(1)"},
     "oauth2_authorization_url"),
    ("service account key is JSON", {"oauth2_service_account_key": "not json"}, "oauth2_service_account_key"),
    ("service account key has a private key",
     {"oauth2_service_account_key": json.dumps({"type": "service_account", "client_email": "r@p.test"})},
     "oauth2_service_account_key"),
    ("clear names secrets only", {"clear_secrets": ["smtp_host"]}, "clear_secrets"),
    ("unknown field", {"batch_sise": 5}, "batch_sise"),
]


@pytest.mark.parametrize("submitted,field", [case[1:] for case in ONE_RULE_BROKEN],
                         ids=[case[0] for case in ONE_RULE_BROKEN])
def test_one_broken_rule_names_its_field_alone(app, seed, submitted, field):
    result = validate(app, seed["partition_id"], submitted)
    assert list(result.errors) == [field]


OAUTH2_BASE = {"oauth2_enabled": True, "oauth2_provider": "google", "smtp_username": "relay@acme.test",
               "oauth2_client_id": "client-1", "oauth2_token_url": "https://oauth2.example.test/token",
               "smtp_starttls": True}


# Client ID is not among them: a service account identifies itself by its key (tests/smtp_check/test_words.py).
@pytest.mark.parametrize("missing", ["oauth2_provider", "smtp_username", "oauth2_token_url"])
def test_oauth2_requires_each_common_field(app, seed, missing):
    submitted = {**OAUTH2_BASE, "oauth2_grant": "service_account", "oauth2_service_account_key": SERVICE_KEY,
                 missing: ""}
    assert list(validate(app, seed["partition_id"], submitted).errors) == [missing]


@pytest.mark.parametrize("grant,needed", [
    ("", "oauth2_grant"),
    ("client_credentials", "oauth2_client_secret"),
    ("authorization_code", "oauth2_authorization_url"),
    ("service_account", "oauth2_service_account_key"),
])
def test_each_oauth2_grant_requires_what_it_needs(app, seed, grant, needed):
    result = validate(app, seed["partition_id"], {**OAUTH2_BASE, "oauth2_grant": grant})
    assert list(result.errors) == [needed]


def test_each_oauth2_grant_with_what_it_needs_is_valid(app, seed):
    for grant, extra in (("client_credentials", {"oauth2_client_secret": "s3cret"}),
                         ("authorization_code", {"oauth2_authorization_url": "https://login.example.test/auth"}),
                         ("service_account", {"oauth2_service_account_key": SERVICE_KEY})):
        result = validate(app, seed["partition_id"], {**OAUTH2_BASE, "oauth2_grant": grant, **extra})
        assert result.errors == {}, grant


def test_all_missing_fields_are_reported_together(app, seed):
    result = validate(app, seed["partition_id"], {
        "smtp_host": "", "smtp_port": "", "default_charset": "", "batch_size": "",
        "smtp_auth": True, "oauth2_enabled": True, "oauth2_grant": "service_account",
    })
    assert set(result.errors) == {
        "smtp_host", "smtp_port", "default_charset", "batch_size", "smtp_username", "smtp_password",
        "oauth2_provider", "oauth2_token_url", "oauth2_service_account_key",
    }


def test_a_stored_password_counts_for_auth(app, seed):
    with app.app_context():
        settings_store.get_settings(seed["partition_id"]).smtp_password_enc = encrypt_secret("stored")
        db.session.commit()
    result = validate(app, seed["partition_id"], {"smtp_auth": True, "smtp_username": "relay", "smtp_password": ""})
    assert result.errors == {}
    assert "smtp_password" not in result.changed


def test_clearing_the_stored_password_under_auth_is_refused(app, seed):
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        row.smtp_password_enc = encrypt_secret("stored")
        row.smtp_auth, row.smtp_username = True, "relay"
        db.session.commit()
    result = validate(app, seed["partition_id"], {"clear_secrets": ["smtp_password"]})
    assert list(result.errors) == ["smtp_password"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.53", "::1", "[::1]"])
def test_credentials_may_go_in_plain_text_to_a_loopback_server(app, seed, host):
    result = validate(app, seed["partition_id"],
                      {"smtp_host": host, "smtp_auth": True, "smtp_username": "relay", "smtp_password": "pw"})
    assert result.errors == {}


@pytest.mark.parametrize("tls", [{"smtp_starttls": True}, {"smtp_ssl": True}])
def test_credentials_over_tls_may_go_to_any_server(app, seed, tls):
    result = validate(app, seed["partition_id"], {"smtp_host": "mail.acme.test", "smtp_auth": True,
                                                  "smtp_username": "relay", "smtp_password": "pw", **tls})
    assert result.errors == {}


def test_oauth2_without_tls_to_a_remote_server_is_refused(app, seed):
    result = validate(app, seed["partition_id"], {
        **OAUTH2_BASE, "smtp_starttls": False, "smtp_host": "smtp.gmail.test",
        "oauth2_grant": "service_account", "oauth2_service_account_key": SERVICE_KEY})
    assert list(result.errors) == ["smtp_starttls"]


def test_ssl_is_refused_where_the_instance_does_not_allow_it(app, seed):
    app.config["MAILSENDER_SSL_ALLOWED"] = False
    assert list(validate(app, seed["partition_id"], {"smtp_ssl": True}).errors) == ["smtp_ssl"]
    app.config["MAILSENDER_SSL_ALLOWED"] = True
    assert validate(app, seed["partition_id"], {"smtp_ssl": True}).errors == {}


def test_the_origination_default_must_be_a_mailbox_of_the_partition(app, seed, mailboxes):
    with app.app_context():
        _, foreign = add_other_partition("Other", "info@other.test")
        db.session.commit()
        foreign_id = foreign.id
    assert list(validate(app, seed["partition_id"], {"origination_from_mailbox_id": foreign_id}).errors) == [
        "origination_from_mailbox_id"]
    assert validate(app, seed["partition_id"], {"origination_from_mailbox_id": mailboxes["sales"]}).errors == {}


def test_values_are_read_as_the_form_sends_them(app, seed):
    result = validate(app, seed["partition_id"], {
        "batch_size": " 250 ", "column_width": "", "company_domains": "Acme.test, acme.test  example.test.",
        "default_charset": "iso-8859-1"})
    assert result.errors == {}
    assert result.values["batch_size"] == 250
    assert result.values["column_width"] is None
    assert result.values["company_domains"] == ["acme.test", "example.test"]
    assert set(result.changed) == {"batch_size", "company_domains", "default_charset"}


def test_blank_company_domains_mean_the_mailboxes_domains(app, seed, mailboxes):
    assert validate(app, seed["partition_id"], {"company_domains": []}).values["company_domains"] is None
    with app.app_context():
        row = settings_store.get_settings(seed["partition_id"])
        assert settings_store.company_domains(row) == ["acme-sales.test", "acme.test"]


def test_warnings_do_not_block(app, seed, mailboxes):
    result = validate(app, seed["partition_id"], {"log_email_address": "Support@acme.test", "training_enabled": True})
    assert result.errors == {}
    assert [w["field"] for w in result.warnings] == ["log_email_address", "training_enabled"]


def test_an_address_outside_our_mailboxes_gives_no_warning(app, seed, mailboxes):
    result = validate(app, seed["partition_id"], {"log_email_address": "archive@acme.test"})
    assert result.errors == {} and result.warnings == []


def test_an_old_version_is_a_conflict_before_anything_else(app, seed):
    result = validate(app, seed["partition_id"], {"version": 0, "batch_size": -5})
    assert result.conflict is not None and result.errors == {}


@pytest.mark.parametrize("name", ["idna", "punycode", "unicode_escape", "palmos", "hz", "utf-16", "rot13", "cp037"])
def test_a_codec_that_is_no_mime_charset_for_mail_is_refused(app, seed, name):
    assert list(validate(app, seed["partition_id"], {"default_charset": name}).errors) == ["default_charset"]


@pytest.mark.parametrize("typed, stored", [("utf-8", "UTF-8"), ("iso-8859-15", "ISO-8859-15"),
                                           ("WINDOWS-1252", "windows-1252"), ("shift_jis", "Shift_JIS")])
def test_a_mime_charset_is_taken_in_its_iana_spelling(app, seed, typed, stored):
    result = validate(app, seed["partition_id"], {"default_charset": typed})
    assert result.errors == {} and result.values["default_charset"] == stored
