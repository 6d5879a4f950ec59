"""The Mail Sender parameters: reading them, and (for the form and the API alike) validating them."""
from __future__ import annotations

from sqlalchemy import select

from .extensions import db
from .models import MailSenderSettings


def get_settings(partition_id: int) -> MailSenderSettings:
    """The partition's saved settings row (made with the partition, so it always exists)."""
    return db.session.scalars(
        select(MailSenderSettings).where(MailSenderSettings.partition_id == partition_id)
    ).one()
