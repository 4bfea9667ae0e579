"""Egress as companies run it: HTTPS to the API through a forward proxy, trusting a private CA."""

from __future__ import annotations

import select
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from conftest import (
    FIXED_NOW,
    SECRET_KEY,
    FakeClock,
    background_process,
    exporter_env,
    free_port,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter.demo import DemoApiServer, SimulatedMagnet

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
"""Proxy settings of the machine running the tests: the tests set their own."""


class ConnectProxy:
    """A forward proxy that tunnels `CONNECT` requests and records every byte it relays.

    It sees what any egress proxy sees: the request heads it is sent and the bytes of each
    tunnel, which for HTTPS are TLS records only.
    """

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.relayed = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="proxy-accept")

    def __enter__(self) -> ConnectProxy:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()  # accept() fails and the loop ends
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), name="proxy-tunnel")
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            with self._lock:
                self.heads.append(head)
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if method != b"CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = target.decode().rpartition(":")
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    self._relay(rest, upstream)
                self._tunnel(client, upstream)

    def _relay(self, data: bytes, to: socket.socket) -> None:
        with self._lock:
            self.relayed += data
        to.sendall(data)

    def _tunnel(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        while True:
            readable, _, _ = select.select(list(peers), [], [], 10)
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self._relay(data, peers[sock])


@pytest.fixture
def authority(tmp_path: Path) -> trustme.CA:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "private-ca.pem"))
    return ca


@pytest.fixture
def https_api(authority: trustme.CA) -> Iterator[DemoApiServer]:
    """The simulated API over HTTPS, with a certificate of the private CA for `localhost`."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(tls)
    server = DemoApiServer(SimulatedMagnet(seed=7, clock=FakeClock(FIXED_NOW)), tls=tls).start()
    try:
        yield server
    finally:
        server.stop()


def egress_env(api: DemoApiServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in exporter_env().items() if k.lower() not in PROXY_VARIABLES}
    env.pop("SSL_CERT_FILE", None)
    env.pop("SSL_CERT_DIR", None)
    port = api.url.rsplit(":", 1)[1]
    env.update(MAGNET_API_URL=f"https://localhost:{port}", MAGNET_API_KEY=SECRET_KEY, **extra)
    return env


def check(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "magnet_exporter", "check"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_polls_over_https_through_a_proxy_and_the_key_never_reaches_it(
    tmp_path: Path, https_api: DemoApiServer
) -> None:
    with ConnectProxy() as proxy:
        env = egress_env(
            https_api, HTTPS_PROXY=proxy.url, SSL_CERT_FILE=str(tmp_path / "private-ca.pem")
        )
        result = check(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "magnet_sessions{" in result.stdout
    assert https_api.last_headers["x-api-key"] == SECRET_KEY  # the API got the key
    (head,) = proxy.heads
    port = https_api.url.rsplit(":", 1)[1]
    assert head.startswith(f"CONNECT localhost:{port} HTTP/1.1".encode())
    assert len(proxy.relayed) > 1000  # the whole exchange went through the tunnel
    # What the proxy saw: a CONNECT head and TLS records, never the key in clear text.
    assert SECRET_KEY.encode() not in head + proxy.relayed
    assert b"x-api-key" not in proxy.relayed.lower()
    assert SECRET_KEY not in result.stderr + result.stdout


def test_no_proxy_goes_direct(tmp_path: Path, https_api: DemoApiServer) -> None:
    with ConnectProxy() as proxy:
        env = egress_env(
            https_api,
            HTTPS_PROXY=proxy.url,
            NO_PROXY="localhost",
            SSL_CERT_FILE=str(tmp_path / "private-ca.pem"),
        )
        result = check(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert proxy.heads == []


def test_an_api_certificate_of_an_untrusted_ca_fails_the_poll(
    tmp_path: Path, https_api: DemoApiServer
) -> None:
    with ConnectProxy() as proxy:
        result = check(egress_env(https_api, HTTPS_PROXY=proxy.url), tmp_path)
    assert result.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert https_api.requests == 0
    assert SECRET_KEY.encode() not in b"".join(proxy.heads) + proxy.relayed


def test_poll_workers_go_through_the_proxy_too(tmp_path: Path, https_api: DemoApiServer) -> None:
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "magnet_exporter", f"--listen-address={address}"]
    command.append("--worker-threshold-bytes=0")  # every poll in a worker process
    with ConnectProxy() as proxy:
        env = egress_env(
            https_api, HTTPS_PROXY=proxy.url, SSL_CERT_FILE=str(tmp_path / "private-ca.pem")
        )
        log = tmp_path / "exporter.log"
        with background_process(command, log, f"http://{address}/-/ready", env):

            def up() -> bool:
                text = httpx.get(f"http://{address}/metrics", timeout=5).text
                families = {f.name: f for f in text_string_to_metric_families(text)}
                return [s.value for s in families["magnet_up"].samples] == [1.0]

            wait_until(up, "a successful poll through the proxy")
        assert proxy.heads
        assert all(head.startswith(b"CONNECT localhost:") for head in proxy.heads)
        assert SECRET_KEY.encode() not in b"".join(proxy.heads) + proxy.relayed
    assert SECRET_KEY not in log.read_text()
