"""The Outbox as an agent uses it: a filter that stays in the URL, a list that fits a phone, and in
training mode, whom each message withheld, the log Bcc copy included."""
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import keep_screenshot
from tests.conftest import AGENT_PASSWORD, add_support_and_sales, api_token, browser_login
from webapp.core.database import db
from webapp.core.models import DeliveryAttempt, OutgoingMessage
from webapp.core.settings.store import get_settings
from webapp.core.states import FAILED

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
def submit(app, seed):
    """send(**fields): the agent's origination over the API, from support@ (the system default); its id."""
    with app.app_context():
        support, _ = add_support_and_sales(seed["partition_id"], ("support@acme.test", "Acme Support"),
                                           ("sales@acme.test", "Acme Sales"))
        get_settings(seed["partition_id"]).origination_from_mailbox_id = support.id
        db.session.commit()
    client = app.test_client()
    headers = api_token(client, "agent", AGENT_PASSWORD)

    def send(**fields) -> int:
        body = {"kind": "origination", "to": ["customer@example.org"], "subject": "Hello", "body_text": "Hi."}
        body.update(fields)
        response = client.post("/api/v1/messages", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.json["id"]

    return send


def _fail(app, message_id: int) -> None:
    """The message as a refusal leaves it: failed, with the server's answer in its timeline."""
    with app.app_context():
        message = db.session.get(OutgoingMessage, message_id)
        message.status, message.last_error = FAILED, "550 5.1.1 <nobody@example.org>: mailbox unavailable"
        for recipient in message.recipients:
            recipient.status, recipient.code, recipient.text = "failed", 550, "5.1.1 mailbox unavailable"
        message.attempts.append(DeliveryAttempt(
            node="node-a", outcome="failed", code=550, answer="recipient_permanent",
            detail="550 5.1.1 <nobody@example.org>: mailbox unavailable", queue_id=None,
            timings={"connect": 12, "commands": 30, "end": 4},
            recipients=[{"address": "nobody@example.org", "code": 550,
                         "text": "5.1.1 <nobody@example.org>: Recipient address rejected: mailbox unavailable",
                         "status": "failed"}]))
        db.session.commit()


def _rows(page):
    return page.locator("#outbox-list tbody tr[data-status]")


def _page_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def test_the_filter_is_kept_in_the_url_and_survives_a_reload(page, live_server, app, submit):
    submit(subject="Still queued")
    _fail(app, submit(subject="Refused one", to=["nobody@example.org"]))
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/outbox")
    expect(_rows(page)).to_have_count(2)

    page.locator("select[name=status]").select_option("failed")
    expect(_rows(page)).to_have_count(1)
    expect(page).to_have_url(f"{live_server.url}/outbox?status=failed")

    page.reload()
    expect(page.locator("select[name=status]")).to_have_value("failed")
    expect(_rows(page)).to_have_count(1)
    expect(_rows(page)).to_contain_text("Refused one")

    page.go_back()
    expect(page).to_have_url(f"{live_server.url}/outbox")
    expect(_rows(page)).to_have_count(2)


@pytest.mark.parametrize("viewport", (DESKTOP, PHONE), ids=("1280", "390"))
def test_the_list_fits_the_screen_with_a_timeline_open(page, live_server, app, submit, viewport):
    submit(subject="Your order 1042 and the parcel that goes with it",
           to=["customer.with.a.long.address@customers.example.org", "Other Customer <other@example.org>"],
           cc=["colleague-with-a-long-name@acme.test"])
    _fail(app, submit(subject="Refused one", to=["nobody@example.org"]))
    page.set_viewport_size(viewport)
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/outbox")
    refused = page.locator("#outbox-list tr.details").nth(0)
    refused.locator("summary").click()
    expect(refused.locator(".timeline .attempt")).to_have_count(1)
    keep_screenshot(page, f"outbox-view-{viewport['width']}")
    assert _page_width(page) <= viewport["width"]
    if viewport is PHONE:
        # Each message stands as labelled lines: the subject is read beside its label.
        subject = _rows(page).filter(has_text="Your order 1042").locator("td[data-label=Subject]")
        expect(subject).to_be_visible()
        assert subject.evaluate("cell => getComputedStyle(cell, '::before').content") == '"Subject"'


@pytest.mark.parametrize("viewport", (DESKTOP, PHONE), ids=("1280", "390"))
def test_training_mode_shows_whom_each_message_withheld_and_the_log_copy(page, live_server, app, seed, submit,
                                                                          viewport):
    with app.app_context():
        settings = get_settings(seed["partition_id"])
        settings.training_enabled = True
        settings.company_domains = ["acme.test"]
        settings.log_email_address = "archive@records.example"
        db.session.commit()
    message_id = submit(subject="Practice answer", to=["customer@example.org", "colleague@acme.test"])
    page.set_viewport_size(viewport)
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/outbox")

    expect(page.locator("#outbox-training-note")).to_contain_text("The log Bcc copy is withheld too")
    note = page.locator(f"#training-{message_id}")
    expect(note).to_contain_text("withheld from customer@example.org")
    expect(note).not_to_contain_text("colleague@acme.test")
    expect(note).to_contain_text("The log Bcc copy was withheld too")
    page.locator(f"#message-{message_id} ~ tr.details summary").first.click()
    now = page.locator(f"#recipients-now-{message_id}")
    expect(now.locator("li[data-status=training]").filter(has_text="customer@example.org")).to_contain_text(
        "withheld: training mode is on and the address is outside the company domains")
    expect(now.locator("li").filter(has_text="colleague@acme.test")).to_contain_text("pending")
    expect(now.locator(".log-copy")).to_have_text("The log Bcc copy: withheld, as training mode is on")
    # The agent learns what became of the log copy, never its address.
    expect(page.locator("#outbox-list")).not_to_contain_text("archive@records.example")
    keep_screenshot(page, f"outbox-training-{viewport['width']}")
    assert _page_width(page) <= viewport["width"]
