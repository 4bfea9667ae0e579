"""End to end: the demo exporter, a real Prometheus, the dashboard's queries and the rules.

The Debian `prometheus` binary runs on loopback with a temporary data directory, a 1 s
scrape and evaluation interval, the job `magnet` and `prometheus/alerts.yml`. Every
dashboard query, with its variables filled in as Grafana would, must return a series with
a finite value (except the queries that are empty by nature, named with the reason in
test_dashboard.EMPTY_BY_NATURE: those must return data without their `offset 1w`), every
alert rule must be evaluated with health `ok`, and the stuck-session rule must find the
demo's stuck sessions in the series as Prometheus ingested them.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import (
    background_process,
    demo_exporter_command,
    exporter_env,
    free_port,
    prometheus_command,
)
from test_dashboard import EMPTY_BY_NATURE, Query, dashboard_queries, load_dashboard

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"

# Grafana sets $__rate_interval to max($__interval + scrape interval, 4 x scrape interval).
# With a 1 s scrape interval and the demo's 5 s polls, 20 s spans several polls, as the
# default of 60 s over a 15 s scrape interval does in production.
RATE_INTERVAL = "20s"
DEADLINE_SECONDS = 40
# Prometheus 2 hands discovered targets to the scrape manager every 5 s, so its first scrape
# comes about 5 s after it starts. The poll-duration quantiles need a poll between two
# scrapes, and the demo polls every 5 s: the exporter starts this long after Prometheus is
# ready, so that its first poll is scraped and its second one follows soon after.
EXPORTER_START_DELAY_SECONDS = 1.5
# Alerts about the exporter's health: none may be pending or firing against the demo.
HEALTH_ALERTS = {
    "MagnetExporterDown",
    "MagnetExporterAbsent",
    "MagnetApiDown",
    "MagnetApiUnauthorized",
    "MagnetDataStale",
}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (Debian package prometheus; .ci/run installs it)",
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """A Prometheus server scraping a demo exporter as job `magnet`; yields its URL."""
    exporter_address = f"127.0.0.1:{free_port()}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "magnet", "static_configs": [{"targets": [exporter_address]}]}
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    base_url = f"http://127.0.0.1:{free_port()}"
    binary = shutil.which("prometheus")
    assert binary is not None
    command = prometheus_command(
        binary, config_file, tmp_path / "data", base_url.removeprefix("http://")
    )
    log_path = tmp_path / "prometheus.log"
    exporter = demo_exporter_command(exporter_address)
    with background_process(command, log_path, f"{base_url}/-/ready") as process:
        time.sleep(EXPORTER_START_DELAY_SECONDS)
        with background_process(
            exporter,
            tmp_path / "exporter.log",
            f"http://{exporter_address}/-/ready",
            env=exporter_env(),
        ):
            yield base_url
    if process.returncode not in (0, -15):
        print(log_path.read_text()[-4000:])  # shown by pytest on failure


def api(client: httpx.Client, path: str, **params: Any) -> Any:
    response = client.get(f"/api/v1/{path}", params=params)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable as Grafana formats it into a Prometheus regex matcher."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def fill_in(expr: str, organization: str) -> str:
    return expr.replace("$organization", organization).replace("$__rate_interval", RATE_INTERVAL)


def without_week_offset(expr: str) -> str:
    return expr.replace(" offset 1w", "")


def series_count(client: httpx.Client, expr: str) -> int:
    return len(api(client, "query", query=expr)["result"])


def has_finite_value(client: httpx.Client, expr: str) -> bool:
    """At least one series with a value that Grafana can draw (not NaN, not infinite)."""
    return any(
        math.isfinite(float(series["value"][1]))
        for series in api(client, "query", query=expr)["result"]
    )


def rules_state(client: httpx.Client) -> list[dict[str, Any]]:
    groups = api(client, "rules")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def stuck_rule_expr() -> str:
    (rule,) = [
        rule
        for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
        if rule["alert"] == "MagnetSessionStuck"
    ]
    expr: str = rule["expr"]
    return expr


@pytest.fixture
def client(prometheus: str) -> Iterator[httpx.Client]:
    """One HTTP client for Prometheus' API (a new client per request costs ~50 ms)."""
    with httpx.Client(base_url=prometheus, timeout=5) as http:
        yield http


def test_dashboard_queries_return_data_and_rules_are_healthy(client: httpx.Client) -> None:
    started = time.monotonic()
    deadline = started + DEADLINE_SECONDS

    # The organization variable, as Grafana fills it: label_values(magnet_up, organization).
    organizations: list[str] = []
    while not organizations and time.monotonic() < deadline:
        organizations = api(client, "label/organization/values", **{"match[]": "magnet_up"})
        if not organizations:
            time.sleep(0.2)
    assert organizations, "label_values(magnet_up, organization) stayed empty"
    variable = next(
        v for v in load_dashboard()["templating"]["list"] if v["name"] == "organization"
    )
    selections = {
        "one organization": grafana_regex(organizations[:1]),
        "every organization": grafana_regex(organizations),
        "All": variable["allValue"],
    }

    queries = dashboard_queries(load_dashboard())
    pending: dict[tuple[Query, str], str] = {}
    for query in queries:
        for selection, value in selections.items():
            expr = fill_in(query.expr, value)
            if (query.panel, query.ref_id) in EMPTY_BY_NATURE:
                # Empty by nature; without its offset it must find data, so that a wrong
                # metric or label there still fails.
                expr = without_week_offset(expr)
            pending[(query, selection)] = expr
    rules: list[dict[str, Any]] = []
    stuck_expr = stuck_rule_expr()
    stuck: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pending = {key: expr for key, expr in pending.items() if not has_finite_value(client, expr)}
        stuck = api(client, "query", query=stuck_expr)["result"]
        rules = rules_state(client)
        evaluated = rules and all(rule["health"] == "ok" for rule in rules)
        # The rule itself has seen them too: pending, as its `for` is 15 minutes.
        stuck_seen = any(r["name"] == "MagnetSessionStuck" and r["alerts"] for r in rules)
        if not pending and evaluated and stuck and stuck_seen:
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - started

    assert not pending, f"no series with a finite value after {elapsed:.1f}s for: " + "; ".join(
        f"{query.panel} [{query.ref_id}] with {selection}: {expr}"
        for (query, selection), expr in pending.items()
    )

    # The week-ago comparisons really are empty in a fresh Prometheus (that is the reason
    # they are exempt), and they are valid PromQL.
    for panel, ref_id in EMPTY_BY_NATURE:
        (query,) = [q for q in queries if (q.panel, q.ref_id) == (panel, ref_id)]
        assert series_count(client, fill_in(query.expr, selections["All"])) == 0

    expected_rules = {
        rule["alert"] for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    }
    assert {rule["name"] for rule in rules} == expected_rules
    unhealthy = {
        rule["name"]: rule.get("lastError", rule["health"])
        for rule in rules
        if rule["health"] != "ok"
    }
    assert not unhealthy, unhealthy
    for rule in rules:
        if rule["name"] in HEALTH_ALERTS:
            assert rule["state"] == "inactive", (
                f"{rule['name']} is {rule['state']} against the demo"
            )

    # The demo has active sessions idle for more than an hour: the rule's bucket le="3600.0"
    # is the one Prometheus stored, and the rule counts them.
    assert stuck, "the MagnetSessionStuck expression found no stuck session of the demo"
    assert {series["metric"]["organization"] for series in stuck} <= set(organizations)
    assert all(float(series["value"][1]) >= 1 for series in stuck), stuck
    (stuck_rule,) = [rule for rule in rules if rule["name"] == "MagnetSessionStuck"]
    assert stuck_rule["state"] == "pending", stuck_rule
    print(f"every dashboard query had data and every rule was ok after {elapsed:.1f}s")
