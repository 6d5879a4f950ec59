"""/api/v1/openapi.json: a valid OpenAPI document of every route under /api/v1, with every path
parameter, body and answer, which the schemathesis suite (tests/suites) runs against."""
import re

import pytest
from openapi_spec_validator import validate

from webapp.api import bp
from webapp.api.openapi import OPERATIONS

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def document(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json


def _api_rules(app):
    return [rule for rule in app.url_map.iter_rules() if rule.rule.startswith(bp.url_prefix + "/")]


def _operations(document):
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def _body_schema(document, path, method):
    schema = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    return schema


def test_the_document_is_valid_openapi(document):
    validate(document)


def test_every_route_under_the_api_is_in_it(app, document):
    for rule in _api_rules(app):
        path = re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule.rule[len(bp.url_prefix):])
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in document["paths"].get(path, {}), f"{method} {path}"


def test_every_route_has_its_schemas_and_every_entry_a_route(app):
    endpoints = {rule.endpoint for rule in _api_rules(app)}
    assert endpoints - set(OPERATIONS) == set(), "routes without an entry in webapp/api/openapi.py OPERATIONS"
    assert set(OPERATIONS) - endpoints == set(), "entries in OPERATIONS without a route"


def test_every_path_parameter_is_defined(document):
    for path, method, operation in _operations(document):
        declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
        assert set(declared) == set(re.findall(r"{(\w+)}", path)), f"{method} {path}"
        for parameter in declared.values():
            assert parameter["required"] is True
            # Ids are whole numbers; a node is known by its name.
            expected = "string" if parameter["name"] == "name" else "integer"
            assert parameter["schema"]["type"] == expected, f"{method} {path}: ids are whole numbers"


def test_every_call_that_may_carry_a_body_describes_it(document):
    for path, method, operation in _operations(document):
        if method in ("post", "put", "patch"):
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema, f"{method} {path}"


def test_bodies_name_their_required_fields(document):
    schemas = document["components"]["schemas"]
    assert _body_schema(document, "/tokens", "post")["required"] == ["username", "password"]
    assert _body_schema(document, "/departments", "post")["required"] == ["name"]
    assert _body_schema(document, "/users", "post")["required"] == ["username", "password", "role"]
    assert schemas["MessageRequest"]["required"] == ["kind"]
    assert schemas["IncomingRequest"]["required"] == ["mailbox_id"]


def test_settings_changes_refuse_unknown_fields_as_the_endpoint_does(client, admin_api, document):
    change = document["components"]["schemas"]["SettingsChange"]
    assert change["additionalProperties"] is False and "smtp_password" in change["properties"]
    response = client.put("/api/v1/mail-sender/settings", json={"no_such_setting": 1}, headers=admin_api)
    assert response.status_code == 422 and "no_such_setting" in response.json["fields"]


def test_queries_are_documented(document):
    def names(path):
        return {parameter["name"] for parameter in document["paths"][path]["get"].get("parameters", [])}

    assert {"limit", "cursor"} <= names("/departments")
    assert {"status", "limit", "cursor"} <= names("/messages")
    assert {"for", "limit", "cursor"} <= names("/mailboxes")


def test_every_answer_is_described_and_errors_have_one_shape(document):
    error = {"$ref": "#/components/schemas/Error"}
    assert document["components"]["schemas"]["Error"]["properties"]["fields"]["type"] == "object"
    for path, method, operation in _operations(document):
        responses = operation["responses"]
        assert "default" not in responses, f"{method} {path} has no entry in OPERATIONS"
        assert any(status.startswith("2") for status in responses), f"{method} {path}"
        for status, answer in responses.items():
            assert answer["description"]
            if int(status) >= 400:
                assert answer["content"]["application/json"]["schema"] == error
        if operation["security"]:
            assert "401" in responses, f"{method} {path}"


def test_the_fields_other_systems_rely_on_stay(document):
    token = document["paths"]["/tokens"]["post"]
    assert token["operationId"] == "create_token" and token["security"] == []
    message = document["paths"]["/messages/{message_id}"]["get"]
    assert message["operationId"] == "get_message" and message["security"] == [{"bearer": []}]
    assert all(operation["summary"] for _, _, operation in _operations(document))


# The document says what the endpoints take, no less: each of these the suite found described
# more strictly than the endpoint behaves.


def test_an_empty_query_value_counts_as_none_as_documented(client, admin_api, document):
    assert client.get("/api/v1/messages?limit=&cursor=&status=", headers=admin_api).status_code == 200
    assert client.get("/api/v1/mailboxes?for=", headers=admin_api).status_code == 200
    for path in ("/messages", "/mailboxes", "/tokens"):
        for parameter in document["paths"][path]["get"]["parameters"]:
            assert parameter["allowEmptyValue"] is True, (path, parameter["name"])


def test_a_call_without_fields_ignores_whatever_body_as_documented(client, admin_api, document):
    response = client.post("/api/v1/mail-sender/stop", data="[null, 1]", headers=admin_api,
                           content_type="application/json")
    assert response.status_code == 200
    assert "type" not in _body_schema(document, "/mail-sender/stop", "post")


def test_the_nulls_the_rules_take_are_documented(client, admin_api, document):
    created = client.post("/api/v1/users", headers=admin_api, json={
        "username": "nobody", "password": "long-enough-1", "role": "agent", "email": None})
    assert created.status_code == 201 and created.json["email"] == ""
    assert "null" in _body_schema(document, "/users", "post")["properties"]["email"]["type"]

    mailbox = client.post("/api/v1/mailboxes", headers=admin_api,
                          json={"address": "box@acme.test", "name": None, "priority": None})
    assert mailbox.status_code == 201 and mailbox.json["priority"] == 5
    assert "null" in _body_schema(document, "/mailboxes", "post")["properties"]["priority"]["type"]
    # A change needs a priority: null is no default there.
    changed = client.patch(f"/api/v1/mailboxes/{mailbox.json['id']}", headers=admin_api, json={"priority": None})
    assert changed.status_code == 422 and "priority" in changed.json["fields"]
    assert _body_schema(document, "/mailboxes/{mailbox_id}", "patch")["properties"]["priority"]["type"] == "integer"


def test_settings_take_a_null_text_as_blank_but_never_a_blank_host(client, admin_api, document):
    change = document["components"]["schemas"]["SettingsChange"]["properties"]
    assert client.put("/api/v1/mail-sender/settings", headers=admin_api,
                      json={"log_email_address": None, "oauth2_provider": None}).status_code == 200
    assert "null" in change["log_email_address"]["type"] and None in change["oauth2_provider"]["enum"]
    refused = client.put("/api/v1/mail-sender/settings", headers=admin_api, json={"smtp_host": " "})
    assert refused.status_code == 422 and "smtp_host" in refused.json["fields"]
    assert change["smtp_host"]["minLength"] == 1 and change["smtp_host"]["pattern"] == r"\S"
