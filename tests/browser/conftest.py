"""Browser tests: Playwright's assertions wait up to 30 s for what they expect (its default is
5 s), so that a page a busy CI machine renders slowly is not taken for a wrong one."""
from pathlib import Path

from playwright.sync_api import expect

expect.set_options(timeout=30_000)


SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results" / "screenshots"


def keep_screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Writes the page as test-results/screenshots/<name>.png, an artefact of the run to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
