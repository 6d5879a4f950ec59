"""Error answers: JSON under /api, a page elsewhere, and never a stack trace for bad input."""
from flask import jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from .authn import wants_json


def json_error(status: int, message: str, fields: dict | None = None):
    body = {"error": message}
    if fields:
        body["fields"] = fields
    response = jsonify(body)
    response.status_code = status
    return response


def register(app):
    @app.errorhandler(CSRFError)
    def _csrf_error(error):
        return _answer(400, "The form was not accepted (missing or expired CSRF token). Reload the page and try again.")

    @app.errorhandler(HTTPException)
    def _http_error(error):
        return _answer(error.code or 500, error.description or error.name)


def _answer(status: int, message: str):
    if wants_json():
        return json_error(status, message)
    template = "errors/_fragment.html" if request.headers.get("HX-Request") else "errors/error.html"
    return render_template(template, status=status, message=message), status
