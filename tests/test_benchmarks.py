"""Smoke test of `python -m benchmarks` at tiny sizes: every row printed, timings not judged."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT

SMOKE_OPTIONS = [
    "--sizes=200,500,1000",
    "--rounds=2",
    "--scrape-seconds=0.5",
    "--poll-sessions=1000",
    "--polls=6",
    "--first-polls=3",
    "--footprint-sessions=200",
    "--footprint-polls=2",
    "--profile-polls=2",
]
EXPECTED_ROWS = [
    "poll processing CPU, 200 sessions (0.2 MB)",
    "poll processing CPU, 500 sessions (0.4 MB)",
    "poll processing CPU, 1,000 sessions (0.9 MB)",
    "poll processing CPU, 1,000 sessions, 500 authors vs 1",
    "poll processing CPU, 1,000 sessions, distinct vs equal titles, branches, PR URLs",
    "poll processing CPU, 1,000 sessions, 1% with a bad value",
    "poll of 1,000 sessions (request, transfer, parse), mean of 2",
    "peak memory of all processes added by 1,000-session polls / body",
    "/metrics, 1 client: requests/s",
    "/metrics, 1 client: p50",
    "/metrics, 1 client: p99",
    "/metrics, 8 clients: requests/s",
    "/metrics, 8 clients: p50",
    "/metrics, 8 clients: p99",
    "/metrics p99, 1 client, during polls vs idle (1,000 sessions)",
    "resident memory after 6 polls vs after 3",
    "time per poll, 1,000 sessions",
    "resident memory, all processes, after 2 polls of 200 sessions",
    "CPU per poll, all processes, 200 sessions",
]


@pytest.mark.timeout(240)
def test_benchmarks_print_one_table_with_every_row() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", *SMOKE_OPTIONS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    header, rule, *rows = table
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "measurement",
        "ours",
        "baseline",
        "ratio",
        "target",
        "met",
    ]
    assert set(rule) <= set("|-:")
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [row[0] for row in cells] == EXPECTED_ROWS
    assert all(len(row) == 6 and all(row) for row in cells)
    assert lines[0].startswith("machine: ")
    assert lines[-1].startswith("total wall time: ")


def test_exporters_that_serve_other_series_fail_the_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from benchmarks import run

    served = {
        "ours": {"magnet_sessions{status=active}": 1.0, "magnet_sessions{status=failed}": 0.0},
        "naive": {"magnet_sessions{status=active}": 2.0},
    }
    monkeypatch.setattr(run, "session_series", served.__getitem__)
    with pytest.raises(run.BenchmarkError) as failure:
        run.check_same_series("ours", "naive")
    assert "only ours: magnet_sessions{status=failed}" in str(failure.value)
    assert "values differ: magnet_sessions{status=active} ours 1.0 naive 2.0" in str(failure.value)
