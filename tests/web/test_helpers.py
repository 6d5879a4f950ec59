"""The views' shared helpers (webapp/web.py): ids and pages from a request never cause a 500."""
import pytest

from webapp.web import id_list


def test_id_list_keeps_each_id_once_in_order_and_drops_what_is_not_one():
    assert id_list(["3", "x", "3", "²", "2", "", "0"]) == [3, 2]


# "²" passes str.isdigit() but not int(): each of these URLs answered 500 once.
@pytest.mark.parametrize("url", ["/admin/directory/mailboxes?page=²", "/admin/directory/users?page=-1",
                                 "/account/tokens?page=9999999999999999999999", "/outbox/list?before=²",
                                 "/admin/mail-sender/monitor?after=²"])
def test_a_bad_page_or_id_in_a_url_is_ignored(admin_client, url):
    response = admin_client.get(url, headers={"HX-Request": "true"})
    assert response.status_code == 200, response.text


def test_a_bad_cursor_in_the_api_is_a_400_naming_it(client, admin_api):
    response = client.get("/api/v1/mailboxes?cursor=²", headers=admin_api)
    assert response.status_code == 400 and "cursor" in response.json["fields"]


def test_a_bad_limit_in_the_api_is_a_400_naming_it(client, admin_api):
    for limit in ("²", "0", "501", "-1"):
        response = client.get(f"/api/v1/mailboxes?limit={limit}", headers=admin_api)
        assert response.status_code == 400 and "limit" in response.json["fields"], limit


def test_a_settings_version_that_is_no_number_is_a_422_naming_it(client, admin_api):
    response = client.put("/api/v1/mail-sender/settings", headers=admin_api, json={"version": "²"})
    assert response.status_code == 422 and "version" in response.json["fields"]


@pytest.mark.databases
@pytest.mark.parametrize("url", ["/api/v1/messages/9999999999", "/api/v1/messages?cursor=9999999999",
                                 "/api/v1/mailboxes/9999999999"])
def test_an_id_beyond_the_columns_range_finds_nothing_and_is_no_500(client, admin_api, url):
    # On PostgreSQL an INTEGER column refuses the query itself for such an id.
    assert client.get(url, headers=admin_api).status_code in (200, 400, 404)


def test_a_405_says_which_methods_the_url_takes(client, seed):
    for url in ("/api/v1/me", "/login"):
        response = client.delete(url)
        assert response.status_code == 405 and {"GET"} <= set(response.headers["Allow"].replace(" ", "").split(","))
