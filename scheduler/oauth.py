"""OAuth2 access tokens for XOAUTH2.

A placeholder until the Test/OAuth2 issue (6) writes the grants: the engine already asks
here for a token, and gets a clear reason why there is none yet.
"""
from __future__ import annotations


class OAuthTokenUnavailable(Exception):
    """No access token can be had; the message says why (shown as the delivery's reason)."""


def access_token(partition_id: int) -> str:
    """An access token for the partition's SMTP user. Needs an app context; may block (HTTP)."""
    raise OAuthTokenUnavailable("OAuth2 tokens not available yet")
