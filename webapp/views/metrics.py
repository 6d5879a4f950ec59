"""GET /metrics: the engine's Prometheus metrics (scheduler/metrics.py), for a scraper.

No login session: a scraper has none. With MAILSENDER_METRICS_TOKEN set, the request must carry
`Authorization: Bearer <token>` (401 otherwise); without one, only a client on loopback may read
it (403 otherwise).
"""
from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler import metrics as engine_metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    refused = _refusal(current_app.config["MAILSENDER_METRICS_TOKEN"])
    if refused is not None:
        return refused
    return Response(generate_latest(engine_metrics.scrape(current_app)), content_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})


def _refusal(token: str | None) -> Response | None:
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Compared in constant time, as bytes: compare_digest refuses a str that is not ASCII.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return Response("a bearer token is required (MAILSENDER_METRICS_TOKEN)\n", 401, mimetype="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return None
    if not _loopback(request.remote_addr):
        return Response("only a client on loopback may read the metrics while MAILSENDER_METRICS_TOKEN is not "
                        "set\n", 403, mimetype="text/plain")
    return None


def _loopback(address: str | None) -> bool:
    try:
        parsed = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(parsed, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as a dual-stack socket gives it
    return (mapped or parsed).is_loopback
