"""A person meets an ended session, an error page, the site's icon, the lights' labels and the
demo's captured mail in Chromium."""
import smtplib
import socket

import pytest
from playwright.sync_api import expect
from sqlalchemy import delete

from tests.browser.conftest import keep_screenshot
from tests.conftest import ADMIN_PASSWORD, AGENT_PASSWORD, browser_login
from webapp.core.database import db
from webapp.core.models import UserSession
from webapp.core.settings.store import get_settings

pytestmark = pytest.mark.browser


def _end_every_session(app):
    """What idleness does on the server: the browser keeps its cookie, which opens nothing now."""
    with app.app_context():
        db.session.execute(delete(UserSession))
        db.session.commit()


def test_a_save_after_the_session_ended_keeps_the_form_and_a_login_in_place_lets_it_be_saved(
        page, app, live_server, seed):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    page.wait_for_function("window.htmx !== undefined")
    batch_size = page.locator("#f-batch_size")
    batch_size.fill("42")
    page.context.clear_cookies()  # the session is gone while the page is open

    save = page.locator("#parameters").get_by_role("button", name="Save")
    save.click()
    notice = page.locator("#session-notice")
    expect(notice).to_contain_text("Your session ended; log in again.")
    expect(notice).to_be_in_viewport()
    expect(batch_size).to_have_value("42")  # the form is as typed, not replaced
    assert page.url == f"{live_server.url}/admin/mail-sender"
    keep_screenshot(page, "session-ended-notice", full_page=False)

    notice.get_by_role("link", name="Log in").click()
    login = page.locator("#session-login")
    login.get_by_label("Username").fill("admin")
    login.get_by_label("Password").fill(ADMIN_PASSWORD)
    keep_screenshot(page, "session-login-in-place", full_page=False)
    login.get_by_role("button", name="Log in").click()
    expect(login).to_contain_text("You are logged in again as admin")
    expect(notice).to_be_empty()
    expect(batch_size).to_have_value("42")

    with page.expect_response(lambda r: r.request.method == "POST" and "/parameters" in r.url) as saved:
        save.click()
    assert saved.value.status == 200
    expect(page.locator("#parameters-errors")).to_have_count(0)
    with app.app_context():
        assert get_settings(seed["partition_id"]).batch_size == 42
    keep_screenshot(page, "session-saved-after-login", full_page=False)


def test_a_poll_that_finds_the_session_ended_shows_the_notice_on_its_own(page, app, live_server, seed):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    _end_every_session(app)
    expect(page.locator("#session-notice")).to_contain_text("Your session ended; log in again.")
    expect(page.locator("#status")).to_contain_text("Number defined for this partition")


def test_a_page_opened_after_the_session_ended_says_so_and_the_login_returns_to_it(page, app, live_server, seed):
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    page.goto(f"{live_server.url}/outbox?state=failed")
    _end_every_session(app)
    page.reload()
    expect(page.locator("#session-ended-notice")).to_have_text("Your session ended; log in again.")
    keep_screenshot(page, "login-after-session-ended")
    page.get_by_label("Username").fill("agent")
    page.get_by_label("Password").fill(AGENT_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server.url}/outbox?state=failed")


def test_a_404_is_the_products_page_with_a_way_back(page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/outbox")
    response = page.goto(f"{live_server.url}/outbox/no-such-thing/here")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    keep_screenshot(page, "error-404")
    page.get_by_role("link", name="Go to the start page").click()
    expect(page).to_have_url(f"{live_server.url}/admin/mail-sender")


@pytest.fixture
def failing_page(app):
    """A page that fails on the server, added before the live server serves the app."""
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/fails-for-the-test")
    def _fails():
        raise RuntimeError("a fault the user must not see")

    return "/fails-for-the-test"


def test_a_500_is_the_products_page_and_hides_the_fault(page, failing_page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    response = page.goto(f"{live_server.url}{failing_page}")
    assert response.status == 500
    expect(page.get_by_text("Something went wrong on our side")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(page.get_by_text("a fault the user must not see")).to_have_count(0)
    keep_screenshot(page, "error-500")


def test_an_agent_meets_the_products_403(page, live_server):
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    response = page.goto(f"{live_server.url}/admin/directory")
    assert response.status == 403
    expect(page.get_by_role("heading", name="Not open to you")).to_be_visible()
    keep_screenshot(page, "error-403")


def test_every_page_has_an_icon(page, live_server):
    page.goto(f"{live_server.url}/login")
    href = page.locator("link[rel='icon']").get_attribute("href")
    assert page.request.get(f"{live_server.url}{href}").status == 200
    assert page.request.get(f"{live_server.url}/favicon.ico").status == 200


# --- contrast ---------------------------------------------------------------------------------

# The contrast of an element's text with what is behind it: its colour, faded by its own opacity
# and its ancestors', over the first background that is not transparent (WCAG 2 relative luminance).
CONTRAST = """element => {
  const rgba = text => text.match(/[\\d.]+/g).map(Number);
  let [r, g, b, a = 1] = rgba(getComputedStyle(element).color);
  let back = null;
  for (let node = element; node; node = node.parentElement) {
    const style = getComputedStyle(node);
    a *= Number(style.opacity);
    const bg = rgba(style.backgroundColor);
    if (back === null && (bg.length < 4 || bg[3] > 0)) back = bg;
  }
  back = back || [255, 255, 255];
  const mix = (fg, bg) => fg * a + bg * (1 - a);
  const fg = [mix(r, back[0]), mix(g, back[1]), mix(b, back[2])];
  const lum = ([x, y, z]) => {
    const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(x) + 0.7152 * f(y) + 0.0722 * f(z);
  };
  const [hi, lo] = [lum(fg), lum(back)].sort((p, q) => q - p);
  return (hi + 0.05) / (lo + 0.05);
}"""

# Coloured text the window shows, each in a section where it appears.
SAMPLES = {
    "error text": ("#status", '<p class="error-text">The route is paused</p>'),
    "field error": ("#parameters", '<p class="field-error">Required</p>'),
    "reason": ("#status", '<span class="reason">refused</span>'),
    "muted": ("#status", '<span class="muted">2 running</span>'),
    "help": ("#parameters", '<p class="help">The most messages a sender collects</p>'),
    "in an error box": ("#parameters", '<div class="error-box"><span class="error-text">Wrong</span></div>'),
    "in a warning box": ("#parameters", '<div class="warning-box"><span class="muted">Note</span></div>'),
}


def test_the_lights_labels_and_coloured_text_reach_4_5_to_1(page, live_server):
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.goto(f"{live_server.url}/admin/mail-sender")
    lights = page.locator("#status .light")
    expect(lights).to_have_count(3)
    ratios = {}
    for color in ("green", "yellow", "red"):
        # Each light as the server draws it when it is the one on, and the other two off.
        page.evaluate("""color => document.querySelectorAll('#status .light').forEach(light =>
            light.classList.toggle('on', light.classList.contains(color)))""", color)
        for light in ("green", "yellow", "red"):
            state = "on" if light == color else "off"
            ratios[f"{light} light {state}"] = page.locator(f"#status .light.{light}").evaluate(CONTRAST)
    for name, (section, html) in SAMPLES.items():
        page.locator(section).evaluate(f"(s, html) => s.insertAdjacentHTML('beforeend', html)", html)
        selector = {"in an error box": ".error-box .error-text", "in a warning box": ".warning-box .muted"}.get(
            name, "." + html.split('class="')[1].split('"')[0])
        ratios[name] = page.locator(f"{section} {selector}").last.evaluate(CONTRAST)
    keep_screenshot(page, "lights-and-labels", full_page=False)
    low = {name: round(ratio, 2) for name, ratio in ratios.items() if ratio < 4.5}
    assert low == {}, f"below 4.5:1: {low}"


# --- the demo's captured mail -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def demo(app, tmp_path):
    """The demo's capture server and pages, before the live server serves its first request."""
    from webapp.demo import start_capture_server
    from webapp.views import demo as demo_views

    port = _free_port()
    controller = start_capture_server(str(tmp_path / "captured"), port)
    app.config["DEMO_CAPTURE_DIR"] = str(tmp_path / "captured")
    app.register_blueprint(demo_views.bp)
    yield port
    controller.stop()


def test_the_demo_lists_captured_mail_for_administrators(page, demo, live_server):
    with smtplib.SMTP("127.0.0.1", demo) as smtp:
        smtp.sendmail("info@acme.test", ["customer@example.org"],
                      b"From: Acme Info <info@acme.test>\r\nTo: Customer <customer@example.org>\r\n"
                      b"Subject: Your case <#42>\r\n\r\nHello,\r\n<b>not bold</b>\r\n")
        smtp.sendmail("admin@acme.test", ["admin@acme.test"],
                      b"From: admin@acme.test\r\nTo: admin@acme.test\r\nSubject: 3 messages pending\r\n\r\nSee the Monitor.\r\n")
    browser_login(page, live_server, "admin", ADMIN_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Captured mail").click()
    mails = page.locator("table.captured tbody")
    expect(mails).to_have_count(2)
    expect(mails.first).to_contain_text("3 messages pending")  # newest first
    expect(mails.nth(1)).to_contain_text("Acme Info <info@acme.test>")
    expect(mails.nth(1)).to_contain_text("Customer <customer@example.org>")
    expect(mails.nth(1)).to_contain_text("Your case <#42>")
    keep_screenshot(page, "demo-captured")
    mails.nth(1).get_by_text("The message as received").click()
    expect(mails.nth(1).locator("pre.captured-text")).to_contain_text("<b>not bold</b>")  # shown as text
    keep_screenshot(page, "demo-captured-message")

    page.get_by_role("button", name="Log out").click()
    browser_login(page, live_server, "agent", AGENT_PASSWORD)
    expect(page.get_by_role("link", name="Captured mail")).to_have_count(0)
    assert page.goto(f"{live_server.url}/demo/captured").status == 403
    expect(page.get_by_role("heading", name="Not open to you")).to_be_visible()
