"""The HTTP endpoints of a running exporter."""

from __future__ import annotations

import gzip
import html
import http.client
import socket

import httpx
from conftest import RunningExporter
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter import __version__
from magnet_exporter.demo import DemoApiServer, Fault


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
    assert (options.status_code, options.headers["allow"]) == (200, "OPTIONS,GET")
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


def test_a_request_with_a_body_or_in_http_1_0_closes_its_connection(
    exporter: RunningExporter,
) -> None:
    for request in (
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /",
        b"GET /-/healthy HTTP/1.0\r\n\r\n",
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5) as raw:
            raw.sendall(request)
            received = b""
            while chunk := raw.recv(65536):  # ends only when the server closes
                received += chunk
        assert received.count(b"HTTP/1.1 ") == 1, received  # the body was not taken as a request
