"""No header smuggled through a file name or a content type: every header and MIME parameter we
write passes one check, file names go out as given (RFC 2231), and the read-back covers every part."""
import base64

import pytest

from tests.agents.conftest import queued_count, settings_of  # noqa: F401  (fixtures)
from tests.compose.conftest import parse
from webapp.core.addresses import AddressError, check_header_value

PDF = base64.b64encode(b"%PDF-1.4 test").decode("ascii")
# Forms Python 3.11.7's email package still decodes into a line break, and one no reader should.
SMUGGLING = [
    "=??q?invoice.pdf=0AX-Injected:_yes?=",          # an empty charset
    "=?utf-8?q?in voice.pdf=0AX-Injected:_yes?=",    # a space inside the encoded text
    "=?utf-8?q?invoice.pdf=0AX-Injected:_yes",       # no closing ?=
    "=?utf-8?b?aW52b2ljZQpYLUluamVjdGVkOiB5ZXM=?=",  # base64
    "=? ?q?invoice=0D=0AX-Injected:_yes?=",
]


@pytest.mark.parametrize("value", SMUGGLING)
def test_the_one_header_check_refuses_every_encoded_word_that_decodes_to_a_line_break(value):
    with pytest.raises(AddressError, match="line feed|carriage return"):
        check_header_value(value, "The file name")


@pytest.mark.parametrize("filename", SMUGGLING)
def test_a_smuggling_file_name_is_refused_over_the_api_and_nothing_is_queued(client, agent_api, world, settings_of,
                                                                           queued_count, filename):
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = client.post("/api/v1/messages", headers=agent_api, json={
        "kind": "origination", "to": ["customer@example.org"], "subject": "Invoice", "body_text": "Attached.",
        "attachments": [{"filename": filename, "content_type": "application/pdf", "content_base64": PDF}]})
    assert response.status_code == 422 and "attachments" in response.json["fields"]
    assert queued_count() == 0


@pytest.mark.parametrize("filename", ["report =?2026?.pdf", 'a "quoted" name.txt', "Prüfbericht März.pdf",
                                      "a" * 120 + ".pdf", "=?utf-8?q?not_a_real_word.pdf"[:-1] + "x"])
def test_a_file_name_arrives_exactly_as_the_user_gave_it(wire, filename):
    received = wire.one(wire.send(attachments=[{"filename": filename, "content_type": "application/pdf",
                                                "content_base64": PDF}]))
    mime = parse(received.data)
    (attachment,) = mime.iter_attachments()
    assert attachment.get_filename() == filename
    assert attachment.get_content() == b"%PDF-1.4 test"
    # Nothing but the MIME fields in the part, and no line of its headers that we did not write.
    assert set(name.lower() for name in attachment.keys()) <= {"content-type", "content-transfer-encoding",
                                                               "content-disposition", "mime-version"}


def test_a_content_type_with_a_parameter_or_a_line_break_is_refused(client, agent_api, world, settings_of,
                                                                   queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"])
    for content_type in ("application/pdf; name=x", "application/pdf\r\nX-Injected: yes", "text/=?utf-8?q?x=0A?="):
        response = client.post("/api/v1/messages", headers=agent_api, json={
            "kind": "origination", "to": ["customer@example.org"], "subject": "x", "body_text": "x",
            "attachments": [{"filename": "a.pdf", "content_type": content_type, "content_base64": PDF}]})
        assert response.status_code == 422 and "attachments" in response.json["fields"], content_type
    assert queued_count() == 0


def test_a_smuggling_file_name_is_refused_in_the_compose_upload_too(client, world, settings_of, queued_count):
    import io

    from tests.conftest import AGENT_PASSWORD, csrf_from, login

    settings_of(origination_from_mailbox_id=world["support_id"])
    assert login(client, "agent", AGENT_PASSWORD).status_code == 302
    data = {"kind": "origination", "to": "customer@example.org", "subject": "Invoice", "body_text": "Attached.",
            "csrf_token": csrf_from(client.get("/compose").text),
            "attachments": (io.BytesIO(b"%PDF-1.4"), SMUGGLING[0], "application/pdf")}
    response = client.post("/compose", data=data, headers={"HX-Request": "true"}, content_type="multipart/form-data")
    assert response.status_code == 422 and "line feed" in response.text
    assert queued_count() == 0


def test_the_read_back_refuses_a_line_break_in_any_parts_headers(client, agent_api, world, settings_of, queued_count,
                                                                monkeypatch):
    # Whatever route a line break took into a part, the bytes are read back before they are queued.
    from webapp.core import compose

    monkeypatch.setattr(compose, "disposition_value", lambda name: 'attachment; filename="a.pdf"\r\nX-Injected: yes')
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = client.post("/api/v1/messages", headers=agent_api, json={
        "kind": "origination", "to": ["customer@example.org"], "subject": "x", "body_text": "x",
        "attachments": [{"filename": "a.pdf", "content_type": "application/pdf", "content_base64": PDF}]})
    assert response.status_code == 422 and "X-Injected" in response.json["error"]
    assert queued_count() == 0


def test_a_codec_saved_before_save_checked_charsets_still_composes_in_utf8(wire):
    # A row from before the allowlist: with idna, every non-ASCII subject used to fail.
    wire.settings(default_charset="idna")
    received = wire.one(wire.send(subject="Grüße aus München", body_text="Schöne Grüße\n"))
    mime = parse(received.data)
    assert mime["Subject"].startswith("Grüße aus München") and "utf-8" in received.data.decode("ascii", "replace").lower()
