from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("compose", __name__, url_prefix="/compose")


@bp.get("")
@login_required
def index():
    return render_template("compose/index.html")
