"""HTTP connections that reach only addresses the outbound rules allow (webapp/core/outbound.py).

A name may resolve to another address at connect time than when it was checked, so the check
is made on the socket's peer, once connected, before a byte is sent. The OAuth2 token requests
and the monitor's webhook both go through it; requests and urllib3 do the rest.
"""
from __future__ import annotations

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from webapp.core import outbound


class _PeerChecked:
    """Checks the address a connection actually reached before anything is sent on it."""

    def _new_conn(self):
        sock = super()._new_conn()
        try:
            outbound.check_peer(self.host, sock.getpeername())
        except outbound.OutboundRefused:
            sock.close()
            raise
        return sock


class _CheckedHTTPConnection(_PeerChecked, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_PeerChecked, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class PeerCheckedAdapter(HTTPAdapter):
    """A transport adapter whose every connection has its peer checked (mount it for http and https)."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}
