"""What every page knows: the navigation and the training banner."""
from flask_login import current_user
from sqlalchemy import select

from .core.database import db
from .core.models import MailSenderSettings


def register(app):
    @app.context_processor
    def _page_context():
        training = False
        if current_user.is_authenticated:
            training = bool(
                db.session.scalar(
                    select(MailSenderSettings.training_enabled).where(
                        MailSenderSettings.partition_id == current_user.partition_id
                    )
                )
            )
        return {"training_banner": training}
