"""The agents' pages: /compose, /preferences and /outbox, over a logged-in browser session."""
import io
import re

import pytest

from tests.conftest import AGENT_PASSWORD, csrf_from, login
from webapp.core.database import db
from webapp.core.models import OutgoingMessage
from webapp.core.states import SENT

HX = {"HX-Request": "true"}


@pytest.fixture
def agent(client, world):
    assert login(client, "agent", AGENT_PASSWORD).status_code == 302
    return client


def form_token(client, path="/compose"):
    return csrf_from(client.get(path).text)


def compose(client, **fields):
    data = {"kind": "origination", "to": "customer@example.org", "subject": "Hello", "body_text": "Text",
            "csrf_token": form_token(client)}
    data.update(fields)
    return client.post("/compose", data=data, headers=HX, content_type="multipart/form-data")


def from_options(html):
    select = re.search(r'<select name="from_mailbox_id"[^>]*>(.*?)</select>', html, re.S)
    return select.group(1) if select else None


# --- compose ------------------------------------------------------------------------------


def test_compose_offers_only_the_users_own_mailboxes_where_changing_is_allowed(agent, settings_of, world):
    settings_of(allow_change_origination_from=True, origination_from_mailbox_id=world["sales_id"])
    options = from_options(agent.get("/compose").text)
    assert "support@acme.test" in options and "help@acme.test" in options
    assert "sales@acme.test" not in options.replace("Default: the system default, sales@acme.test", "")
    assert "info@beta.test" not in options


def test_compose_shows_no_from_selector_where_changing_is_not_allowed(agent, settings_of, world):
    settings_of(origination_from_mailbox_id=world["sales_id"], allow_change_reply_from=True)
    page = agent.get("/compose").text
    assert from_options(page) is None and "changing it is not allowed" in page
    # Replies may change here: the form for a reply shows the selector.
    reply_form = agent.post("/compose/form", data={"kind": "reply", "csrf_token": csrf_from(page)}, headers=HX).text
    assert from_options(reply_form) is not None and 'name="incoming_id"' in reply_form


def test_compose_queues_and_shows_the_tracking_id(agent, settings_of, world, queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = compose(agent, keep_case_ownership="on")
    assert response.status_code == 200, response.text
    assert re.search(r'class="tracking-id">ACME-\d{6}<', response.text)
    assert queued_count() == 1


def test_compose_refuses_another_departments_mailbox_and_queues_nothing(agent, settings_of, world, queued_count):
    settings_of(allow_change_origination_from=True, origination_from_mailbox_id=world["support_id"])
    response = compose(agent, from_mailbox_id=str(world["sales_id"]))
    assert response.status_code == 403
    assert "not one of your mailboxes" in response.text and 'id="compose-errors"' in response.text
    assert queued_count() == 0


def test_compose_names_every_bad_field_by_its_label_and_keeps_what_was_typed(agent, settings_of, world, queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = compose(agent, to="a@b.c)<x@y.z>", subject="=?UTF-8?Q?=0A?=", body_text="kept text")
    assert response.status_code == 422
    errors = response.text.split('id="compose-errors"')[1].split("</div>")[0]
    assert "<strong>To</strong>" in errors and "<strong>Subject</strong>" in errors
    assert 'value="a@b.c)&lt;x@y.z&gt;"' in response.text and "kept text" in response.text
    assert queued_count() == 0


def test_compose_with_no_recipients_or_no_incoming_message_is_refused(agent, settings_of, world, queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = compose(agent, to="")
    assert response.status_code == 422 and "<strong>To</strong>" in response.text
    response = compose(agent, kind="reply", incoming_id="")
    assert response.status_code == 422 and "<strong>Incoming message</strong>" in response.text
    response = compose(agent, kind="reply", incoming_id="98765")
    assert response.status_code == 422 and "<strong>Incoming message</strong>" in response.text
    assert queued_count() == 0


def test_compose_attachment_over_the_limit_is_413_with_a_message(app, agent, settings_of, world, queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"])
    app.config["MAILSENDER_MAX_ATTACHMENT_BYTES"] = 100
    response = compose(agent, attachments=(io.BytesIO(b"x" * 101), "big.bin"))
    assert response.status_code == 413
    assert "too large" in response.text and "<strong>Attachments</strong>" in response.text
    assert queued_count() == 0
    response = compose(agent, attachments=(io.BytesIO(b"x" * 100), "fits.bin"))
    assert response.status_code == 200 and queued_count() == 1


def test_compose_reply_to_an_incoming_message(agent, incoming, world, queued_count, incoming_row):
    case = incoming()
    page = agent.get(f"/compose?kind=reply&incoming={case['id']}").text
    assert f'<option value="{case["id"]}" selected' in page
    response = compose(agent, kind="reply", incoming_id=str(case["id"]))
    assert response.status_code == 200, response.text
    assert case["tracking_id"] in response.text
    assert incoming_row(case["id"]).answered_at is not None


def test_compose_lists_only_the_incoming_mail_of_the_agents_departments(agent, incoming, world, queued_count):
    mine, foreign = incoming(subject="Ours"), incoming(mailbox_id=world["sales_id"], subject="Theirs")
    page = agent.get("/compose?kind=reply").text
    assert f'<option value="{mine["id"]}"' in page and f'<option value="{foreign["id"]}"' not in page
    # The id typed in by hand is refused in the form, and nothing is queued.
    response = compose(agent, kind="reply", incoming_id=str(foreign["id"]))
    assert response.status_code == 403 and "a mailbox of a department you are not in" in response.text
    assert queued_count() == 0


# --- preferences --------------------------------------------------------------------------


def test_preferences_page_lists_only_the_users_mailboxes_and_says_why_nothing_is_offered(agent, world):
    page = agent.get("/preferences").text
    assert "support@acme.test" in page and "help@acme.test" in page
    assert "sales@acme.test" not in page and "info@beta.test" not in page
    assert 'id="reply_from_mailbox_id-not-offered"' in page and "has not allowed" in page
    assert '<select name="reply_from_mailbox_id"' not in page


def test_preferences_page_refuses_another_departments_mailbox_and_writes_nothing(agent, settings_of, world, user_row):
    settings_of(allow_change_reply_from=True)
    token = form_token(agent, "/preferences")
    response = agent.post("/preferences", data={"reply_from_mailbox_id": str(world["sales_id"]), "csrf_token": token}, headers=HX)
    assert response.status_code == 403
    assert "not one of your mailboxes" in response.text and "From for replies" in response.text
    assert user_row(world["agent_id"]).reply_from_mailbox_id is None


def test_preferences_page_refuses_a_change_that_is_not_allowed(agent, world, user_row):
    token = form_token(agent, "/preferences")
    response = agent.post("/preferences", data={"origination_from_mailbox_id": str(world["support_id"]), "csrf_token": token},
                          headers=HX)
    assert response.status_code == 403
    assert user_row(world["agent_id"]).origination_from_mailbox_id is None


def test_preferences_page_saves_an_allowed_choice(agent, settings_of, world, user_row):
    settings_of(allow_change_origination_from=True)
    token = form_token(agent, "/preferences")
    response = agent.post("/preferences", data={"origination_from_mailbox_id": str(world["help_id"]), "csrf_token": token},
                          headers=HX)
    assert response.status_code == 200 and "saved" in response.text
    assert user_row(world["agent_id"]).origination_from_mailbox_id == world["help_id"]


# --- outbox -------------------------------------------------------------------------------


@pytest.fixture
def two_senders(app, world, settings_of):
    """One origination by the agent and one by the sales agent, both queued."""
    from tests.agents.conftest import OTHER_AGENT_PASSWORD
    from tests.conftest import api_token

    settings_of(origination_from_mailbox_id=world["support_id"])
    client = app.test_client()  # bearer calls, apart from the logged-in browser session
    ids = {}
    for name, password in (("agent", AGENT_PASSWORD), ("salesagent", OTHER_AGENT_PASSWORD)):
        headers = api_token(client, name, password)
        response = client.post("/api/v1/messages", json={"kind": "origination", "to": ["c@example.org"],
                                                         "subject": f"from {name}"}, headers=headers)
        ids[name] = response.json["id"]
    return ids


def test_outbox_shows_the_users_own_messages_and_polls_while_one_is_pending(agent, two_senders):
    page = agent.get("/outbox").text
    assert "from agent" in page and "from salesagent" not in page
    assert 'data-polling="on"' in page and 'hx-trigger="every' in page


def test_outbox_stops_polling_when_nothing_shown_is_pending_and_shows_the_raw_copy(app, agent, two_senders):
    with app.app_context():
        message = db.session.get(OutgoingMessage, two_senders["agent"])
        message.status = SENT
        message.rendered = b"From: support@acme.test\r\n\r\nsent bytes"
        db.session.commit()
    section = agent.get("/outbox/list", headers=HX).text
    assert section.startswith('<section class="section" id="outbox-list"')
    assert 'data-polling="off"' in section and "every" not in section
    assert f"/outbox/{two_senders['agent']}/raw" in section
    assert agent.get(f"/outbox/{two_senders['agent']}/raw").data.endswith(b"sent bytes")
    assert agent.get(f"/outbox/{two_senders['salesagent']}/raw").status_code == 404


def test_outbox_filters_by_state(app, agent, two_senders):
    assert "from agent" in agent.get("/outbox/list?status=queued").text
    assert "from agent" not in agent.get("/outbox/list?status=sent").text


def test_outbox_of_an_administrator_shows_the_whole_partition(admin_client, two_senders):
    page = admin_client.get("/outbox").text
    assert "from agent" in page and "from salesagent" in page


def test_outbox_pages(app, agent, world, settings_of):
    from tests.conftest import api_token

    settings_of(origination_from_mailbox_id=world["support_id"])
    app.config["PAGE_SIZE"] = 2
    api = app.test_client()
    headers = api_token(api, "agent", AGENT_PASSWORD)
    for number in range(3):
        api.post("/api/v1/messages", json={"kind": "origination", "to": ["c@example.org"], "subject": f"number {number}"},
                   headers=headers)
    first = agent.get("/outbox").text
    assert "number 2" in first and "number 1" in first and "number 0" not in first
    older = re.search(r'href="(/outbox\?[^"]*before=\d+)"', first).group(1).replace("&amp;", "&")
    assert "number 0" in agent.get(older).text
