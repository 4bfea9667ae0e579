"""Scrape load: keep-alive clients asking for /metrics as fast as they can, latency per request."""

from __future__ import annotations

import dataclasses
import http.client
import statistics
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

PROMETHEUS_HEADERS = {
    # What Prometheus 3 sends by default: both exporters answer in OpenMetrics, gzipped.
    "Accept": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/3.5.0",
}


@dataclasses.dataclass(frozen=True)
class Load:
    """What the clients saw: request count, failures and the latency of each success."""

    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.seconds

    def percentile(self, share: float) -> float:
        """Latency in seconds under which `share` of the requests completed."""
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[
            round(share * 100) - 1
        ]


def _client(url: str, until: float, latencies: list[float], errors: list[int]) -> None:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                connection.request("GET", parts.path, headers=PROMETHEUS_HEADERS)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors.append(1)
                connection.close()  # reopened by the next request
                continue
            if response.status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors.append(1)
    finally:
        connection.close()


def scrape_load(url: str, clients: int, seconds: float) -> Load:
    """Scrape `url` from `clients` connections for `seconds`; each waits for its last answer."""
    latencies: list[float] = []
    errors: list[int] = []
    started = time.monotonic()
    threads = [
        threading.Thread(target=_client, args=(url, started + seconds, latencies, errors))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Load(time.monotonic() - started, latencies, len(errors))


def combined(loads: Sequence[Load]) -> Load:
    """Several loads of one server taken as one, as if they had run back to back."""
    return Load(
        sum(load.seconds for load in loads),
        [latency for load in loads for latency in load.latencies],
        sum(load.errors for load in loads),
    )
