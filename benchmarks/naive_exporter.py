"""The baseline: the exporter a user would write by hand in an afternoon.

prometheus-client `Gauge`s set in a loop from `json.loads` of the whole body, served by
`start_http_server`. It serves the same series as magnet-exporter (the same metric names and
labels, and from the first poll on the same zero series for the documented values), so that
the scrape benchmark compares two servers of the same series.

Run: `python -m benchmarks.naive_exporter --api-url URL --port PORT` (key in MAGNET_API_KEY).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import Counter, Gauge, start_http_server

FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "status": lambda session: session.get("status"),
    "pr_status": lambda session: (session.get("metadata") or {}).get("prStatus"),
    "model": lambda session: session.get("model"),
    "repository": lambda session: (session.get("metadata") or {}).get("repository"),
    "author": lambda session: (session.get("author") or {}).get("id"),
}
MISSING = {"pr_status": "none", "repository": "none"}
DOCUMENTED = {
    "status": ("active", "completed", "failed"),
    "pr_status": ("none", "open", "draft", "merged", "closed"),
}
"""Values from the API documentation: each combination gets a series, at 0 if no session has it."""
STATS = {
    "mergesPastWeek": Gauge("magnet_merges_past_week", "Merges.", ["organization"]),
    "authorsPastWeek": Gauge("magnet_authors_past_week", "Authors.", ["organization"]),
    "humansPastWeek": Gauge("magnet_humans_past_week", "Humans.", ["organization"]),
    "humansPromptingNow": Gauge("magnet_humans_prompting", "Prompting.", ["organization"]),
}
UP = Gauge("magnet_up", "Last poll succeeded.", ["organization"])
POLLS = Counter("naive_polls", "Polls.")


def poll(
    http: httpx.Client, url: str, organization: str, labels: list[str], gauges: list[Gauge]
) -> None:
    """Fetch every session and set the gauges."""
    document = http.get(url, headers={"x-api-key": os.environ.get("MAGNET_API_KEY", "")}).json()
    sessions: collections.Counter[tuple[str, ...]] = collections.Counter()
    messages: collections.Counter[tuple[str, ...]] = collections.Counter()
    for session in document["sessions"]:
        key = tuple(FIELDS[name](session) or MISSING.get(name, "unknown") for name in labels)
        sessions[key] += 1
        messages[key] += session.get("messageCount") or 0
    sessions_gauge, messages_gauge = gauges
    documented = (DOCUMENTED.get(name) or (MISSING.get(name, "unknown"),) for name in labels)
    for key in itertools.product(*documented):
        sessions_gauge.labels(organization, *key)  # a new child starts at 0
        messages_gauge.labels(organization, *key)
    for key, count in sessions.items():
        sessions_gauge.labels(organization, *key).set(count)
        messages_gauge.labels(organization, *key).set(messages[key])
    for field, gauge in STATS.items():
        gauge.labels(organization).set(document["stats"][field])
    UP.labels(organization).set(1)


def main() -> None:
    """Serve on --port and poll every --interval seconds, forever."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--organization", default="acme")
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--session-labels", default="status,pr_status,model")
    args = parser.parse_args()
    labels = args.session_labels.split(",")
    gauges = [
        Gauge(name, "Sessions by labels.", ["organization", *labels])
        for name in ("magnet_sessions", "magnet_session_messages")
    ]
    start_http_server(args.port, addr="127.0.0.1")
    url = args.api_url.rstrip("/") + "/api/sessions"
    with httpx.Client(timeout=30) as http:
        while True:
            started = time.monotonic()
            try:
                poll(http, url, args.organization, labels, gauges)
            except (httpx.HTTPError, ValueError, KeyError):
                UP.labels(args.organization).set(0)
            POLLS.inc()
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
