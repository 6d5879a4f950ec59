"""Error answers in the product's words and layout, with a way back; a fragment to htmx; JSON to the API."""
import pytest

from tests.conftest import ADMIN_PASSWORD, login

WERKZEUG_WORDS = ("The requested URL was not found", "You don't have the permission",
                  "The server encountered an internal error")


def _is_our_page(response):
    assert "<html" in response.text and not any(words in response.text for words in WERKZEUG_WORDS), response.text
    assert 'href="/">Go to the start page' in response.text
    assert "· Mail Sender</title>" in response.text


def test_a_404_is_a_page_of_ours_with_a_way_back(admin_client):
    response = admin_client.get("/no-such-page", headers={"Referer": "http://localhost/outbox?page=2"})
    assert response.status_code == 404
    _is_our_page(response)
    assert "Page not found" in response.text and 'aria-label="Main"' in response.text  # the navigation
    assert 'href="/outbox?page=2">Back to the page you came from' in response.text


def test_a_404_never_leads_back_off_site(client):
    response = client.get("/no-such-page", headers={"Referer": "https://evil.test/"})
    assert response.status_code == 404 and "evil" not in response.text


def test_an_agent_on_an_administrators_page_gets_our_403(agent_client):
    response = agent_client.get("/admin/mail-sender")
    assert response.status_code == 403
    _is_our_page(response)
    assert "Not open to you" in response.text and "Administrators can" in response.text


def test_a_500_is_a_page_of_ours(app, client, seed):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/fails-for-the-test")
    def _fails():
        raise RuntimeError("a fault the user must not see")

    login(client, "admin", ADMIN_PASSWORD)
    response = client.get("/fails-for-the-test")
    assert response.status_code == 500
    _is_our_page(response)
    assert "Something went wrong on our side" in response.text and "a fault the user" not in response.text


def test_a_views_own_reason_stays(app, client, seed):
    from flask import abort

    @app.get("/refuses-for-the-test")
    def _refuses():
        abort(409, description="Save the parameters first; nothing was authorized.")

    response = client.get("/refuses-for-the-test")
    assert response.status_code == 409 and "Save the parameters first; nothing was authorized." in response.text


def test_htmx_gets_the_error_as_a_fragment(agent_client):
    response = agent_client.get("/admin/mail-sender/status", headers={"HX-Request": "true"})
    assert response.status_code == 403
    assert "<html" not in response.text and 'id="error-message"' in response.text and "Not open to you" in response.text


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/api/v1/messages/999999"])
def test_the_api_answers_errors_in_json(admin_client, admin_api, path):
    response = admin_client.get(path, headers=admin_api)
    assert response.status_code == 404 and response.is_json and response.json["error"]


def test_the_site_has_an_icon(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.data[:4] == b"\x00\x00\x01\x00"  # an ICO file
    page = client.get("/login")
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page.text
    svg = client.get("/static/favicon.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
