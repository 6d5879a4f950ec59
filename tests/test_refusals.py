"""One Refusal, answered in one place: JSON under /api/, a page or a section elsewhere; never a 500."""
import pytest

from scheduler.message_actions import ActionRefused
from scheduler.smtp_check import CheckRefused
from webapp.api import ApiError
from webapp.core.directory.checks import DirectoryError
from webapp.core.from_rules import FromRuleError
from webapp.core.outbox import MessageError
from webapp.core.refusal import Refusal


@pytest.fixture
def refusing(app):
    """Routes that raise a refusal no view turns into a form: one under /api/, one a page."""
    def refuse():
        raise CheckRefused(429, "At most 5 tests a minute; try again in 7 s.", retry_after=7)

    def refuse_fields():
        raise DirectoryError(422, "Check these fields: name, parent_id.",
                             {"name": "The name is required.", "parent_id": "No such department."})

    app.add_url_rule("/api/v1/test-refusal", "test_api_refusal", refuse)
    app.add_url_rule("/api/v1/test-refusal-fields", "test_api_refusal_fields", refuse_fields)
    app.add_url_rule("/test-refusal-fields", "test_page_refusal_fields", refuse_fields)
    return app.test_client()


@pytest.mark.parametrize("kind", [DirectoryError, MessageError, FromRuleError, CheckRefused, ActionRefused, ApiError])
def test_every_rules_refusal_is_a_refusal_with_status_message_and_fields(kind):
    refusal = kind(409, "Refused.") if kind is not FromRuleError else kind(409, "Refused.", "from_mailbox_id")
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.message) == (409, "Refused.")
    assert isinstance(refusal.fields, dict)


def test_under_the_api_a_refusal_is_json_with_its_status_and_retry_after(refusing):
    response = refusing.get("/api/v1/test-refusal")
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert response.json == {"error": "At most 5 tests a minute; try again in 7 s."}


def test_under_the_api_a_refusal_names_every_field(refusing):
    response = refusing.get("/api/v1/test-refusal-fields")
    assert response.status_code == 422
    assert response.json["fields"] == {"name": "The name is required.", "parent_id": "No such department."}


def test_elsewhere_a_refusal_is_a_page_or_a_section_that_says_why(refusing):
    page = refusing.get("/test-refusal-fields")
    assert page.status_code == 422 and "<html" in page.text
    assert "Check these fields: name, parent_id." in page.text and "No such department." in page.text
    section = refusing.get("/test-refusal-fields", headers={"HX-Request": "true"})
    assert section.status_code == 422 and "<html" not in section.text and 'id="error-message"' in section.text
