"""Mail Sender's web application: create_app() builds it; importing the package does nothing."""
from __future__ import annotations

import hashlib
import os
import secrets

from flask import Flask
from jinja2 import StrictUndefined


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_path=os.environ.get("MAILSENDER_INSTANCE") or None,
        instance_relative_config=True,
    )
    os.makedirs(app.instance_path, exist_ok=True)

    from .core import config

    app.config.from_mapping(config.from_environment(app.instance_path))
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.from_mapping(test_config)

    if not app.config.get("MAX_CONTENT_LENGTH"):
        # Attachments travel base64-encoded in JSON (4/3 of their size), beside the message itself.
        app.config["MAX_CONTENT_LENGTH"] = app.config["MAILSENDER_MAX_ATTACHMENT_BYTES"] * 4 // 3 + 2 * 1024 * 1024

    from .core.security import load_secret_key

    app.config["MAILSENDER_SECRET_KEY"] = load_secret_key(
        app.instance_path, app.config.get("MAILSENDER_SECRET_KEY")
    )
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _session_key(app.config["MAILSENDER_SECRET_KEY"])

    from .core.database import configure_engine, engine_options

    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config["SQLALCHEMY_DATABASE_URI"])
    )
    app.jinja_env.undefined = StrictUndefined

    from .web import RequestJSON

    app.json = RequestJSON(app)

    talisman = _secure_headers(app)
    _behind_proxies(app)

    from .core.database import db
    from .extensions import csrf, login_manager

    db.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    csrf.init_app(app)
    with app.app_context():
        # In tests a write inside a transaction begun to read only fails loudly (see web.read_only_gets).
        configure_engine(db.engine, strict_reads=app.testing)

    from . import authn  # noqa: F401  (registers the login loaders)
    from .api import bp as api_bp
    from .views import account, auth, compose, directory, health, mailsender, monitor, outbox, preferences

    for area in (auth, account, mailsender, directory, compose, outbox, preferences):
        app.register_blueprint(area.bp)
    app.register_blueprint(monitor.bp)
    from .views import metrics

    app.register_blueprint(metrics.bp)
    health.register(app, talisman)
    app.register_blueprint(api_bp)
    csrf.exempt(api_bp)  # the API checks CSRF itself, for cookie sessions only

    from . import errors, page_context, web

    web.read_only_gets(app)
    errors.register(app)
    page_context.register(app)

    from . import cli

    cli.register(app)
    return app


# Scripts, styles, images and fonts from this site only: no inline script or style, no eval,
# and no page of ours inside anyone's frame.
CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def _secure_headers(app: Flask):
    """Security headers on every answer (flask-talisman): the CSP above, nosniff, DENY framing.
    With MAILSENDER_HTTPS, also Secure cookies, HSTS and a redirect from plain HTTP."""
    from flask_talisman import DENY, Talisman

    https = bool(app.config["MAILSENDER_HTTPS"])
    talisman = Talisman(
        app,
        content_security_policy=CONTENT_SECURITY_POLICY,
        frame_options=DENY,
        force_https=https,
        strict_transport_security=https,
        # The site's own host only: other hosts of its domain may not all speak HTTPS.
        strict_transport_security_include_subdomains=False,
        session_cookie_secure=https,
        session_cookie_samesite=app.config["SESSION_COOKIE_SAMESITE"],
    )
    app.config["SESSION_COOKIE_SECURE"] = https
    app.config["REMEMBER_COOKIE_SECURE"] = https
    return talisman


def _behind_proxies(app: Flask) -> None:
    """With MAILSENDER_PROXY_HOPS, the client's address, scheme and host are the ones the proxies
    forwarded: the login throttle counts clients, not the proxy, and external URLs say https."""
    hops = int(app.config["MAILSENDER_PROXY_HOPS"])
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)


def _session_key(fernet_key: str | None) -> str:
    """The session-signing key, derived from the shared secret so that every node accepts a login."""
    if not fernet_key:
        return secrets.token_hex(32)  # before `init`: sessions last as long as the process
    return hashlib.sha256(b"mailsender-session:" + fernet_key.encode("ascii")).hexdigest()
