"""`kubeio.transport` under `KubeClient.request`: keep-alive, the answers and errors callers rely on, what is asked
again after a dead connection and what never is, TLS as the configuration says, the query string.

A real HTTP server on loopback (plain and TLS, certificates from e2e/pki.py) that records what it was sent."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes import client

from e2e import pki
from kubeio.client import ApiError, KubeClient


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[dict[str, Any]] = []
        self.connections = 0
        #: what to do with the next requests: "ok", "close" (answer, then close without saying so),
        #: "drop" (read the request, close without an answer)
        self.mode = "ok"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        self.server.seen.append({"method": self.command, "path": parts.path, "query": parse_qsl(parts.query),
                                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})  # fmt: skip
        mode = self.server.mode
        if mode == "drop":
            self.close_connection = True
            return
        answer: dict[str, Any]
        if parts.path == "/missing":
            status, answer = 404, {"kind": "Status", "reason": "NotFound", "message": "pods \"x\" not found"}
        else:
            status, answer = 200, {"kind": "Thing", "n": len(self.server.seen)}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if mode == "close":
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = _serve


@pytest.fixture
def server() -> Iterator[Recorder]:
    srv = Recorder()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def kube(url: str, **settings: Any) -> KubeClient:
    configuration = client.Configuration()
    configuration.host = url
    for name, value in settings.items():
        setattr(configuration, name, value)
    return KubeClient(client.ApiClient(configuration), timeout=5)


def url(srv: Recorder, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{srv.server_address[1]}"


def test_calls_share_one_connection_and_carry_json_auth_and_query(server: Recorder) -> None:
    k = kube(url(server), api_key={"authorization": "token-1"}, api_key_prefix={"authorization": "Bearer"})
    assert k.transport is not None
    for i in range(5):
        assert k.request("GET", "/api/v1/pods", query={"watch": False, "labelSelector": "a in (x, y),b=c"}) == {
            "kind": "Thing", "n": i + 1}  # fmt: skip
    answer = k.request("POST", "/api/v1/namespaces/ns/pods/p/binding", body={"a": "é"}, content_type="application/json")
    assert answer["n"] == 6
    assert server.connections == 1
    first, post = server.seen[0], server.seen[-1]
    assert first["query"] == [("watch", "false"), ("labelSelector", "a in (x, y),b=c")]
    assert first["headers"]["authorization"] == "Bearer token-1"
    assert first["headers"]["accept"] == "application/json"
    assert json.loads(post["body"]) == {"a": "é"} and post["headers"]["content-type"] == "application/json"


def test_a_refreshed_token_is_sent_on_the_next_call(server: Recorder) -> None:
    tokens = iter(["t1", "t2"])
    k = kube(url(server), api_key={"authorization": "t0"}, api_key_prefix={"authorization": "Bearer"})
    k.api_client.configuration.refresh_api_key_hook = lambda c: c.api_key.update(authorization=next(tokens))
    k.request("GET", "/a")
    k.request("GET", "/b")
    assert [s["headers"]["authorization"] for s in server.seen] == ["Bearer t1", "Bearer t2"]


def test_an_error_answer_raises_with_the_status_and_the_reason(server: Recorder) -> None:
    k = kube(url(server))
    with pytest.raises(ApiError) as caught:
        k.request("GET", "/missing")
    assert caught.value.status == 404 and caught.value.message == 'NotFound: pods "x" not found'
    assert k.request("GET", "/after")["n"] == 2  # the connection stays usable after an error answer
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_not_reused(server: Recorder) -> None:
    k = kube(url(server))
    server.mode = "close"
    for i in range(3):
        k.request("POST", f"/write/{i}", body={"i": i}, content_type="application/json")
        time.sleep(0.1)  # the server's FIN arrives before the next call
    assert [s["path"] for s in server.seen] == ["/write/0", "/write/1", "/write/2"]
    assert server.connections == 3


def test_a_write_whose_connection_dies_is_not_sent_again(server: Recorder) -> None:
    """No answer to a POST: the caller is told (status 0: unknown outcome, the extender reads the pod back); sending
    it again could apply it twice."""
    k = kube(url(server))
    k.request("GET", "/warm")
    server.mode = "drop"
    with pytest.raises(ApiError) as caught:
        k.request("POST", "/api/v1/namespaces/ns/pods/p/binding", body={}, content_type="application/json")
    assert caught.value.status == 0
    assert [s["path"] for s in server.seen].count("/api/v1/namespaces/ns/pods/p/binding") == 1


def test_a_read_whose_reused_connection_dies_is_asked_once_more(server: Recorder) -> None:
    k = kube(url(server))
    k.request("GET", "/warm")
    server.mode = "drop"
    with pytest.raises(ApiError):
        k.request("GET", "/read")  # dropped on the reused connection, then on the new one: given up
    assert [s["path"] for s in server.seen] == ["/warm", "/read", "/read"]


def test_nothing_listening_is_an_error_without_a_status() -> None:
    srv = Recorder()
    port = srv.server_address[1]
    srv.server_close()
    with pytest.raises(ApiError) as caught:
        kube(f"http://127.0.0.1:{port}").request("GET", "/x")
    assert caught.value.status == 0 and "ConnectionRefused" in caught.value.message


def test_a_proxy_keeps_the_generated_clients_path() -> None:
    assert kube("http://127.0.0.1:1", proxy="http://proxy:3128").transport is None


@pytest.fixture
def tls(server: Recorder, tmp_path: Path) -> Path:
    pki.write_ca(tmp_path)
    crt, key = pki.issue(tmp_path, "serving", "kubernetes", server=True, sans=("kubernetes.internal",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(crt), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return tmp_path


def test_tls_verifies_the_server_as_the_configuration_says(server: Recorder, tls: Path) -> None:
    https = url(server, "https")
    ca = str(tls / "ca.crt")
    with pytest.raises(ApiError) as caught:  # the certificate names kubernetes.internal, not 127.0.0.1
        kube(https, ssl_ca_cert=ca).request("GET", "/x")
    assert caught.value.status == 0 and "certificate" in caught.value.message.lower()
    assert kube(https, ssl_ca_cert=ca, tls_server_name="kubernetes.internal").request("GET", "/x")["kind"] == "Thing"
    assert kube(https, ssl_ca_cert=ca, assert_hostname=False).request("GET", "/y")["kind"] == "Thing"
    assert kube(https, verify_ssl=False).request("GET", "/z")["kind"] == "Thing"
    with pytest.raises(ApiError):  # another CA: refused
        other = tls / "other"
        other.mkdir()
        pki.write_ca(other)
        kube(https, ssl_ca_cert=str(other / "ca.crt"), tls_server_name="kubernetes.internal").request("GET", "/x")


def test_threads_share_the_pool_without_errors(server: Recorder) -> None:
    k = kube(url(server))
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for _ in range(30):
                k.request("GET", "/t")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(server.seen) == 360
    assert k.transport is not None and len(k.transport._idle) <= k.transport.size


def test_a_connection_on_a_descriptor_above_1023_is_reused(server: Recorder) -> None:
    """select() cannot watch such a descriptor; the liveness check must not take it for dead (a new connection,
    and a TLS handshake, per call in a process with many sockets)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit ({hard}) does not reach 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        k = kube(url(server))
        for _ in range(3):
            k.request("GET", "/fd")
        assert k.transport is not None and k.transport._idle[0].sock.fileno() > 1023
        assert server.connections == 1
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
