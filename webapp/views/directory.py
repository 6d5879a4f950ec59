from flask import Blueprint, render_template

from ..authn import admin_required

bp = Blueprint("directory", __name__, url_prefix="/admin/directory")


@bp.get("")
@admin_required
def index():
    return render_template("directory/index.html")
