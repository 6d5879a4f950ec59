"""The agents' forms over plain requests: Compose says what is wrong with each field, warns of an
empty message and of a missing From before anything is typed; Preferences names every refused
field; the Outbox keeps its filter in the URL and says what training mode withholds."""
import pytest

from tests.agents.conftest import incoming, queued_count, settings_of, user_row, world  # noqa: F401  (fixtures)
from tests.conftest import AGENT_PASSWORD, csrf_from, login

HX = {"HX-Request": "true"}


@pytest.fixture
def agent(client, world):
    assert login(client, "agent", AGENT_PASSWORD).status_code == 302
    return client


def compose(client, **fields):
    data = {"kind": "origination", "to": "customer@example.org", "subject": "Hello", "body_text": "Text",
            "csrf_token": csrf_from(client.get("/compose").text)}
    data.update(fields)
    return client.post("/compose", data=data, headers=HX, content_type="multipart/form-data")


def test_the_refusal_says_what_is_wrong_with_each_field(client, agent_api, settings_of, world):
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = client.post("/api/v1/messages", headers=agent_api, json={
        "kind": "origination", "to": ["bob@"], "cc": ["not an address"], "subject": "Hi"})
    assert response.status_code == 422
    assert response.json["error"] == ("The message was not queued: To: 'bob@' has no domain after the @; "
                                      "Cc: 'not an address' is not an e-mail address (it has spaces).")
    response = client.post("/api/v1/messages", headers=agent_api, json={"kind": "origination", "subject": "Hi"})
    assert response.json["error"] == ("The message was not queued: To: Empty, as are Cc and Bcc: "
                                      "a message needs at least one recipient.")


def test_compose_shows_each_fields_error_by_the_field(agent, settings_of, world, queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = compose(agent, to="bob@")
    assert response.status_code == 422
    assert '<p class="field-error" id="compose-to-error">&#39;bob@&#39; has no domain after the @.</p>' in response.text
    assert 'aria-invalid="true" aria-describedby="compose-to-error"' in response.text
    assert 'href="#compose-to"' in response.text
    assert queued_count() == 0


def test_an_empty_subject_and_text_waits_for_send_anyway(agent, settings_of, world, queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = compose(agent, subject="", body_text="")
    assert response.status_code == 200
    assert 'id="compose-empty-warning"' in response.text and "Send anyway" in response.text
    assert 'value="customer@example.org"' in response.text
    assert queued_count() == 0
    response = compose(agent, subject="  ", body_text="", send_empty="yes")
    assert response.status_code == 200 and 'id="queued-message"' in response.text
    assert queued_count() == 1
    # A subject alone, or a text alone, is a message: no question asked.
    assert 'id="queued-message"' in compose(agent, subject="Only a subject", body_text="").text
    assert queued_count() == 2


def test_with_no_default_and_no_choice_compose_says_so_and_send_is_off(agent, settings_of, world):
    page = agent.get("/compose").text
    assert 'id="compose-no-from"' in page and "An administrator can set one" in page
    assert '<button type="submit" disabled' in page
    # Allowed to choose, among the agent's own mailboxes: Send stays on.
    settings_of(allow_change_origination_from=True)
    page = agent.get("/compose").text
    assert 'id="compose-no-from"' not in page and '<button type="submit" disabled' not in page
    # A system default: Send is on too.
    settings_of(allow_change_origination_from=False, origination_from_mailbox_id=world["support_id"])
    assert 'id="compose-no-from"' not in agent.get("/compose").text


def test_preferences_name_every_forged_field(agent, settings_of, world, user_row):
    settings_of(allow_change_reply_from=True, allow_change_origination_from=True)
    token = csrf_from(agent.get("/preferences").text)
    response = agent.post("/preferences", headers=HX, data={
        "reply_from_mailbox_id": str(world["sales_id"]), "origination_from_mailbox_id": "abc", "csrf_token": token})
    assert response.status_code == 422
    errors = response.text.split('id="preferences-errors"')[1].split("</div>")[0]
    assert "2 fields need attention" in errors
    assert "From for replies" in errors and "not one of your mailboxes" in errors
    assert "From for new messages" in errors and "must be a mailbox id" in errors
    assert user_row(world["agent_id"]).reply_from_mailbox_id is None


def test_the_preferences_api_names_every_refused_field_and_writes_none(client, agent_api, settings_of, world,
                                                                       user_row):
    settings_of(allow_change_reply_from=False, allow_change_origination_from=True)
    response = client.put("/api/v1/me/preferences", headers=agent_api, json={
        "reply_from_mailbox_id": world["support_id"], "origination_from_mailbox_id": world["sales_id"]})
    assert response.status_code == 403
    assert response.json["fields"] == {"reply_from_mailbox_id": "Changing the From of replies is not allowed.",
                                       "origination_from_mailbox_id": "That mailbox is not one of your mailboxes."}
    assert user_row(world["agent_id"]).origination_from_mailbox_id is None


def test_the_outbox_filter_is_a_get_of_the_page_pushed_into_the_url(agent):
    page = agent.get("/outbox?status=failed").text
    form = page.split('id="outbox-filter"')[1].split("</form>")[0]
    assert 'hx-get="/outbox"' in form and 'hx-push-url="true"' in form and 'hx-select="#outbox-list"' in form
    assert '<option value="failed" selected>' in form


def test_in_training_mode_the_outbox_says_whom_a_message_withheld(client, agent, agent_api, settings_of, world):
    settings_of(origination_from_mailbox_id=world["support_id"], training_enabled=True, company_domains=["acme.test"],
                log_email_address="archive@acme.test")
    message_id = client.post("/api/v1/messages", headers=agent_api, json={
        "kind": "origination", "to": ["customer@example.org"], "subject": "Practice"}).json["id"]
    page = agent.get("/outbox").text
    assert 'id="outbox-training-note"' in page
    assert "The log Bcc copy still goes out: its address is inside the company domains" in page
    note = page.split(f'id="training-{message_id}"')[1].split("</tr>")[0]
    assert "withheld from customer@example.org" in note and "was not withheld" in note
    assert "archive@acme.test" not in page
