"""A session that ends while a page is open: the login page says so and leads back to the page;
a section's request (htmx) gets a notice with a login in place, and the form it came from stays."""
import pytest

from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, csrf_from, login

HTMX = {"HX-Request": "true"}


def test_a_page_opened_after_the_session_ended_says_so_and_the_login_returns_to_it(client, seed, product_clock):
    assert login(client, "agent", AGENT_PASSWORD).status_code == 302
    product_clock.move(hours=12, seconds=1)

    response = client.get("/outbox?state=failed")
    assert response.status_code == 302
    assert response.location == "/login?next=/outbox?state%3Dfailed&ended=1"
    page = client.get(response.location)
    assert "Your session ended; log in again." in page.text

    answer = client.post(response.location, data={"username": "agent", "password": AGENT_PASSWORD,
                                                  "csrf_token": csrf_from(page.text)})
    assert answer.status_code == 302 and answer.location == "/outbox?state=failed"


def test_a_first_visit_is_not_told_that_a_session_ended(client, seed):
    response = client.get("/outbox")
    assert response.location == "/login?next=/outbox"
    assert "session ended" not in client.get(response.location).text


def test_a_section_request_after_the_session_ended_answers_401_with_a_login_in_place(client, seed, product_clock):
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 302
    csrf = csrf_from(client.get("/admin/mail-sender").text)
    product_clock.move(hours=12, seconds=1)
    response = client.post("/admin/mail-sender/parameters", data={"batch_size": "7", "csrf_token": csrf},
                           headers={**HTMX, "HX-Current-URL": "http://localhost/admin/mail-sender?x=1"})
    assert response.status_code == 401 and "HX-Redirect" not in response.headers
    assert response.headers["HX-Retarget"] == "#session-notice"
    assert "Your session ended; log in again." in response.text
    assert 'href="/login?next=/admin/mail-sender?x%3D1&amp;ended=1"' in response.text


def test_a_section_request_whose_session_cookie_is_gone_gets_the_notice_not_a_csrf_error(client, seed):
    # Without its cookie the request has no session, so no CSRF token either: that is the same end.
    response = client.post("/admin/mail-sender/parameters", data={"batch_size": "7", "csrf_token": "stale"},
                           headers=HTMX)
    assert response.status_code == 401 and "Your session ended; log in again." in response.text


def test_a_logged_in_users_stale_csrf_token_is_still_a_400(admin_client):
    response = admin_client.post("/admin/mail-sender/parameters", data={"csrf_token": "stale"}, headers=HTMX)
    assert response.status_code == 400


@pytest.mark.parametrize("elsewhere", ["http://evil.test/admin/mail-sender", "//evil.test/", "/\\evil.test/"])
def test_a_notice_never_leads_off_site(client, seed, elsewhere):
    response = client.get("/admin/mail-sender/status", headers={**HTMX, "HX-Current-URL": elsewhere})
    assert response.status_code == 401 and "evil" not in response.text


def test_the_login_in_place_answers_a_fragment_with_the_new_csrf_token(client, seed):
    form = client.get("/login", headers=HTMX)
    assert form.status_code == 200 and "<html" not in form.text and 'hx-post="/login"' in form.text
    wrong = client.post("/login", headers=HTMX, data={"username": "admin", "password": "wrong",
                                                      "csrf_token": csrf_from(form.text)})
    assert wrong.status_code == 401 and "<html" not in wrong.text and "Wrong username or password." in wrong.text

    right = client.post("/login", headers=HTMX, data={"username": "admin", "password": ADMIN_PASSWORD,
                                                      "csrf_token": csrf_from(form.text)})
    assert right.status_code == 200 and "Location" not in right.headers
    assert "You are logged in again as admin" in right.text and 'data-csrf-token="' in right.text
    assert 'id="session-notice" hx-swap-oob="innerHTML"' in right.text
    assert client.get("/admin/mail-sender").status_code == 200


@pytest.mark.parametrize("target", ["https://evil.test/", "//evil.test/", "/\\evil.test/", "/\tevil", "javascript:alert(1)"])
def test_next_is_only_ever_a_path_of_this_site(client, seed, target):
    page = client.get("/login")
    response = client.post("/login", query_string={"next": target}, data={
        "username": "admin", "password": ADMIN_PASSWORD, "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302 and response.location == "/"


def test_the_api_still_answers_its_json_401(client, seed):
    response = client.get("/api/v1/me", headers=HTMX)
    assert response.status_code == 401 and response.is_json and "HX-Retarget" not in response.headers
