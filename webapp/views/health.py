"""/healthz and /readyz: whether this process is alive, and ready for work, for a prober.

Anyone may ask: no login, and the answer holds nothing but up or down and, when down, why in
words (scheduler/health.py). A probe comes over plain HTTP straight to the process, past the
proxy that ends TLS; with MAILSENDER_HTTPS it is answered there too rather than redirected,
since a prober takes a redirect for a pass (or fails it) whatever the health.
"""
from flask import Blueprint, jsonify

from scheduler import health

bp = Blueprint("health", __name__)

PLAIN_HTTP_ENDPOINTS = ("health.healthz", "health.readyz")


@bp.get("/healthz")
def healthz():
    return _answer(health.alive(), "failing")


@bp.get("/readyz")
def readyz():
    return _answer(health.ready(), "not_ready")


def _answer(check: health.Check, down: str):
    if check.ok:
        body, status = {"status": "ok", "runs_node": check.runs_node}, 200
    else:
        body, status = {"status": down, "reason": "; ".join(check.reasons), "runs_node": check.runs_node}, 503
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def register(app, talisman) -> None:
    app.register_blueprint(bp)
    for endpoint in PLAIN_HTTP_ENDPOINTS:
        talisman(force_https=False)(app.view_functions[endpoint])
