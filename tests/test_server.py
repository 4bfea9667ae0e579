"""The HTTP endpoints of a running exporter."""

from __future__ import annotations

import base64
import contextlib
import gzip
import html
import http.client
import selectors
import socket
import time

import bcrypt
import httpx
import pytest
from conftest import RunningExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter import __version__
from magnet_exporter import server as server_module
from magnet_exporter.demo import DemoApiServer, Fault
from magnet_exporter.server import ExporterApp, HttpServer
from magnet_exporter.webconfig import WebConfig


def test_healthy_while_running(exporter: RunningExporter) -> None:
    assert exporter.get("/-/healthy").status_code == 200


def test_ready_only_after_a_successful_poll(
    exporter: RunningExporter, simulator: DemoApiServer
) -> None:
    assert exporter.get("/-/ready").status_code == 503
    simulator.fault = Fault(status=500)
    exporter.poll()
    assert exporter.get("/-/ready").status_code == 503
    simulator.fault = None
    exporter.poll()
    assert exporter.get("/-/ready").status_code == 200


def test_landing_page(exporter: RunningExporter, simulator: DemoApiServer) -> None:
    page = exporter.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "not polled yet" in page.text
    simulator.fault = Fault(status=401)
    exporter.poll()
    page = exporter.get("/")
    text = html.unescape(page.text)
    assert "Magnet exporter" in text
    assert __version__ in text
    assert "default" in text  # the organization
    assert "unauthorized (401 Unauthorized: check MAGNET_API_KEY)" in text
    assert "href='/metrics'" in page.text


def test_unknown_paths_are_404(exporter: RunningExporter) -> None:
    for path in ("/metric", "/api/sessions", "/-/reload", "/favicon.ico"):
        assert exporter.get(path).status_code == 404, path


def test_metrics_content_negotiation_and_gzip(exporter: RunningExporter) -> None:
    exporter.poll()
    plain = exporter.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    raw = httpx.get(exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
    assert raw.headers["content-encoding"] == "gzip"
    assert "magnet_up{" in raw.text  # httpx has undone the gzip
    openmetrics = httpx.get(
        exporter.url + "/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def data_samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """The samples of the data families (those that do not change from scrape to scrape)."""
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        if family.name.startswith(("magnet_sessions", "magnet_session_", "magnet_merges"))
        for s in family.samples
    }


def test_metrics_gzip_decodes_to_the_identity_text(exporter: RunningExporter) -> None:
    exporter.poll()
    identity = httpx.get(exporter.url + "/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in identity.headers
    expected = data_samples(identity.text)
    assert expected
    gzip_accepted = {"Accept-Encoding": "gzip"}
    for _ in range(2):  # rendered, then from the cache
        decoded = httpx.get(exporter.url + "/metrics", headers=gzip_accepted, timeout=5)
        assert decoded.headers["content-encoding"] == "gzip"
        assert data_samples(decoded.text) == expected
        with httpx.stream("GET", exporter.url + "/metrics", headers=gzip_accepted) as raw:
            body = b"".join(raw.iter_raw())
        assert data_samples(gzip.decompress(body).decode()) == expected


def test_metrics_answers_options_and_refuses_other_methods(exporter: RunningExporter) -> None:
    options = httpx.options(exporter.url + "/metrics", timeout=5)
    assert (options.status_code, options.headers["allow"]) == (200, "OPTIONS,GET,HEAD")
    post = httpx.post(exporter.url + "/metrics", timeout=5)
    assert post.status_code == 405
    assert post.text == "# HTTP 405 Method Not Allowed: POST; use OPTIONS or GET\n"


def test_metrics_name_filter(exporter: RunningExporter) -> None:
    exporter.poll()
    response = httpx.get(
        exporter.url + "/metrics",
        params=[("name[]", "magnet_sessions"), ("name[]", "process_cpu_seconds_total")],
        timeout=5,
    )
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert names == {"magnet_sessions", "process_cpu_seconds"}


def open_connection(exporter: RunningExporter) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", exporter.server.port, timeout=5)


def test_scrapers_keep_their_connection_between_requests(exporter: RunningExporter) -> None:
    exporter.poll()
    connection = open_connection(exporter)
    try:
        answers = []
        sockets = set()
        for path in ("/metrics", "/-/healthy", "/no-such-page", "/metrics"):
            connection.request("GET", path, headers={"Accept-Encoding": "gzip"})
            response = connection.getresponse()
            answers.append((response.status, response.version, len(response.read())))
            sockets.add(id(connection.sock))  # http.client reconnects if the server closed
        assert [status for status, _, _ in answers] == [200, 200, 404, 200]
        assert {version for _, version, _ in answers} == {11}
        assert len(sockets) == 1
    finally:
        connection.close()


def test_http_1_0_and_connection_close_close_the_connection(exporter: RunningExporter) -> None:
    for request in (
        b"GET /-/healthy HTTP/1.0\r\n\r\n",
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5) as raw:
            raw.sendall(request)
            received = b""
            while chunk := raw.recv(65536):  # ends only when the server closes
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 "), received
        assert b"\r\nConnection: close\r\n" in received


def read_to_end(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 100 + b"\r\n", 431),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/one\r\nHost: x\r\n\r\n", 400),
        (b"HELLO\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    ],
    ids=[
        "long line",
        "long header",
        "many headers",
        "HTTP/2",
        "bad version",
        "no version",
        "bad header",
    ],
)
def test_malformed_requests_are_refused_and_their_connection_closed(
    exporter: RunningExporter, request_bytes: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5) as raw:
        raw.sendall(request_bytes)
        received = read_to_end(raw)
    assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:100]
    assert b"\r\nConnection: close\r\n" in received


def test_pipelined_requests_and_head_are_answered_in_order(exporter: RunningExporter) -> None:
    with socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5) as raw:
        raw.sendall(
            b"HEAD /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            b"\r\n"  # an empty line between requests is allowed
            b"GET /-/healthy HTTP/1.1\nHost: x\nConnection: close\n\n"  # bare line feeds too
        )
        received = read_to_end(raw)
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [answer[:3] for answer in answers] == [b"200", b"404", b"200"]
    head, _, body = answers[0].partition(b"\r\n\r\n")
    assert b"Content-Length: 9" in head
    assert body == b""  # HEAD: the length of the body, not the body
    assert answers[2].endswith(b"\r\n\r\nHealthy.\n")


def test_at_the_connection_limit_the_longest_idle_connection_makes_room() -> None:
    server = HttpServer(ExporterApp(CollectorRegistry(), lambda: {}), "127.0.0.1", 0, None, 3)
    server.start()
    address = ("127.0.0.1", server.port)
    try:
        with contextlib.ExitStack() as stack:
            first, second, third = (
                stack.enter_context(socket.create_connection(address, timeout=30)) for _ in "abc"
            )
            # The server takes connections in the order they were opened, but maybe after the
            # first is answered: an answer on the third shows the silent second was taken before.
            for answered in (third, first):  # the first is now the most recent
                answered.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
                assert answered.recv(65536).startswith(b"HTTP/1.1 200 ")
            fourth = stack.enter_context(socket.create_connection(address, timeout=30))
            fourth.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            assert fourth.recv(65536).startswith(b"HTTP/1.1 200 ")
            assert second.recv(65536) == b""  # idle the longest: closed
            for kept in (first, third, fourth):
                kept.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
                assert kept.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        server.stop()


def test_remembered_credentials_do_not_wait_for_wrong_passwords() -> None:
    password = b"correct horse battery staple"
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(10))  # tens of milliseconds a check
    config = WebConfig(basic_auth_users={"alice": hashed})
    server = HttpServer(ExporterApp(CollectorRegistry(), lambda: {}), "127.0.0.1", 0, config)
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    wrong = "Basic " + base64.b64encode(b"alice:guess").decode()
    try:
        with httpx.Client(auth=("alice", password.decode()), timeout=30) as prometheus:
            assert prometheus.get(f"{url}/metrics").status_code == 200  # checked, remembered
            with contextlib.ExitStack() as stack:
                guesses = [
                    stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
                    for _ in range(40)
                ]
                with selectors.DefaultSelector() as waiting:
                    for guess in guesses:
                        guess.sendall(
                            f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: {wrong}\r\n\r\n".encode()
                        )
                        waiting.register(guess, selectors.EVENT_READ)
                    assert waiting.select(timeout=30)  # a guess is answered: all have been read
                assert prometheus.get(f"{url}/metrics").status_code == 200
                answered = 0
                for guess in guesses:
                    guess.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        answered += guess.recv(1, socket.MSG_PEEK) != b""
                # One bcrypt check at a time: most guesses still wait, and the scrape did not.
                assert answered < len(guesses) / 2
    finally:
        server.stop()


def serve_with_deadlines(
    monkeypatch: pytest.MonkeyPatch, head_seconds: float, idle_seconds: float
) -> HttpServer:
    monkeypatch.setattr(server_module, "HEAD_TIMEOUT_SECONDS", head_seconds)
    monkeypatch.setattr(server_module, "IDLE_CONNECTION_SECONDS", idle_seconds)
    server = HttpServer(ExporterApp(CollectorRegistry(), lambda: {}), "127.0.0.1", 0)
    server.start()
    return server


HEALTHY = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"


def test_idle_connections_are_closed_after_the_idle_time(monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve_with_deadlines(monkeypatch, head_seconds=30, idle_seconds=1.5)
    address = ("127.0.0.1", server.port)
    try:
        with (
            socket.create_connection(address, timeout=10) as silent,
            socket.create_connection(address, timeout=10) as served,
        ):
            started = time.monotonic()
            served.sendall(HEALTHY)
            assert served.recv(65536).startswith(b"HTTP/1.1 200 ")
            assert silent.recv(1) == b""
            assert served.recv(1) == b""
            assert 1.5 <= time.monotonic() - started < 5
    finally:
        server.stop()


def test_a_kept_alive_connection_waits_for_its_next_request_past_the_head_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve_with_deadlines(monkeypatch, head_seconds=1, idle_seconds=30)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(HEALTHY)
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(2.5)  # past the head deadline and the sweep's step: idle, not stalled
            connection.sendall(HEALTHY)
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
            connection.sendall(HEALTHY[:10])  # a head begun and left unfinished
            started = time.monotonic()
            assert connection.recv(1) == b""
            assert time.monotonic() - started < 5
    finally:
        server.stop()


def test_no_cache_on_the_way_keeps_an_answer(exporter: RunningExporter) -> None:
    exporter.poll()
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        for encoding in ("gzip", "identity"):
            metrics = httpx.get(
                exporter.url + "/metrics",
                headers={"Accept": accept, "Accept-Encoding": encoding},
                timeout=5,
            )
            assert metrics.headers["vary"] == "Accept, Accept-Encoding"
            assert metrics.headers["cache-control"] == "no-store"
    for path in ("/-/healthy", "/-/ready"):
        assert exporter.get(path).headers["cache-control"] == "no-store", path
