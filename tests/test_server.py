"""The HTTP endpoints of a running exporter."""

from __future__ import annotations

import html

import httpx
from conftest import RunningExporter

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
