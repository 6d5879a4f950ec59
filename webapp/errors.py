"""Error answers: JSON under /api, a page elsewhere, and never a stack trace for bad input.

A Refusal (webapp/core/refusal.py) that no view turned into a form with its message is answered
here, the same way for every rule that raises one.
"""
from flask import current_app, jsonify, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from .core.database import db
from .core.refusal import Refusal
from .extensions import login_manager
from .site_paths import local_path
from .web import is_htmx, wants_json

# The forms that anyone may post: a refused token there is only that, not an ended session.
FORMS_WITHOUT_LOGIN = {"auth.login", "auth.logout"}


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
        if not current_user.is_authenticated and request.endpoint not in FORMS_WITHOUT_LOGIN:
            # The session that held the token has ended: that is what to say, and the htmx answer
            # then leaves the form as typed (authn._unauthorized).
            return login_manager.unauthorized()
        return _answer(400, "The form was not accepted (missing or expired CSRF token). Reload the page and try again.")

    @app.errorhandler(HTTPException)
    def _http_error(error):
        status = error.code or 500
        if status >= 500:
            # Whatever failed may have left the transaction unusable, and the page asks who is logged in.
            db.session.rollback()
        # Werkzeug's own descriptions give way to ours; a view's own reason (abort(404, "…")) stays.
        described = error.description and error.description != type(error).description
        response = _answer(status, error.description if described else _in_our_words(status, error.name))
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


# What an error page says, for the answers a person meets; the rest keep their HTTP name.
TITLES = {
    400: "The request could not be used",
    403: "Not open to you",
    404: "Page not found",
    405: "Not done this way",
    413: "Too large",
    429: "Too many attempts",
    500: "Something went wrong on our side",
}
WORDS = {
    400: "The window sent something the server could not use. Reload the page and try again.",
    403: "Your account may not open this page or do this. Administrators can; ask one if you need it.",
    404: "There is nothing at this address. The link may be mistyped, or what it named was removed.",
    405: "This address does not take that kind of request.",
    413: "What was sent is larger than the server takes.",
    429: "Too many attempts in a short time. Wait a little, then try again.",
    500: "The server could not finish this request; the fault is logged. Try again in a moment, and if it "
         "happens again, tell your administrator when it happened.",
}


def _in_our_words(status: int, name: str) -> str:
    return WORDS.get(status, name)


def _answer(status: int, message: str, fields: dict | None = None):
    if wants_json():
        return json_error(status, message, fields)
    template = "errors/_fragment.html" if is_htmx() else "errors/error.html"
    page = render_template(template, status=status, title=TITLES.get(status, "Not done"), message=message,
                           fields=fields or {}, back=local_path(request.referrer))
    return current_app.make_response((page, status))
