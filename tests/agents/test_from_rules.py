"""The From rules (DESIGN.md "Default From"), through POST /api/v1/messages and the preferences."""
import pytest

REPLY_TEXT = {"body_text": "Thank you, it is on its way."}


def send(client, headers, **fields):
    body = {"to": ["customer@example.org"], "subject": "Hello", "body_text": "Text"}
    body.update(fields)
    return client.post("/api/v1/messages", json=body, headers=headers)


# --- replies ------------------------------------------------------------------------------


def test_a_reply_goes_out_from_the_mailbox_the_customer_wrote_to(client, agent_api, incoming, world):
    case = incoming(mailbox_id=world["help_id"])
    response = send(client, agent_api, kind="reply", incoming_id=case["id"])
    assert response.status_code == 201, response.text
    assert response.json["from"] == "help@acme.test"
    assert response.json["envelope_from"] == "help@acme.test"
    assert response.json["tracking_id"] == case["tracking_id"]


def test_a_reply_to_mail_on_another_departments_mailbox_is_refused(client, agent_api, sales_api, incoming, world,
                                                                    queued_count):
    # sales@ is Sales' mailbox: the agent of the root department may not answer its mail from it.
    case = incoming(mailbox_id=world["sales_id"])
    response = send(client, agent_api, kind="reply", incoming_id=case["id"])
    assert response.status_code == 403 and "incoming_id" in response.json["fields"]
    assert "sales@acme.test" in response.json["error"]
    assert queued_count() == 0
    # Sales' own agent answers it, from sales@.
    response = send(client, sales_api, kind="reply", incoming_id=case["id"])
    assert response.status_code == 201 and response.json["from"] == "Acme Sales <sales@acme.test>"


def test_while_replies_may_change_from_foreign_mail_may_be_answered_from_ones_own_mailbox(
        client, agent_api, incoming, world, settings_of, queued_count):
    settings_of(allow_change_reply_from=True)
    case = incoming(mailbox_id=world["sales_id"])
    refused = send(client, agent_api, kind="reply", incoming_id=case["id"])  # from sales@ by default
    assert refused.status_code == 403 and "one of your own mailboxes" in refused.json["error"]
    assert send(client, agent_api, kind="reply", incoming_id=case["id"],
                from_mailbox_id=world["sales_id"]).status_code == 403
    response = send(client, agent_api, kind="reply", incoming_id=case["id"], from_mailbox_id=world["support_id"])
    assert response.status_code == 201 and response.json["from"] == "Acme Support <support@acme.test>"
    assert queued_count() == 1


@pytest.mark.parametrize("kind, fields", [("redirect", {"subject": None, "body_text": None}), ("forward", {}),
                                          ("collaborate", {})])
def test_foreign_mail_is_not_redirected_forwarded_or_collaborated_on(client, agent_api, incoming, world, settings_of,
                                                                      queued_count, kind, fields):
    settings_of(origination_from_mailbox_id=world["support_id"], allow_change_reply_from=True,
                allow_change_origination_from=True)
    case = incoming(mailbox_id=world["sales_id"])
    body = {"to": ["colleague@partner.test"], "subject": "About this", "body_text": "See below", **fields}
    response = client.post("/api/v1/messages", json={"kind": kind, "incoming_id": case["id"],
                                                     **{k: v for k, v in body.items() if v is not None}},
                           headers=agent_api)
    assert response.status_code == 403 and "incoming_id" in response.json["fields"]
    assert queued_count() == 0


def test_a_reply_cannot_choose_its_from_while_changing_is_off(client, agent_api, incoming, world, queued_count):
    case = incoming(mailbox_id=world["help_id"])
    response = send(client, agent_api, kind="reply", incoming_id=case["id"], from_mailbox_id=world["support_id"])
    assert response.status_code == 403
    assert "from_mailbox_id" in response.json["fields"]
    assert queued_count() == 0


def test_a_reply_may_choose_one_of_the_users_mailboxes_while_changing_is_on(client, agent_api, incoming, world, settings_of):
    settings_of(allow_change_reply_from=True)
    case = incoming()
    response = send(client, agent_api, kind="reply", incoming_id=case["id"], from_mailbox_id=world["support_id"])
    assert response.status_code == 201, response.text
    assert response.json["from"] == "Acme Support <support@acme.test>"


def test_a_reply_may_not_choose_another_departments_mailbox(client, agent_api, incoming, world, settings_of, queued_count):
    settings_of(allow_change_reply_from=True)
    case = incoming(mailbox_id=world["support_id"])
    response = send(client, agent_api, kind="reply", incoming_id=case["id"], from_mailbox_id=world["sales_id"])
    assert response.status_code == 403
    assert queued_count() == 0


def test_a_mailbox_of_another_partition_is_outside_the_rule_too(client, agent_api, incoming, world, settings_of, queued_count):
    settings_of(allow_change_reply_from=True, allow_change_origination_from=True)
    case = incoming()
    assert send(client, agent_api, kind="reply", incoming_id=case["id"],
                from_mailbox_id=world["beta_mailbox_id"]).status_code == 403
    assert send(client, agent_api, kind="origination", from_mailbox_id=world["beta_mailbox_id"]).status_code == 403
    assert send(client, agent_api, kind="origination", from_mailbox_id=999999).status_code == 403
    assert queued_count() == 0


def test_the_reply_preference_applies_while_allowed_and_is_ignored_once_forbidden(
        client, agent_api, incoming, world, settings_of):
    settings_of(allow_change_reply_from=True)
    assert client.put("/api/v1/me/preferences", json={"reply_from_mailbox_id": world["help_id"]},
                      headers=agent_api).status_code == 200
    case = incoming()
    assert send(client, agent_api, kind="reply", incoming_id=case["id"]).json["from"] == "help@acme.test"
    settings_of(allow_change_reply_from=False)
    assert send(client, agent_api, kind="reply", incoming_id=case["id"]).json["from"] == "Acme Support <support@acme.test>"
    prefs = client.get("/api/v1/me/preferences", headers=agent_api).json
    assert prefs["reply_from_mailbox_id"] == world["help_id"] and prefs["reply_from_preference_applies"] is False


def test_a_stored_preference_for_a_mailbox_no_longer_the_users_is_ignored(
        app, client, agent_api, incoming, world, settings_of):
    from webapp.core.database import db
    from webapp.core.models import Mailbox

    settings_of(allow_change_reply_from=True)
    client.put("/api/v1/me/preferences", json={"reply_from_mailbox_id": world["help_id"]}, headers=agent_api)
    with app.app_context():  # the mailbox moves to Sales, which the agent is not in
        db.session.get(Mailbox, world["help_id"]).department_id = world["sales_department_id"]
        db.session.commit()
    case = incoming()
    assert send(client, agent_api, kind="reply", incoming_id=case["id"]).json["from"] == "Acme Support <support@acme.test>"


# --- originations, forwards, collaborations -------------------------------------------------


def test_an_origination_goes_out_from_the_system_default(client, agent_api, world, settings_of):
    settings_of(origination_from_mailbox_id=world["sales_id"])
    response = send(client, agent_api, kind="origination")
    assert response.status_code == 201, response.text
    assert response.json["from"] == "Acme Sales <sales@acme.test>"
    assert response.json["tracking_id"].startswith("ACME-")


def test_an_origination_with_no_default_and_no_allowed_preference_is_refused(client, agent_api, world, settings_of, queued_count):
    response = send(client, agent_api, kind="origination")
    assert response.status_code == 422
    assert "from_mailbox_id" in response.json["fields"]
    settings_of(allow_change_origination_from=True)
    assert send(client, agent_api, kind="origination").status_code == 422
    assert queued_count() == 0


def test_an_origination_uses_the_users_preference_or_choice_while_changing_is_allowed(client, agent_api, world, settings_of):
    settings_of(origination_from_mailbox_id=world["sales_id"], allow_change_origination_from=True)
    assert send(client, agent_api, kind="origination", from_mailbox_id=world["help_id"]).json["from"] == "help@acme.test"
    client.put("/api/v1/me/preferences", json={"origination_from_mailbox_id": world["support_id"]}, headers=agent_api)
    assert send(client, agent_api, kind="origination").json["from"] == "Acme Support <support@acme.test>"
    settings_of(allow_change_origination_from=False)
    assert send(client, agent_api, kind="origination").json["from"] == "Acme Sales <sales@acme.test>"


def test_choosing_the_default_itself_is_no_change(client, agent_api, world, settings_of):
    # The system default is in Sales, not the agent's: naming it is naming the default, not a choice.
    settings_of(origination_from_mailbox_id=world["sales_id"])
    assert send(client, agent_api, kind="origination", from_mailbox_id=world["sales_id"]).status_code == 201


@pytest.mark.parametrize("kind", ["forward", "collaborate"])
def test_forward_and_collaborate_follow_the_origination_rule(client, agent_api, incoming, world, settings_of, kind, queued_count):
    case = incoming()
    assert send(client, agent_api, kind=kind, incoming_id=case["id"]).status_code == 422  # no default
    settings_of(origination_from_mailbox_id=world["support_id"])
    response = send(client, agent_api, kind=kind, incoming_id=case["id"], subject="")
    assert response.status_code == 201, response.text
    assert response.json["from"] == "Acme Support <support@acme.test>"
    assert response.json["tracking_id"] == case["tracking_id"]
    assert send(client, agent_api, kind=kind, incoming_id=case["id"], from_mailbox_id=world["help_id"]).status_code == 403
    assert queued_count() == 1


# --- redirect -----------------------------------------------------------------------------


def test_a_redirect_keeps_the_original_sender_and_the_mailbox_it_came_in_on(client, agent_api, incoming, world, settings_of):
    case = incoming(**{"from": "Jo Customer <jo@example.org>"})
    response = client.post("/api/v1/messages", json={"kind": "redirect", "incoming_id": case["id"],
                                                     "to": ["colleague@partner.test"]}, headers=agent_api)
    assert response.status_code == 201, response.text
    assert response.json["from"] == "Jo Customer <jo@example.org>"
    assert response.json["from_mailbox_id"] == world["support_id"]
    assert response.json["envelope_from"] == "support@acme.test"
    assert response.json["subject"] == "Where is my order?"
    settings_of(envelope_sender_mailbox=False)
    response = client.post("/api/v1/messages", json={"kind": "redirect", "incoming_id": case["id"],
                                                     "to": ["colleague@partner.test"]}, headers=agent_api)
    assert response.json["envelope_from"] == "jo@example.org"


def test_a_redirect_cannot_choose_a_from(client, agent_api, incoming, world, settings_of, queued_count):
    settings_of(allow_change_reply_from=True, allow_change_origination_from=True)
    case = incoming()
    response = client.post("/api/v1/messages", json={"kind": "redirect", "incoming_id": case["id"], "to": ["c@partner.test"],
                                                     "from_mailbox_id": world["help_id"]}, headers=agent_api)
    assert response.status_code == 403
    assert queued_count() == 0


def test_a_redirect_takes_no_subject_or_body(client, agent_api, incoming, world, queued_count):
    case = incoming()
    response = client.post("/api/v1/messages", json={"kind": "redirect", "incoming_id": case["id"], "to": ["c@partner.test"],
                                                     "subject": "x", "body_text": "y"}, headers=agent_api)
    assert response.status_code == 422
    assert set(response.json["fields"]) == {"subject", "body_text"}
    assert queued_count() == 0


# --- preferences API ----------------------------------------------------------------------


def test_preferences_list_only_the_users_mailboxes_and_the_rules(client, agent_api, sales_api, world):
    mine = client.get("/api/v1/me/preferences", headers=agent_api).json
    assert {m["address"] for m in mine["mailboxes"]} == {"support@acme.test", "help@acme.test"}
    assert any("not allowed" in note for note in mine["rules"])
    theirs = client.get("/api/v1/me/preferences", headers=sales_api).json
    assert {m["address"] for m in theirs["mailboxes"]} == {"sales@acme.test"}


def test_a_preference_needs_changing_to_be_allowed(client, agent_api, world, user_row):
    response = client.put("/api/v1/me/preferences", json={"reply_from_mailbox_id": world["support_id"]}, headers=agent_api)
    assert response.status_code == 403
    assert "reply_from_mailbox_id" in response.json["fields"]
    assert user_row(world["agent_id"]).reply_from_mailbox_id is None


def test_a_preference_for_another_departments_mailbox_is_refused_and_nothing_written(
        client, agent_api, world, settings_of, user_row, app):
    settings_of(allow_change_reply_from=True, allow_change_origination_from=True)
    response = client.put("/api/v1/me/preferences", json={"origination_from_mailbox_id": world["support_id"],
                                                          "reply_from_mailbox_id": world["sales_id"]}, headers=agent_api)
    assert response.status_code == 403
    user = user_row(world["agent_id"])
    assert user.reply_from_mailbox_id is None and user.origination_from_mailbox_id is None


def test_put_preferences_changes_only_the_fields_it_names_and_null_clears(client, agent_api, world, settings_of, user_row):
    settings_of(allow_change_reply_from=True, allow_change_origination_from=True)
    client.put("/api/v1/me/preferences", json={"reply_from_mailbox_id": world["help_id"],
                                               "origination_from_mailbox_id": world["support_id"]}, headers=agent_api)
    response = client.put("/api/v1/me/preferences", json={"reply_from_mailbox_id": None}, headers=agent_api)
    assert response.status_code == 200
    assert response.json["reply_from_mailbox_id"] is None
    assert response.json["origination_from_mailbox_id"] == world["support_id"]
    assert client.put("/api/v1/me/preferences", json={"reply_from_mailbox_id": "x"}, headers=agent_api).status_code == 422


def test_an_origination_may_not_choose_another_departments_mailbox(client, agent_api, world, settings_of, queued_count):
    settings_of(origination_from_mailbox_id=world["support_id"], allow_change_origination_from=True)
    response = send(client, agent_api, kind="origination", from_mailbox_id=world["sales_id"])
    assert response.status_code == 403
    assert response.json["fields"] == {"from_mailbox_id": "That mailbox is not one of your mailboxes."}
    assert queued_count() == 0
