"""A real OAuth2 token endpoint for tests: http.server on 127.0.0.1 in a thread.

No mock: it parses what really arrived over HTTP and answers as a token server does.

    with TokenServer(client_secret="s3cret") as server:
        server.url                      # http://127.0.0.1:PORT/token
        server.requests                 # [{"grant_type": ..., ...}] as posted (form fields)
        server.codes["code-1"] = challenge   # an authorization code and its PKCE S256 challenge
        server.refresh_tokens["r-1"] = "r-2"  # a refresh token and the one it rotates to (None: no rotation)

Options: access_token (issued each time), expires_in, refusal=(status, {"error", ...}) to refuse
every request, redirect_to="http://..." to answer 302 instead, delay=seconds before each answer.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


class TokenServer:
    def __init__(self, *, client_id: str = "client-1", client_secret: str | None = "client-secret-1",
                 access_token: str = "access-token-1", expires_in: int = 3600,
                 refusal: tuple[int, dict] | None = None, redirect_to: str | None = None, delay: float = 0.0):
        self.client_id, self.client_secret = client_id, client_secret
        self.access_token, self.expires_in = access_token, expires_in
        self.refusal, self.redirect_to, self.delay = refusal, redirect_to, delay
        self.requests: list[dict] = []
        self.codes: dict[str, str] = {}  # code → the S256 challenge it was issued for
        self.refresh_tokens: dict[str, str | None] = {}  # known refresh token → its rotation (or None)
        self.issued_refresh_token = "refresh-token-1"  # what an authorization code grant issues
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "TokenServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def grants(self) -> list[str]:
        return [r.get("grant_type", "") for r in self.requests]

    # --- what the endpoint answers ---------------------------------------------------------

    def answer(self, form: dict) -> tuple[int, dict]:
        if self.refusal:
            return self.refusal
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            if not form.get("assertion"):
                return 400, {"error": "invalid_request", "error_description": "no assertion"}
            return 200, self._issued()  # the test verifies the assertion itself
        if form.get("client_id") != self.client_id or (self.client_secret and form.get("client_secret") != self.client_secret):
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed."}
        if grant == "client_credentials":
            return 200, self._issued()
        if grant == "refresh_token":
            old = form.get("refresh_token")
            if old not in self.refresh_tokens:
                return 400, {"error": "invalid_grant", "error_description": "The refresh token is not valid."}
            new = self.refresh_tokens[old]
            if new:
                del self.refresh_tokens[old]
                self.refresh_tokens[new] = None
                return 200, {**self._issued(), "refresh_token": new}
            return 200, self._issued()
        if grant == "authorization_code":
            challenge = self.codes.pop(form.get("code", ""), None)
            if challenge is None:
                return 400, {"error": "invalid_grant", "error_description": "Unknown or used code."}
            verifier = form.get("code_verifier", "")
            if s256(verifier) != challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed."}
            self.refresh_tokens[self.issued_refresh_token] = None
            return 200, {**self._issued(), "refresh_token": self.issued_refresh_token}
        return 400, {"error": "unsupported_grant_type", "error_description": f"{grant} is not supported"}

    def _issued(self) -> dict:
        return {"access_token": self.access_token, "token_type": "Bearer", "expires_in": self.expires_in}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode("utf-8")))
                form["_authorization_header"] = self.headers.get("Authorization")
                server.requests.append(form)
                if server.delay:
                    time.sleep(server.delay)  # a slow token server: the client's timeout is under test
                if server.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body = server.answer(form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")
