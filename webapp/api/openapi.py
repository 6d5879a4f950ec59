"""/api/v1/openapi.json: the API's paths and methods, read from the routes themselves."""
import re

from flask import current_app, jsonify

from . import bp

_PARAM = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


@bp.get("/openapi.json")
def openapi():
    paths: dict = {}
    for rule in current_app.url_map.iter_rules():
        if not rule.rule.startswith(bp.url_prefix) or rule.endpoint == "api.openapi":
            continue
        path = _PARAM.sub(r"{\1}", rule.rule[len(bp.url_prefix):])
        view = current_app.view_functions[rule.endpoint]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = {
                "operationId": rule.endpoint.removeprefix("api."),
                "summary": (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else rule.endpoint,
                "security": [] if rule.endpoint == "api.create_token" else [{"bearer": []}],
                "responses": {"default": {"description": "JSON; errors as {error, fields}"}},
            }
    return jsonify(
        openapi="3.1.0",
        info={"title": "Mail Sender API", "version": "1"},
        servers=[{"url": bp.url_prefix}],
        components={"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        paths=paths,
    )
