"""The Prometheus alert rules: promtool, their shape, their runbooks, served metric names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_dashboard import promql_metric_names, served_series_names

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO_ROOT / "prometheus" / "alerts.test.yml"
README = REPO_ROOT / "README.md"
RUNBOOK_BASE = "https://github.com/magnet-exporter/magnet-exporter#"

REQUIRED_ALERTS = {
    "MagnetExporterDown",
    "MagnetApiDown",
    "MagnetApiUnauthorized",
    "MagnetDataStale",
    "MagnetMergesDropped",
    "MagnetNobodyPrompting",
    "MagnetNoNewSessions",
    "MagnetSessionFailureRatioHigh",
}
# Alerts whose description has no value to show, with the reason.
NO_VALUES_TO_SHOW = {"MagnetExporterAbsent": "absent() has no value and no labels but job"}
# Series that the rules may use although the exporter does not serve them.
NOT_FROM_THE_EXPORTER = {"up": "written by Prometheus itself for every scrape target"}


def rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
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


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def readme_alert_headings() -> list[str]:
    text = README.read_text()
    section = re.search(r"^## Alerts\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert section, "README.md has no section ## Alerts"
    return re.findall(r"^### (.+)$", section.group(1), flags=re.MULTILINE)


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
    # One long test group evaluates every rule minute by minute over 8 days: ~20 s.
    result = run_promtool("test", "rules", str(ALERTS_TEST), timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_one_group_of_magnet_alerts_with_severity_and_annotations() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
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
    for word in ("job name", "magnet", "180s", "0.5", ">= 5", "2h", "86400s", "0.3", "10 finished"):
        assert word in header, word


def test_every_runbook_url_points_at_a_readme_section() -> None:
    anchors = {github_slug(heading) for heading in readme_alert_headings()}
    for rule in rules():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE)
        assert anchor in anchors, f"README.md has no ### {rule['alert']} under ## Alerts"


def test_every_alert_has_a_firing_case_and_a_near_miss_in_the_promtool_tests() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
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


def test_template_queries_are_found() -> None:
    queries = template_queries(
        '{{ with printf "sum by (o) (m{o=%q,s=~\\"a|b\\"})" $labels.o | query }}{{ end }}'
    )
    assert queries == ['sum by (o) (m{o="x",s=~"a|b"})']


def test_every_metric_in_the_rules_is_served_by_the_exporter(demo_exporter: str) -> None:
    served = served_series_names(demo_exporter)
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
