"""The documentation cannot drift from the product.

Every option of every command's `--help` and every `MAGNET_*` setting is in
docs/configuration.md; every metric family that a running demo exporter serves is in
docs/metrics.md (and each `magnet_*` family in the README's list), and every metric name the
README and docs/metrics.md mention is served; every relative link of README.md and docs/*.md
points at a file, and at a heading when it names one. The README stays a front door.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, exporter_env
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter.settings import Settings

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
METRICS = DOCS / "metrics.md"
DESIGN = DOCS / "design.md"
COMMANDS = ((), ("run",), ("check",), ("demo-api",))
README_MAX_LINES = 200
DEMO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/magnet-exporter --demo"
)
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Histogram kinds whose samples carry suffixes; a user queries the family by its own name.
HISTOGRAM_TYPES = frozenset({"histogram", "gaugehistogram", "summary"})


def mentions(text: str, name: str) -> bool:
    """Whether `name` occurs in `text` as a whole word (not inside a longer name)."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-]|\.\w)", text) is not None


def without_code(text: str) -> str:
    """The Markdown text without fenced code blocks and inline code spans."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# ------------------------------------------------------------------- configuration


def help_text(command: tuple[str, ...], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "magnet_exporter", *command, "--help"],
        cwd=cwd,
        env=exporter_env(COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def options_in_help(text: str) -> list[str]:
    """The option names that a `--help` output lists, e.g. `-h`, `--help`, `--config`."""
    names = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("-"):
            continue
        head = re.split(r"\s{2,}", stripped)[0]
        names += [variant.split()[0] for variant in head.split(", ")]
    return names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "magnet-exporter")
def test_every_option_of_every_command_is_in_the_configuration_doc(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    options = options_in_help(help_text(command, tmp_path))
    assert "--help" in options, f"found no options in the help of {command}"
    text = CONFIGURATION.read_text()
    missing = [option for option in options if not mentions(text, option)]
    assert not missing, f"docs/configuration.md does not mention {missing}"


def test_every_flag_the_configuration_doc_names_exists(tmp_path: Path) -> None:
    options = {
        option for command in COMMANDS for option in options_in_help(help_text(command, tmp_path))
    }
    named = set(re.findall(r"(?<![\w-])--[a-z][\w.-]*[a-z]", CONFIGURATION.read_text()))
    assert named - options == set(), "docs/configuration.md names flags that no command has"


def setting_env_names() -> list[str]:
    """The environment variable of every setting, as pydantic-settings names it."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = []
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.append(alias.upper() if isinstance(alias, str) else (prefix + field_name).upper())
    return names


def test_every_setting_is_in_the_configuration_doc() -> None:
    names = setting_env_names()
    assert "MAGNET_API_KEY" in names, names
    text = CONFIGURATION.read_text()
    missing = [name for name in names if not mentions(text, name)]
    assert not missing, f"docs/configuration.md does not mention {missing}"


def test_every_setting_the_docs_name_exists() -> None:
    names = set(setting_env_names())
    for path in doc_files():
        named = set(re.findall(r"\bMAGNET_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        unknown = named - names
        assert not unknown, f"{path.relative_to(REPO_ROOT)} names unknown settings {unknown}"


# ------------------------------------------------------------------------- metrics


def served_names(families: Iterable[object]) -> Iterator[tuple[str, set[str]]]:
    """For each family: the name a user queries it by, and every name it serves."""
    for family in families:
        name: str = family.name  # type: ignore[attr-defined]
        kind: str = family.type  # type: ignore[attr-defined]
        samples = {sample.name for sample in family.samples}  # type: ignore[attr-defined]
        if kind in HISTOGRAM_TYPES or not samples:
            yield name, {name, *samples}
        else:
            # Counters are queried as `_total`, info metrics as `_info`: the sample names.
            for sample in sorted(samples):
                yield sample, {name, sample}


@pytest.fixture
def demo_metrics(demo_exporter: str) -> dict[str, set[str]]:
    """The families of a demo exporter's /metrics, in the text format and in OpenMetrics."""
    found: dict[str, set[str]] = {}
    text = httpx.get(f"{demo_exporter}/metrics", timeout=10)
    assert text.status_code == 200
    for name, names in served_names(text_string_to_metric_families(text.text)):
        found.setdefault(name, set()).update(names)
    openmetrics = httpx.get(f"{demo_exporter}/metrics", headers={"Accept": OPENMETRICS}, timeout=10)
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    for name, names in served_names(openmetrics_families(openmetrics.text)):
        found.setdefault(name, set()).update(names)
    assert "magnet_sessions" in found, "the demo exporter serves no session data"
    return found


def test_every_served_metric_is_in_the_metrics_doc(demo_metrics: dict[str, set[str]]) -> None:
    text = METRICS.read_text()
    missing = sorted(name for name in demo_metrics if not mentions(text, name))
    assert not missing, f"docs/metrics.md does not mention {missing}"


def test_every_served_magnet_family_is_in_the_readme(demo_metrics: dict[str, set[str]]) -> None:
    text = README.read_text()
    split = re.compile(r"_(gcount|gsum)$")  # the text format's halves of a gauge histogram
    families = {
        name for name in demo_metrics if name.startswith("magnet_") and not split.search(name)
    }
    missing = sorted(name for name in families if not mentions(text, name))
    assert not missing, f"README.md's metric list does not mention {missing}"


def test_every_metric_the_docs_name_is_served(demo_metrics: dict[str, set[str]]) -> None:
    served = set().union(*demo_metrics.values())
    for path in (README, METRICS):
        named = set(re.findall(r"(?<![\w.])magnet_[a-z0-9_]*[a-z0-9](?!\w|\.\w)", path.read_text()))
        unknown = sorted(named - served - {"magnet_exporter"})  # the package's own name
        assert not unknown, f"{path.relative_to(REPO_ROOT)} names metrics not served: {unknown}"


# ------------------------------------------------------------------------- links


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (duplicates get -1, -2...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", markdown, flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    targets = re.findall(
        r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", without_code(path.read_text())
    )
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.IGNORECASE)]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_points_at_a_file_and_heading(path: Path) -> None:
    broken = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no file {file.relative_to(REPO_ROOT)}")
        elif anchor and file.suffix == ".md" and anchor not in github_anchors(file.read_text()):
            broken.append(f"{link}: no heading #{anchor} in {file.relative_to(REPO_ROOT)}")
    assert not broken, f"{path.relative_to(REPO_ROOT)} has broken links: {broken}"


def test_the_docs_link_to_every_doc() -> None:
    linked = {
        (path.parent / link.partition("#")[0]).resolve()
        for path in doc_files()
        for link in relative_links(path)
        if link.partition("#")[0]
    }
    orphans = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"nothing links to {orphans}"


# ------------------------------------------------------------------------- README


def test_the_readme_is_a_front_door_with_the_two_commands() -> None:
    text = README.read_text()
    lines = text.count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the reference goes in docs/"
    assert DEMO_COMMAND in text
    assert TEST_COMMAND in text
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci, "CI runs the README's test command"


def test_the_benchmark_table_sits_between_its_markers_in_the_design_doc() -> None:
    text = DESIGN.read_text()
    begin, end = "<!-- benchmark output: begin -->", "<!-- benchmark output: end -->"
    assert text.count(begin) == 1
    assert text.count(end) == 1
    table = text[text.index(begin) : text.index(end)]
    assert "| measurement" in table
    assert "targets missed:" in table
