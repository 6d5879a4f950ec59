from flask import Blueprint, render_template

from ..authn import admin_required

bp = Blueprint("mailsender", __name__, url_prefix="/admin/mail-sender")


@bp.get("")
@admin_required
def index():
    return render_template("mailsender/index.html")
