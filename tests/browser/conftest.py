"""Browser tests: Playwright's assertions wait up to 30 s for what they expect (its default is
5 s), so that a page a busy CI machine renders slowly is not taken for a wrong one."""
from playwright.sync_api import expect

expect.set_options(timeout=30_000)
