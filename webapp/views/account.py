from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.get("")
@login_required
def index():
    return render_template("account/index.html")
