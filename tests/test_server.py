"""The HTTP endpoints of a running exporter."""

from __future__ import annotations

import gzip
import html

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
