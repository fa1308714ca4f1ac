"""Keep-alive HTTP/1.1 connections to the API server for one-shot calls (`KubeClient.request`).

`http.client` connections over the TLS settings of a `kubernetes.client.Configuration` (CA, client certificate,
`verify_ssl`, `assert_hostname`, `tls_server_name`), reused from a small pool. The generated client's path through
urllib3 (parameter sanitising, its retry and timeout objects, the pool's queue, the response wrapper) cost 0.40 ms
of client CPU per GET of a small object on the dev box against 0.25 ms on this path (a POST 0.55 against 0.31);
a gpupool pod's bind and each of the controller's writes are one such call (docs/e2e.md "Issue 16: the API
calls' transport"). Watches stay on urllib3 (the `kubernetes` package's stream reader). A configuration with a
proxy or an unknown scheme is not served here (`Transport.usable`): its calls keep the generated client's path.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

#: retried once on a new connection when a reused one fails: these methods change nothing on the server
SAFE_METHODS = frozenset({"GET", "HEAD"})


class Transport:
    """At most `size` idle connections kept; any number in use at once (one per calling thread)."""

    def __init__(self, configuration: Any, size: int) -> None:
        parts = urlsplit(configuration.host)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")  # a server URL with a path (an API proxy) keeps it
        self.context = _ssl_context(configuration) if self.https else None
        self.server_hostname = getattr(configuration, "tls_server_name", None) or None
        self.size = max(1, size)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @staticmethod
    def usable(configuration: Any) -> bool:
        host = getattr(configuration, "host", None)
        if not isinstance(host, str) or getattr(configuration, "proxy", None):
            return False
        return urlsplit(host).scheme in ("http", "https")

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> tuple[int, bytes]:
        """(status, body) of one call; OSError and http.client errors propagate (no answer)."""
        for attempt in (0, 1):
            conn, reused = self._take(timeout)
            try:
                conn.request(method, self.prefix + target, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                if reused and attempt == 0 and method in SAFE_METHODS:
                    continue  # the server closed it while idle: a read is asked again on a new one
                raise
            if response.will_close:
                conn.close()
            else:
                self._give(conn)
            return response.status, data
        raise AssertionError("unreachable")

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new(timeout), False
            if _dropped(conn):
                conn.close()
                continue
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        if not self.https:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        if self.server_hostname and self.context is not None:  # the certificate names another host than dialled
            conn.connect = _connect_as(conn, self.context, self.server_hostname)  # type: ignore[method-assign]
        return conn


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle connection the server closed (or wrote to: nothing is expected) is not reused."""
    sock = conn.sock
    if sock is None:
        return True
    poller = select.poll()  # not select(): a descriptor above 1023 would read as dropped, a handshake per call
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    """The TLS settings the `kubernetes` client's urllib3 pool would use for this configuration."""
    if not getattr(configuration, "verify_ssl", True):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=getattr(configuration, "ssl_ca_cert", None) or None)
        if getattr(configuration, "assert_hostname", None) is False:
            context.check_hostname = False
    cert = getattr(configuration, "cert_file", None)
    if cert:
        context.load_cert_chain(cert, getattr(configuration, "key_file", None) or None)
    return context


def _connect_as(conn: http.client.HTTPSConnection, context: ssl.SSLContext, server_hostname: str) -> Any:
    """`conn.connect` verifying the server's certificate for `server_hostname` (kubeconfig `tls-server-name`)."""

    def connect() -> None:
        raw = socket.create_connection((conn.host, conn.port), conn.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = context.wrap_socket(raw, server_hostname=server_hostname)

    return connect
