from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("outbox", __name__, url_prefix="/outbox")


@bp.get("")
@login_required
def index():
    return render_template("outbox/index.html")
