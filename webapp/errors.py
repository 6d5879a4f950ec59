"""Error answers: JSON under /api, a page elsewhere, and never a stack trace for bad input.

A Refusal (webapp/core/refusal.py) that no view turned into a form with its message is answered
here, the same way for every rule that raises one.
"""
from flask import current_app, jsonify, render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from .core.database import db
from .core.refusal import Refusal
from .web import is_htmx, wants_json


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
        response = _answer(error.code or 500, error.description or error.name)
        if getattr(error, "valid_methods", None):  # a 405 says which methods the URL takes
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Refusal)
    def _refused(refusal: Refusal):
        # Rules check before they write; the rollback guards against a half-made change anyway.
        db.session.rollback()
        response = _answer(refusal.status, refusal.message, refusal.fields)
        if refusal.retry_after:
            response.headers["Retry-After"] = str(refusal.retry_after)
        return response


def _answer(status: int, message: str, fields: dict | None = None):
    if wants_json():
        return json_error(status, message, fields)
    template = "errors/_fragment.html" if is_htmx() else "errors/error.html"
    response = current_app.make_response((render_template(template, status=status, message=message,
                                                          fields=fields or {}), status))
    return response
