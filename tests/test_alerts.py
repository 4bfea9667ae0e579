"""The Prometheus alert rules: promtool, their shape, their runbooks, served metric names."""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import RunningExporter
from test_dashboard import (
    DOCS,
    DOCS_URL,
    github_slug,
    markdown_section,
    promql_metric_names,
    served_samples,
    unserved_le_matchers,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO_ROOT / "prometheus" / "alerts.test.yml"
# The alerts that compare with one week earlier need 8 days of series: their own file,
# evaluated at a coarser interval.
ALERTS_WEEKLY_TEST = REPO_ROOT / "prometheus" / "alerts-weekly.test.yml"
RULE_TESTS = (ALERTS_TEST, ALERTS_WEEKLY_TEST)
RUNBOOK_BASE = DOCS_URL + "#"

REQUIRED_ALERTS = {
    "MagnetExporterDown",
    "MagnetApiDown",
    "MagnetApiUnauthorized",
    "MagnetDataStale",
    "MagnetMergesDropped",
    "MagnetNobodyPrompting",
    "MagnetNoNewSessions",
    "MagnetSessionFailureRatioHigh",
    "MagnetSessionStuck",
    "MagnetStuckSessionsUnlisted",
}
# Alerts whose description has no value to show, with the reason.
NO_VALUES_TO_SHOW = {"MagnetExporterAbsent": "absent() has no value and no labels but job"}
# Series that the rules may use although the exporter does not serve them.
NOT_FROM_THE_EXPORTER = {"up": "written by Prometheus itself for every scrape target"}


def load_yaml(path: Path) -> Any:
    """The YAML document of `path`, read with libyaml when PyYAML has it (~20x faster)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a safe loader)


def rules() -> list[dict[str, Any]]:
    (group,) = load_yaml(ALERTS)["groups"]
    result: list[dict[str, Any]] = group["rules"]
    return result


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return path


def run_promtool(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def docs_alert_headings() -> list[str]:
    """The `###` headings of the section `## Alerts` of docs/dashboard-and-alerts.md."""
    return re.findall(r"^### (.+)$", markdown_section(DOCS, "Alerts"), flags=re.MULTILINE)


def template_queries(text: str) -> list[str]:
    """PromQL of the `query` calls in an annotation template (printf "..." | query)."""
    queries = []
    for literal in re.findall(r'printf\s+"((?:[^"\\]|\\.)*)"', text):
        query = literal.replace('\\"', '"').replace("%q", '"x"')
        queries.append(query)
    return queries


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS), timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    # The two files in two processes at once: the weekly one takes the longer (~2 s).
    with ThreadPoolExecutor(len(RULE_TESTS)) as pool:
        results = list(
            pool.map(lambda path: run_promtool("test", "rules", str(path), timeout=100), RULE_TESTS)
        )
    for path, result in zip(RULE_TESTS, results, strict=True):
        assert result.returncode == 0, f"{path.name}: " + result.stdout + result.stderr
        assert "SUCCESS" in result.stdout, path.name


def test_one_group_of_magnet_alerts_with_severity_and_annotations() -> None:
    groups = load_yaml(ALERTS)["groups"]
    assert len(groups) == 1
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    severities = set()
    for rule in rules():
        name = rule["alert"]
        assert name.startswith("Magnet"), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        severities.add(rule["labels"]["severity"])
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        if name not in NO_VALUES_TO_SHOW:
            assert "{{" in annotations["description"], f"{name}: the description shows no values"
        assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower(), name
    assert severities == {"critical", "warning", "info"}


def test_the_scrape_job_is_magnet() -> None:
    jobs = set()
    for rule in rules():
        jobs |= set(re.findall(r'job="([^"]*)"', rule["expr"]))
    assert jobs == {"magnet"}
    down = next(rule for rule in rules() if rule["alert"] == "MagnetExporterDown")
    assert re.fullmatch(r'up\{job="magnet"\}\s*==\s*0', down["expr"].strip())


def test_header_comment_lists_every_alert_and_its_threshold() -> None:
    header = ALERTS.read_text().split("\ngroups:", 1)[0]
    for rule in rules():
        assert rule["alert"] in header, f"{rule['alert']} is missing from the header comment"
    for word in (
        "job name",
        "magnet",
        "180s",
        "0.5",
        ">= 5",
        "2h",
        "86400s",
        "0.3",
        "10 finished",
        "past week",
        "1h",
        'le="3600.0"',
    ):
        assert word in header, word


SESSION_LABELS = ("organization", "session", "repository", "model", "author")


def test_the_stuck_session_alert_fires_per_listed_session_idle_for_more_than_an_hour() -> None:
    stuck = next(rule for rule in rules() if rule["alert"] == "MagnetSessionStuck")
    expr = " ".join(stuck["expr"].split())
    # No aggregation: each listed session is a series, so each stuck one is an alert of its
    # own, with the session's labels.
    assert expr == "time() - magnet_idle_session_last_activity_timestamp_seconds > 3600"
    assert stuck["for"] == "15m"
    assert stuck["labels"]["severity"] == "warning"
    text = stuck["annotations"]["summary"] + stuck["annotations"]["description"]
    for label in SESSION_LABELS:
        assert f"$labels.{label}" in text, label
    assert "$value | humanizeDuration" in stuck["annotations"]["summary"]


def test_the_unlisted_alert_counts_stuck_sessions_from_the_idle_histogram() -> None:
    unlisted = next(rule for rule in rules() if rule["alert"] == "MagnetStuckSessionsUnlisted")
    expr = " ".join(unlisted["expr"].split())
    # The count of the idle histogram minus its bucket of one hour: sessions idle for more.
    assert "magnet_active_session_idle_seconds_gcount" in expr
    assert 'magnet_active_session_idle_seconds_bucket{le="3600.0"}' in expr
    assert "magnet_idle_session_last_activity_timestamp_seconds > 3600" in expr
    assert "max by (organization) (magnet_idle_sessions_unlisted) > 0" in expr
    assert unlisted["for"] == "15m"


def test_the_failure_ratio_alert_looks_at_the_sessions_started_in_the_past_week() -> None:
    ratio = next(rule for rule in rules() if rule["alert"] == "MagnetSessionFailureRatioHigh")
    assert promql_metric_names(ratio["expr"]) == {"magnet_sessions_created_past_week"}
    assert ratio["for"] == "30m"


def test_every_runbook_url_points_at_a_section_of_the_docs() -> None:
    assert REPO_ROOT / DOCS_URL.split("/blob/main/", 1)[1] == DOCS
    assert DOCS.is_file()
    anchors = {
        github_slug(heading)
        for heading in re.findall(r"^#+ (.+)$", DOCS.read_text(), flags=re.MULTILINE)
    }
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        anchor = url.removeprefix(RUNBOOK_BASE)
        assert anchor in anchors, f"{DOCS.name} has no heading for #{anchor}"


def test_every_alert_has_a_runbook_section_and_a_row_in_the_table_of_the_docs() -> None:
    names = {rule["alert"] for rule in rules()}
    headings = docs_alert_headings()
    assert len(headings) == len(set(headings))
    assert set(headings) == names, "### sections under ## Alerts differ from the rules"
    alerts = markdown_section(DOCS, "Alerts")
    table = set(re.findall(r"^\| `(Magnet\w+)` \|", alerts, flags=re.MULTILINE))
    assert table == names, "the table of alerts differs from the rules"
    for rule in rules():
        row = re.search(
            rf"^\| `{rule['alert']}` \| (\w+) \|.*\| ([^|]+) \|$", alerts, flags=re.MULTILINE
        )
        assert row, rule["alert"]
        assert row.group(1) == rule["labels"]["severity"], rule["alert"]
        # The `for` of each rule, pinned here too: the rule tests of the week-ago alerts
        # evaluate every 12 minutes, too coarse to tell 1h from 50m.
        assert row.group(2) == rule.get("for", "(window)"), rule["alert"]


def rule_test_cases(path: Path) -> list[dict[str, Any]]:
    tests = load_yaml(path)
    assert tests["rule_files"] == ["alerts.yml"], path.name
    return [case for group in tests["tests"] for case in group.get("alert_rule_test", [])]


def test_every_alert_has_a_firing_case_and_a_near_miss_in_the_promtool_tests() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in rule_test_cases(path):
            name = case["alertname"]
            if case["exp_alerts"]:
                fires.add(name)
                for alert in case["exp_alerts"]:
                    assert set(alert["exp_annotations"]) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }
                    assert "severity" in alert["exp_labels"]
            else:
                silent.add(name)
    names = {rule["alert"] for rule in rules()}
    assert not names - fires, f"never shown to fire: {sorted(names - fires)}"
    assert not names - silent, f"never shown to stay silent: {sorted(names - silent)}"


def test_the_week_ago_alerts_are_tested_in_their_own_file_at_a_coarser_interval() -> None:
    week_ago = {rule["alert"] for rule in rules() if "offset 1w" in rule["expr"]}
    assert week_ago == {"MagnetMergesDropped", "MagnetNobodyPrompting", "MagnetNoNewSessions"}
    weekly = {case["alertname"] for case in rule_test_cases(ALERTS_WEEKLY_TEST)}
    others = {case["alertname"] for case in rule_test_cases(ALERTS_TEST)}
    assert weekly == week_ago
    assert not others & week_ago
    intervals = [load_yaml(path)["evaluation_interval"] for path in RULE_TESTS]
    assert intervals == ["1m", "12m"]


def test_template_queries_are_found() -> None:
    queries = template_queries(
        '{{ with printf "sum by (o) (m{o=%q,s=~\\"a|b\\"})" $labels.o | query }}{{ end }}'
    )
    assert queries == ['sum by (o) (m{o="x",s=~"a|b"})']


def test_every_metric_in_the_rules_is_served_by_the_exporter(exporter: RunningExporter) -> None:
    # In process against the simulated API: the same /metrics as `--demo`, without the
    # start of a second interpreter.
    assert exporter.poll().up
    samples = served_samples(exporter.url)
    served = {sample.name for sample in samples}
    assert "magnet_up" in served, "the exporter's /metrics looks wrong"
    for rule in rules():
        queries = [rule["expr"]]
        for annotation in rule["annotations"].values():
            queries += template_queries(annotation)
        for query in queries:
            unknown = promql_metric_names(query) - served - set(NOT_FROM_THE_EXPORTER)
            assert not unknown, (
                f"{rule['alert']} uses series the exporter does not serve: {unknown}"
            )
            # A bucket is selected by its `le` exactly as served ("3600.0", not "3600").
            missing = unserved_le_matchers(query, samples)
            assert not missing, f"{rule['alert']} selects buckets that are not served: {missing}"
