"""The Grafana dashboard and its provisioning: structure, query hygiene, served metric names.

The helpers here (dashboard loading, PromQL metric-name extraction, the series that the
exporter serves, sections of docs/dashboard-and-alerts.md) are shared with test_alerts.py
and test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import RunningExporter
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = REPO_ROOT / "grafana" / "magnet-exporter.json"
PROVISIONING = REPO_ROOT / "grafana" / "provisioning"
DOCS = REPO_ROOT / "docs" / "dashboard-and-alerts.md"
DOCS_URL = (
    "https://github.com/magnet-exporter/magnet-exporter/blob/main/docs/dashboard-and-alerts.md"
)

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
ORGANIZATION_MATCHER = 'organization=~"$organization"'

# Queries that have no data in a short run by nature, keyed by (panel title, refId).
WEEK_AGO_REASON = (
    "compares with the value one week earlier (offset 1w): a run of a few seconds has no "
    "week of history"
)
EMPTY_BY_NATURE: dict[tuple[str, str], str] = {
    ("Merges in the past week", "B"): WEEK_AGO_REASON,
    ("Authors in the past week", "B"): WEEK_AGO_REASON,
    ("Humans in the past week", "B"): WEEK_AGO_REASON,
}

# Every data and exporter metric of the contract that the dashboard must chart.
CONTRACT_SERIES = {
    "magnet_up",
    "magnet_merges_past_week",
    "magnet_authors_past_week",
    "magnet_humans_past_week",
    "magnet_humans_prompting",
    "magnet_sessions",
    "magnet_session_messages",
    "magnet_session_last_created_timestamp_seconds",
    "magnet_session_last_updated_timestamp_seconds",
    "magnet_exporter_last_success_timestamp_seconds",
    "magnet_exporter_poll_duration_seconds_bucket",
    "magnet_exporter_polls_total",
    "magnet_exporter_response_size_bytes",
    "magnet_exporter_received_bytes_total",
    "magnet_sessions_created_past_day",
    "magnet_sessions_created_past_week",
    "magnet_session_duration_seconds_bucket",
    "magnet_active_session_idle_seconds_bucket",
    "magnet_active_session_idle_seconds_gcount",
    "magnet_active_session_oldest_created_timestamp_seconds",
    "magnet_session_authors_past_day",
    "magnet_session_authors_past_week",
    "magnet_idle_session_last_activity_timestamp_seconds",
}


@dataclass(frozen=True)
class Query:
    """One target of one dashboard panel."""

    panel: str
    ref_id: str
    expr: str


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, also those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def chart_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row."""
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], target["refId"], target["expr"])
        for panel in chart_panels(dashboard)
        for target in panel["targets"]
    ]


# --- PromQL metric names ---------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-zA-Z_$]+")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names of the vector selectors in a PromQL expression.

    Strings, label matchers, ranges, grouping clauses and offsets are blanked out first;
    an identifier followed by "(" is a function or an aggregation, and keywords are not
    names. Selectors by `__name__` are refused: their names cannot be checked.
    """
    if "__name__" in expr:
        raise ValueError(f"selector by __name__ in {expr!r}: name the metric instead")
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        if name.lower() in _PROMQL_KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def metric_selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) of every vector selector; matchers "" when absent."""
    text = _STRING.sub(lambda m: "#" * len(m.group(0)), expr)  # keep offsets aligned
    selectors = []
    for name in promql_metric_names(expr):
        for match in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])", text):
            rest = expr[match.end() :]
            matchers = re.match(r"\s*\{([^{}]*)\}", rest)
            selectors.append((name, matchers.group(1) if matchers else ""))
    return selectors


def served_samples(base_url: str) -> list[Sample]:
    """Every sample on the exporter's /metrics (histograms: _bucket etc.), text format."""
    response = httpx.get(f"{base_url}/metrics", timeout=5)
    response.raise_for_status()
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def unserved_le_matchers(expr: str, samples: list[Sample]) -> set[tuple[str, str]]:
    """(metric, le) of the `le="..."` matchers in `expr` that match no served sample.

    A bucket selected as le="3600" finds nothing when the exporter writes le="3600.0".
    """
    served = {(sample.name, sample.labels.get("le")) for sample in samples}
    wanted = {
        (name, le)
        for name, matchers in metric_selectors(expr)
        for le in re.findall(r'\ble="([^"]*)"', matchers)
    }
    return wanted - served


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def markdown_section(path: Path, title: str) -> str:
    """The text under the heading `## title` of a Markdown file, up to the next `## `."""
    text = path.read_text()
    section = re.search(
        rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL
    )
    assert section, f"{path.name} has no section ## {title}"
    return section.group(1)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('magnet_up{organization=~"$organization"} == 0', {"magnet_up"}),
        (
            "histogram_quantile(0.9, sum by (le, organization) "
            '(rate(magnet_exporter_poll_duration_seconds_bucket{a="b"}[$__rate_interval])))',
            {"magnet_exporter_poll_duration_seconds_bucket"},
        ),
        (
            "max by (organization) (a_total offset 1w) / on (x) group_left (y) b > bool 3 "
            'and ignoring (z) c unless d{label="sum(e)"} or time() - f[5m:1m]',
            {"a_total", "b", "c", "d", "f"},
        ),
        ("max_over_time(prompting[2h] offset 1w) > 0", {"prompting"}),
        ("sum without (instance) (x:recorded:rate5m)", {"x:recorded:rate5m"}),
    ],
)
def test_promql_metric_names_finds_every_selector_and_nothing_else(
    expr: str, names: set[str]
) -> None:
    assert promql_metric_names(expr) == names


def test_unserved_le_matchers_compares_le_values_as_written() -> None:
    samples = [
        Sample("idle_bucket", {"le": "3600.0", "model": "m"}, 1.0),
        Sample("idle_bucket", {"le": "+Inf", "model": "m"}, 2.0),
    ]
    expr = 'sum(idle_gcount) - sum(idle_bucket{le="3600.0"}) + sum(idle_bucket{le="+Inf"})'
    assert unserved_le_matchers(expr, samples) == set()
    assert unserved_le_matchers('idle_bucket{model="m", le="3600"}', samples) == {
        ("idle_bucket", "3600")
    }
    assert unserved_le_matchers('other_bucket{le="3600.0"}', samples) == {
        ("other_bucket", "3600.0")
    }


def test_promql_metric_names_refuses_selectors_by_name_label() -> None:
    with pytest.raises(ValueError, match="__name__"):
        promql_metric_names('{__name__=~"magnet_.*"}')


# --- Import and provisioning -----------------------------------------------------------


def test_dashboard_imports_without_edits() -> None:
    text = DASHBOARD_PATH.read_text()
    dashboard = load_dashboard()
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert "${DS_" not in text, "an export placeholder needs an edit at import"
    assert dashboard["uid"] == "magnet-exporter"
    assert dashboard["id"] is None
    assert dashboard["title"]
    assert dashboard["description"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 39, "older than Grafana 11"
    assert dashboard["tags"]
    assert dashboard["time"]["from"].startswith("now-")
    assert dashboard["time"]["to"] == "now"
    assert re.fullmatch(r"\d+[smh]", dashboard["refresh"])


def test_datasource_variable_selects_a_prometheus_datasource() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    assert datasource["label"] == "Data source"


def test_organization_variable_lists_organizations_multi_with_all() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    organization = variables["organization"]
    assert organization["type"] == "query"
    assert organization["datasource"] == DATASOURCE_REF
    query = organization["query"]
    if isinstance(query, dict):
        query = query["query"]
    assert query == "label_values(magnet_up, organization)"
    assert organization["definition"] == query
    assert organization["multi"] is True
    assert organization["includeAll"] is True


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in chart_panels(load_dashboard()):
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, (panel["title"], target["refId"])


def test_every_panel_has_a_title_a_one_line_description_and_a_unit() -> None:
    for panel in chart_panels(load_dashboard()):
        title = panel["title"]
        assert title.strip()
        description = panel.get("description", "")
        assert description.strip(), f"{title} has no description"
        assert "\n" not in description, f"the description of {title} is not one line"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title} has no unit"
        assert panel["type"] in {"stat", "timeseries", "table"}, title


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in all_panels(load_dashboard())]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates


def test_panels_fit_the_grid_and_do_not_overlap() -> None:
    boxes = []
    for panel in all_panels(load_dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["y"] >= 0
        assert pos["w"] > 0
        assert pos["h"] > 0
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} is wider than the grid"
        boxes.append((panel["title"], pos["x"], pos["y"], pos["x"] + pos["w"], pos["y"] + pos["h"]))
    for i, (title_a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for title_b, bx0, by0, bx1, by1 in boxes[i + 1 :]:
            overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
            assert not overlap, f"{title_a!r} overlaps {title_b!r}"


def test_rows_hold_the_panels_the_issue_asks_for() -> None:
    dashboard = load_dashboard()
    rows: dict[str, list[dict[str, Any]]] = {}
    current = None
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = list(panel.get("panels", []))
        else:
            assert current is not None, f"{panel['title']} is above the first row"
            rows[current].append(panel)
    assert list(rows) == ["Activity", "Sessions", "Agent outcomes", "Exporter health"]

    def kinds(row: str) -> dict[str, str]:
        return {panel["title"]: panel["type"] for panel in rows[row]}

    activity = kinds("Activity")
    for title in ("Merges in the past week", "Authors in the past week", "Humans in the past week"):
        assert activity[title] == "stat"
    assert activity["Humans prompting now"] == "stat"
    assert activity["Humans prompting over time"] == "timeseries"
    sessions = {panel["title"]: panel for panel in rows["Sessions"]}
    stacking = sessions["Sessions by status"]["fieldConfig"]["defaults"]["custom"]["stacking"]
    assert stacking["mode"] == "normal"
    assert {
        "Sessions by PR status",
        "Sessions by model",
        "Active sessions",
        "Failure ratio",
        "Messages per session",
        "Time since the newest session was created",
        "Time since a session was last updated",
    } <= set(sessions)
    outcomes = {panel["title"]: panel for panel in rows["Agent outcomes"]}
    assert {title: panel["type"] for title, panel in outcomes.items()} == {
        "Sessions started in the past day by status": "timeseries",
        "Merge ratio by model, sessions started in the past week": "timeseries",
        "Session duration p50 and p90 by model": "timeseries",
        "Active sessions idle for more than 1 hour": "stat",
        "Age of the oldest active session": "stat",
        "Authors: past day over past week": "stat",
        "Idle sessions now": "table",
    }
    started = outcomes["Sessions started in the past day by status"]
    assert started["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    units = {title: panel["fieldConfig"]["defaults"]["unit"] for title, panel in outcomes.items()}
    assert units["Merge ratio by model, sessions started in the past week"] == "percentunit"
    assert units["Session duration p50 and p90 by model"] == "s"
    assert units["Age of the oldest active session"] == "s"
    assert units["Authors: past day over past week"] == "percentunit"
    assert {"Magnet API", "Data age", "Poll duration", "Poll outcomes"} <= set(
        kinds("Exporter health")
    )
    health = {panel["title"]: panel for panel in rows["Exporter health"]}
    assert health["Response size"]["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert health["Bytes received"]["fieldConfig"]["defaults"]["unit"] == "Bps"


def test_week_stats_show_the_change_against_one_week_earlier() -> None:
    queries = {(q.panel, q.ref_id): q.expr for q in dashboard_queries(load_dashboard())}
    for panel, ref_id in EMPTY_BY_NATURE:
        change = queries[(panel, ref_id)]
        assert "offset 1w" in change
        current = queries[(panel, "A")]
        assert change.startswith(current), "the change is not relative to the current value"


def test_failure_ratio_and_poll_quantiles_are_the_documented_formulas() -> None:
    queries = {(q.panel, q.ref_id): q.expr for q in dashboard_queries(load_dashboard())}
    ratio = queries[("Failure ratio", "A")]
    assert re.search(r'status="failed"\}\)\s*/\s*sum by \(organization\)', ratio)
    assert 'status=~"completed|failed"' in ratio
    # The same sessions as the alert MagnetSessionFailureRatioHigh: started in the past week.
    assert promql_metric_names(ratio) == {"magnet_sessions_created_past_week"}
    quantiles = []
    for ref_id in ("A", "B", "C"):
        match = re.match(r"histogram_quantile\(([0-9.]+),", queries[("Poll duration", ref_id)])
        assert match, ref_id
        quantiles.append(float(match.group(1)))
    assert quantiles == [0.5, 0.9, 0.99]


def test_agent_outcome_panels_are_the_documented_formulas() -> None:
    queries = {(q.panel, q.ref_id): q.expr for q in dashboard_queries(load_dashboard())}
    o = ORGANIZATION_MATCHER
    assert queries[("Sessions started in the past day by status", "A")] == (
        f"sum by (status) (magnet_sessions_created_past_day{{{o}}})"
    )
    assert queries[("Merge ratio by model, sessions started in the past week", "A")] == (
        f'sum by (model) (magnet_sessions_created_past_week{{{o}, pr_status="merged"}})'
        " / sum by (model) "
        f'(magnet_sessions_created_past_week{{{o}, pr_status=~"merged|closed"}})'
    )
    # A gauge histogram is a snapshot: quantiles straight from the buckets, no rate.
    for ref_id, quantile in (("A", "0.5"), ("B", "0.9")):
        assert queries[("Session duration p50 and p90 by model", ref_id)] == (
            f"histogram_quantile({quantile}, sum by (le, model) "
            f"(magnet_session_duration_seconds_bucket{{{o}}}))"
        )
    # The same count as the alert MagnetStuckSessionsUnlisted starts from, with le as the
    # exporter writes it.
    assert queries[("Active sessions idle for more than 1 hour", "A")] == (
        f"sum by (organization) (magnet_active_session_idle_seconds_gcount{{{o}}})"
        " - sum by (organization) "
        f'(magnet_active_session_idle_seconds_bucket{{{o}, le="3600.0"}})'
    )
    assert queries[("Age of the oldest active session", "A")] == (
        "time() - min by (organization) "
        f"(magnet_active_session_oldest_created_timestamp_seconds{{{o}}})"
    )
    # One row per listed idle session, named, with how long it has been idle, longest first.
    assert queries[("Idle sessions now", "A")] == (
        "time() - max by (organization, session, repository, model, author) "
        f"(magnet_idle_session_last_activity_timestamp_seconds{{{o}}})"
    )
    (table,) = [p for p in chart_panels(load_dashboard()) if p["title"] == "Idle sessions now"]
    (target,) = table["targets"]
    assert target["instant"] is True
    assert target["format"] == "table"
    assert table["fieldConfig"]["defaults"]["unit"] == "s"
    (organize,) = table["transformations"]
    assert organize["options"]["renameByName"] == {"Value": "Idle for"}
    assert table["options"]["sortBy"] == [{"displayName": "Idle for", "desc": True}]
    day = f"max by (organization) (magnet_session_authors_past_day{{{o}}})"
    week = f"max by (organization) (magnet_session_authors_past_week{{{o}}})"
    assert queries[("Authors: past day over past week", "A")] == f"{day} / {week}"
    assert queries[("Authors: past day over past week", "B")] == day
    assert queries[("Authors: past day over past week", "C")] == week


def test_every_query_filters_every_selector_on_the_organization_variable() -> None:
    for query in dashboard_queries(load_dashboard()):
        selectors = metric_selectors(query.expr)
        assert selectors, f"{query} selects no metric"
        for name, matchers in selectors:
            assert ORGANIZATION_MATCHER in matchers, f"{name} in {query} ignores $organization"


def test_rates_use_rate_interval_and_aggregations_state_their_labels() -> None:
    for query in dashboard_queries(load_dashboard()):
        expr = query.expr
        assert not re.search(r"\birate\s*\(", expr), f"{query}: use rate with $__rate_interval"
        for function in re.finditer(r"\b(?:rate|increase)\s*\(", expr):
            ranges = re.findall(r"\[([^\]]*)\]", expr[function.end() :])
            assert ranges, f"{query}: {function.group(0)} without a range"
            assert ranges[0] == "$__rate_interval", f"{query}: range [{ranges[0]}]"
        for aggregation in re.finditer(
            r"\b(sum|max|min|avg|count|group|stddev|stdvar|topk|bottomk|quantile)\s*(\(|by|without)",
            expr,
        ):
            assert aggregation.group(2) in {"by", "without"}, f"{query}: {aggregation.group(0)}"


def test_dashboard_charts_every_metric_of_the_contract() -> None:
    used = {
        name for q in dashboard_queries(load_dashboard()) for name in promql_metric_names(q.expr)
    }
    assert not CONTRACT_SERIES - used, f"not charted: {sorted(CONTRACT_SERIES - used)}"


def test_the_docs_describe_every_panel_and_the_dashboard_links_to_them() -> None:
    text = DOCS.read_text()
    dashboard = load_dashboard()
    for panel in all_panels(dashboard):
        assert panel["title"] in text, f"{DOCS.name} does not name the panel {panel['title']!r}"
    assert [link["url"] for link in dashboard["links"]] == [DOCS_URL]
    assert markdown_section(DOCS, "Dashboard").strip()


def test_datasource_provisioning_points_at_prometheus_from_the_environment() -> None:
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["access"] == "proxy"
    assert datasource["isDefault"] is True
    assert re.fullmatch(r"\$\{?[A-Z_][A-Z0-9_]*\}?", datasource["url"])


def test_dashboard_provisioning_is_a_file_provider() -> None:
    config = yaml.safe_load((PROVISIONING / "dashboards" / "magnet.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"]
    assert provider["options"]["path"].startswith("/")


def test_every_metric_in_the_dashboard_is_served_by_the_exporter(
    exporter: RunningExporter,
) -> None:
    # In process against the simulated API: the same /metrics as `--demo`, without the
    # start of a second interpreter.
    assert exporter.poll().up
    samples = served_samples(exporter.url)
    served = {sample.name for sample in samples}
    assert "magnet_up" in served, "the exporter's /metrics looks wrong"
    for query in dashboard_queries(load_dashboard()):
        unknown = promql_metric_names(query.expr) - served
        assert not unknown, f"{query} uses metrics that the exporter does not serve: {unknown}"
        missing = unserved_le_matchers(query.expr, samples)
        assert not missing, f"{query} selects buckets that are not served: {missing}"
