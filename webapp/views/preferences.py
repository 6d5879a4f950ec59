from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("preferences", __name__, url_prefix="/preferences")


@bp.get("")
@login_required
def index():
    return render_template("preferences/index.html")
