"""The product clock, moved by hand, for the rules of the web that count time."""
from datetime import datetime, timedelta, timezone

import pytest

from webapp.core import clock


class ProductClock:
    """webapp.core.clock.utcnow, standing still until moved."""

    def __init__(self):
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def move(self, **how_far) -> None:
        self.now += timedelta(**how_far)


@pytest.fixture
def product_clock(app, monkeypatch):
    # A real minute, so that only the moves make time pass.
    app.config["MAILSENDER_MINUTE_SECONDS"] = 60.0
    moved = ProductClock()
    monkeypatch.setattr(clock, "utcnow", moved)
    return moved
