"""Browser tests: Playwright's assertions wait up to 30 s for what they expect (its default is
5 s), so that a page a busy CI machine renders slowly is not taken for a wrong one."""
from pathlib import Path

import pytest
from playwright.sync_api import expect

expect.set_options(timeout=30_000)


SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results" / "screenshots"


def keep_screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Writes the page as test-results/screenshots/<name>.png, an artefact of the run to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture
def node(app, seed):
    """This process's real node ("test-node", the engine) with one sender, following the wanted
    state and writing heartbeats: the light is green with it alone."""
    from scheduler.node import Node

    app.config.update(MAILSENDER_SENDERS=1)
    running = Node(app)
    running.start()
    yield running
    running.stop(timeout=10)
