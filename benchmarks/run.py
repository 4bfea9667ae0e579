"""The benchmark runner: every measurement in one run, printed as one table.

Run: `python -m benchmarks` (under two minutes on 2 cores; `--help` for smaller runs). Each
figure is a ratio of two measurements taken in the same run, so that the speed of the machine
cancels out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import api, polls
from benchmarks.children import (
    API_KEY,
    READY_SECONDS,
    BenchmarkError,
    child,
    child_env,
    free_port,
    wait_until,
)
from benchmarks.procfs import machine, tree_cpu_seconds, tree_rss
from benchmarks.scrape import Load, combined, scrape_load
from magnet_exporter.model import SnapshotParser

LABELS = ("status", "pr_status", "model")
"""The default session labels, which every program here uses."""
SESSION_METRICS = ("magnet_sessions", "magnet_session_messages")
ORGANIZATION = "default"
"""The `organization` label magnet-exporter uses when none is configured."""
CONTRACT_SIZE = 100_000
"""The body size (in sessions) at which the poll and memory targets apply."""
POLL_TARGET = 0.5
MEMORY_TARGET = 2.0
SAME_COST_TARGET = 1.2
IDLE_SESSIONS = 10
"""The body of the idle exporter that the peak memory of a large poll is counted from."""
BAD_SHARE = 0.01
BAD_VALUES_TARGET = 3.0
BUSY_P99_TARGET = 3.0
BUSY_P99_LIMIT = 0.050
RSS_TARGET = 1.1
FOOTPRINT_RSS_TARGET = 1.3
FOOTPRINT_CPU_TARGET = 1.0
FOOTPRINT_INTERVAL = polls.INTERVAL


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table."""

    measurement: str
    ours: str
    baseline: str
    ratio: float | None = None
    """Ours over the baseline."""
    target: str = "-"
    met: bool | None = None


@dataclasses.dataclass(frozen=True)
class Batch:
    """What the harness reported after a batch of polls."""

    polls: int
    failed: int
    seconds: float
    rss: int


def progress(message: str) -> None:
    """Tell the person waiting what runs now (on stderr: stdout is the table)."""
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    """Seconds as milliseconds, with a precision that suits their size."""
    milliseconds = seconds * 1000
    return f"{milliseconds:.2f} ms" if milliseconds < 10 else f"{milliseconds:.0f} ms"


def mb(size: int) -> str:
    """Bytes in MB (10^6), as the body sizes are given."""
    return f"{size / 1e6:.1f} MB"


# --- 1. Poll processing: CPU time against json.loads ------------------------------------------


def cpu_seconds(work: Callable[[], object]) -> float:
    """CPU seconds that one call takes; its result is freed after the clock stops."""
    gc.collect()
    started = time.process_time()
    result = work()
    elapsed = time.process_time() - started
    del result
    return elapsed


def parse_row(size: int, body: bytes, rounds: int, parser: SnapshotParser) -> tuple[Row, float]:
    """Best CPU time of our parsing and of json.loads over interleaved rounds, and the latter."""
    ours: list[float] = []
    loads: list[float] = []
    # Small bodies are cheap: more rounds make their best figure steadier.
    for _ in range(max(rounds, min(50, 200_000 // size))):
        loads.append(cpu_seconds(lambda: json.loads(body)))
        ours.append(cpu_seconds(lambda: parser.parse(body, api.FROZEN_AT)))
    # Noise from the rest of the machine only ever adds time: the best round is the truest.
    ratio = min(ours) / min(loads)
    row = Row(
        f"poll processing CPU, {size:,} sessions ({mb(len(body))})",
        ms(min(ours)),
        f"{ms(min(loads))} json.loads",
        ratio,
    )
    return row, min(loads)


BAD_VALUES: tuple[tuple[str, object], ...] = (
    ("createdAt", ""),
    ("updatedAt", "yesterday"),
    ("status", 5),
    ("messageCount", "abc"),
    ("metadata", "n/a"),
    ("author", {"id": 7}),
)
"""What a real API sends now and then: one of these in each bad session."""


def with_bad_values(body: bytes, share: float) -> bytes:
    """The body with one bad value in `share` of its sessions, the same ones in every run."""
    document = json.loads(body)
    sessions = document["sessions"]
    for index in range(0, len(sessions), round(1 / share)):
        field, value = BAD_VALUES[index % len(BAD_VALUES)]
        sessions[index][field] = value
    return json.dumps(document).encode()


def bad_values_row(size: int, clean: bytes, rounds: int, parser: SnapshotParser) -> Row:
    """Best CPU time of a body with 1 % bad sessions against the same body clean."""
    bad = with_bad_values(clean, BAD_SHARE)
    times: dict[bytes, list[float]] = {clean: [], bad: []}
    for _ in range(max(rounds, min(50, 200_000 // size))):
        for body, taken in times.items():
            taken.append(cpu_seconds(lambda body=body: parser.parse(body, api.FROZEN_AT)))
    ratio = min(times[bad]) / min(times[clean])
    return Row(
        f"poll processing CPU, {size:,} sessions, {BAD_SHARE:.0%} with a bad value",
        ms(min(times[bad])),
        f"{ms(min(times[clean]))} clean",
        ratio,
        f"<= {BAD_VALUES_TARGET}",
        ratio <= BAD_VALUES_TARGET,
    )


def same_cost_row(what: str, size: int, bodies: dict[str, bytes], rounds: int) -> Row:
    """Best CPU time of parsing a realistic body against a variant of it: the cost must not move.

    `bodies` holds the realistic body first, then the variant, each under its description.
    """
    parser = SnapshotParser(LABELS)
    times: dict[str, list[float]] = {name: [] for name in bodies}
    for _ in range(max(rounds, min(50, 200_000 // size))):
        for name, body in bodies.items():
            times[name].append(cpu_seconds(lambda body=body: parser.parse(body, api.FROZEN_AT)))
    (ours, ours_times), (baseline, baseline_times) = times.items()
    ratio = min(ours_times) / min(baseline_times)
    return Row(
        f"poll processing CPU, {size:,} sessions, {what}",
        f"{ms(min(ours_times))} {ours}",
        f"{ms(min(baseline_times))} {baseline}",
        ratio,
        f"<= {SAME_COST_TARGET}",
        ratio <= SAME_COST_TARGET,
    )


# --- 2. A whole poll, and the memory of all processes while it runs ----------------------------


def profile_rows(
    size: int, body: bytes, loads_seconds: float, profile_polls: int, workdir: Path
) -> list[Row]:
    """The exporter polling `body`: poll time against json.loads, peak memory against the body."""
    path = workdir / "body.json"
    path.write_bytes(api.payload(IDLE_SESSIONS))
    progress(f"poll profile: the idle exporter ({IDLE_SESSIONS} sessions)")
    idle = polls.profile(path, IDLE_SESSIONS, 2, workdir)
    path.write_bytes(body)
    progress(f"poll profile: {size:,} sessions, {profile_polls} polls")
    large = polls.profile(path, size, profile_polls, workdir)
    # Sampling memory costs CPU: the peak comes from runs of their own, the first poll in
    # the exporter's process and the next one in a worker.
    progress(f"poll profile: {size:,} sessions, memory")
    sampled = polls.profile(path, size, 2, workdir, memory=True)
    path.unlink()
    poll_ratio = large.poll_seconds / loads_seconds
    added = sampled.peak_memory - idle.steady_memory
    return [
        Row(
            f"poll of {size:,} sessions (request, transfer, parse), mean of {large.polls}",
            f"{ms(large.poll_seconds)} (first {ms(large.first_poll_seconds)})",
            f"{ms(loads_seconds)} json.loads",
            poll_ratio,
            f"<= {POLL_TARGET}",
            poll_ratio <= POLL_TARGET,
        ),
        Row(
            f"peak memory of all processes added by {size:,}-session polls / body",
            f"{mb(added)} ({mb(sampled.peak_memory)} - {mb(idle.steady_memory)} idle)",
            f"{mb(len(body))} body",
            added / len(body),
            f"<= {MEMORY_TARGET}",
            added <= MEMORY_TARGET * len(body),
        ),
    ]


def serves_sessions(response: httpx.Response) -> bool:
    """True once an exporter serves the session metrics, that is after its first poll."""
    return response.status_code == 200 and "\nmagnet_sessions{" in response.text


# --- 3. Scrape: ours against the naive exporter ------------------------------------------------


SeriesValues = dict[str, float]


def session_series(url: str) -> SeriesValues:
    """The session series on `url`, as `name{labels}` -> value, read by prometheus-client."""
    text = httpx.get(url, timeout=10).text
    return {
        f"{sample.name}{dict(sorted(sample.labels.items()))}": sample.value
        for family in text_string_to_metric_families(text)
        if family.name in SESSION_METRICS
        for sample in family.samples
    }


def check_same_series(ours_url: str, naive_url: str) -> None:
    """Fail unless both exporters serve the same session series with the same values."""
    ours, naive = session_series(ours_url), session_series(naive_url)
    if ours == naive:
        return
    problems = [f"only ours: {key}" for key in sorted(ours.keys() - naive.keys())]
    problems += [f"only naive: {key}" for key in sorted(naive.keys() - ours.keys())]
    problems += [
        f"values differ: {key} ours {ours[key]} naive {naive[key]}"
        for key in sorted(ours.keys() & naive.keys())
        if ours[key] != naive[key]
    ]
    shown = "\n  ".join(problems[:20])
    raise BenchmarkError(f"the exporters serve different session series:\n  {shown}")


def load_rows(clients: int, ours: Load, naive: Load) -> list[Row]:
    """Throughput, p50 and p99 of both exporters under the same load."""
    where = f"/metrics, {clients} client{'s' if clients > 1 else ''}"
    ours_p50, naive_p50 = ours.percentile(0.5), naive.percentile(0.5)
    ours_p99, naive_p99 = ours.percentile(0.99), naive.percentile(0.99)
    return [
        Row(
            f"{where}: requests/s",
            f"{ours.rate:.0f}",
            f"{naive.rate:.0f} naive",
            ours.rate / naive.rate,
            ">= 1",
            ours.rate >= naive.rate,
        ),
        Row(f"{where}: p50", ms(ours_p50), f"{ms(naive_p50)} naive", ours_p50 / naive_p50),
        Row(
            f"{where}: p99",
            ms(ours_p99),
            f"{ms(naive_p99)} naive",
            ours_p99 / naive_p99,
            "<= 1",
            ours_p99 <= naive_p99,
        ),
    ]


def loaded(url: str, clients: int, seconds: float) -> Load:
    """Scrape load on `url`, failing the benchmark if any scrape failed."""
    load = scrape_load(url, clients, seconds)
    if load.errors or not load.latencies:
        raise BenchmarkError(f"{url}: {load.errors} failed scrapes, {len(load.latencies)} good")
    return load


def compare_loads(urls: Sequence[str], clients: int, seconds: float) -> list[Load]:
    """The same load on each URL, in alternating slices of about a second after a warm-up."""
    for url in urls:
        loaded(url, clients, min(0.5, seconds / 5))  # first scrapes pay one-time costs
    slices = max(1, round(seconds))
    taken: list[list[Load]] = [[] for _ in urls]
    for index in range(slices):
        # Alternating which goes first spreads drifts of the machine's speed over both.
        order = range(len(urls)) if index % 2 == 0 else reversed(range(len(urls)))
        for which in order:
            taken[which].append(loaded(urls[which], clients, seconds / slices))
    return [combined(loads) for loads in taken]


def scrape_rows(options: argparse.Namespace, api_url: str, workdir: Path) -> list[Row]:
    """Start both exporters, check they serve the same series, load each in turn."""
    ours_port, naive_port = free_port(), free_port()
    ours_command = ["-m", "magnet_exporter", "--api-url", api_url]
    ours_command += ["--listen-address", f"127.0.0.1:{ours_port}", "--log-level", "warning"]
    naive_command = ["-m", "benchmarks.naive_exporter", "--api-url", api_url]
    naive_command += ["--port", str(naive_port), "--organization", ORGANIZATION]
    env = child_env(MAGNET_API_KEY=API_KEY)
    urls = (f"http://127.0.0.1:{ours_port}/metrics", f"http://127.0.0.1:{naive_port}/metrics")
    with child(ours_command, workdir, env) as ours, child(naive_command, workdir, env) as naive:
        progress("scrape: starting magnet-exporter and the naive exporter")
        for process, url in zip((ours, naive), urls, strict=True):
            wait_until(process, url, serves_sessions)
        check_same_series(*urls)
        rows = []
        for clients in (1, 8):
            progress(f"scrape: {clients} client(s), {options.scrape_seconds} s on each exporter")
            ours_load, naive_load = compare_loads(urls, clients, options.scrape_seconds)
            rows += load_rows(clients, ours_load, naive_load)
    return rows


# --- 4 and 5. Scrapes during polls, and steady-state memory, in the harness --------------------


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line the harness prints, within `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        returncode = process.poll()
        why = f"exited with code {returncode}" if returncode is not None else "did not answer"
        raise BenchmarkError(f"the harness {why} within {timeout:.0f} s")
    return line


def send(process: subprocess.Popen[str], command: str) -> None:
    """Give the harness one command."""
    assert process.stdin is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()


def batch_done(process: subprocess.Popen[str], polls: int) -> Batch:
    """Wait for the report of a batch of `polls` polls; fail if any poll failed."""
    batch = Batch(**json.loads(read_line(process, timeout=60 + 2 * polls)))
    if batch.failed:
        raise BenchmarkError(f"{batch.failed} of {batch.polls} polls failed in the harness")
    return batch


def poll_rows(options: argparse.Namespace, api_url: str, workdir: Path) -> list[Row]:
    """p99 while polls run against idle, RSS after many polls against after a few."""
    first, rest = options.first_polls, options.polls - options.first_polls
    seconds = options.scrape_seconds
    harness_command = ["-m", "benchmarks.exporter", "--api-url", api_url]
    pipe = subprocess.PIPE
    with child(harness_command, workdir, stdin=pipe, stdout=pipe) as harness:
        url = f"http://127.0.0.1:{int(read_line(harness, READY_SECONDS))}/metrics"
        progress(f"polls: {first} polls, then {seconds} s of scrapes while idle")
        send(harness, f"poll {first}")
        warm = batch_done(harness, first)
        idle = loaded(url, 1, seconds)
        progress(f"polls: {rest} more polls, scraped for the first {seconds} s")
        send(harness, f"poll {rest}")
        busy = loaded(url, 1, seconds)
        done = batch_done(harness, rest)
        send(harness, "quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            harness.wait(timeout=10)  # a clean exit first; `child` stops it otherwise
    if done.seconds < seconds:
        progress(f"note: the polls ended after {done.seconds:.1f} s, before the scrapes did")
    busy_p99, idle_p99 = busy.percentile(0.99), idle.percentile(0.99)
    return [
        Row(
            f"/metrics p99, 1 client, during polls vs idle ({options.poll_sessions:,} sessions)",
            ms(busy_p99),
            f"{ms(idle_p99)} idle",
            busy_p99 / idle_p99,
            f"<= {BUSY_P99_TARGET:.0f} and < {ms(BUSY_P99_LIMIT)}",
            busy_p99 <= BUSY_P99_TARGET * idle_p99 and busy_p99 < BUSY_P99_LIMIT,
        ),
        Row(
            f"resident memory after {options.polls:,} polls vs after {first:,}",
            mb(done.rss),
            f"{mb(warm.rss)} after {first:,}",
            done.rss / warm.rss,
            f"<= {RSS_TARGET}",
            done.rss <= RSS_TARGET * warm.rss,
        ),
        Row(f"time per poll, {options.poll_sessions:,} sessions", ms(done.seconds / rest), "-"),
    ]


# --- 6 and 7. Footprint of a small organization: all processes' memory and CPU per poll -------


def poll_count(url: str, name: str) -> float:
    """The sum of the samples called `name` on `url` (a poll counter)."""
    text = httpx.get(url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def footprint_rows(options: argparse.Namespace, workdir: Path) -> list[Row]:
    """Memory of every process, and CPU per poll, of both exporters polling a small body."""
    sessions, interval, polls = (
        options.footprint_sessions,
        FOOTPRINT_INTERVAL,
        options.footprint_polls,
    )
    api_port, ours_port, naive_port = free_port(), free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    ours_command = ["-m", "magnet_exporter", "--api-url", api_url, "--log-level", "warning"]
    ours_command += ["--listen-address", f"127.0.0.1:{ours_port}"]
    ours_command += ["--poll-interval", str(interval)]
    naive_command = ["-m", "benchmarks.naive_exporter", "--api-url", api_url]
    naive_command += ["--port", str(naive_port), "--organization", ORGANIZATION]
    naive_command += ["--interval", str(interval)]
    env = child_env(MAGNET_API_KEY=API_KEY)
    urls = (f"http://127.0.0.1:{ours_port}/metrics", f"http://127.0.0.1:{naive_port}/metrics")
    counters = ("magnet_exporter_polls_total", "naive_polls_total")
    api_command = ["-m", "benchmarks.api", "--sessions", str(sessions), "--port", str(api_port)]
    with child(api_command, workdir) as api_server:
        wait_until(api_server, f"{api_url}/api/sessions", lambda r: r.status_code == 200)
        with child(ours_command, workdir, env) as ours, child(naive_command, workdir, env) as naive:
            progress(f"footprint: both exporters poll {sessions:,} sessions every {interval:.0f} s")
            for process, url in zip((ours, naive), urls, strict=True):
                wait_until(process, url, serves_sessions)
            check_same_series(*urls)
            pids = (ours.pid, naive.pid)
            # Counted before the CPU time and after it: the scrapes are outside the window.
            first = [poll_count(url, name) for url, name in zip(urls, counters, strict=True)]
            cpu_before = [tree_cpu_seconds(pid) for pid in pids]
            # Both have made `polls` polls by then, the first one at start.
            time.sleep(interval * (polls - first[0]) + interval / 2)
            cpu_after = [tree_cpu_seconds(pid) for pid in pids]
            rss = [tree_rss(pid) for pid in pids]
            last = [poll_count(url, name) for url, name in zip(urls, counters, strict=True)]
    done = [after - before for after, before in zip(last, first, strict=True)]
    if min(done) < 1:
        raise BenchmarkError(f"footprint: polls during the window: {done}")
    per_poll = [
        (after - before) / count
        for after, before, count in zip(cpu_after, cpu_before, done, strict=True)
    ]
    return [
        Row(
            f"resident memory, all processes, after {polls} polls of {sessions:,} sessions",
            mb(rss[0]),
            f"{mb(rss[1])} naive",
            rss[0] / max(rss[1], 1),
            f"<= {FOOTPRINT_RSS_TARGET}",
            rss[0] <= FOOTPRINT_RSS_TARGET * rss[1],
        ),
        Row(
            f"CPU per poll, all processes, {sessions:,} sessions",
            ms(per_poll[0]),
            f"{ms(per_poll[1])} naive",
            per_poll[0] / max(per_poll[1], 1e-9),
            f"<= {FOOTPRINT_CPU_TARGET}",
            per_poll[0] <= FOOTPRINT_CPU_TARGET * per_poll[1],
        ),
    ]


# --- The run and its table ---------------------------------------------------------------------


def measure(options: argparse.Namespace) -> list[Row]:
    """Every measurement, in an order that keeps the quiet ones away from the busy ones."""
    with tempfile.TemporaryDirectory(prefix="magnet-benchmarks-") as tmp:
        workdir = Path(tmp)
        progress(f"generating payloads of {', '.join(f'{n:,}' for n in options.sizes)} sessions")
        payloads = {size: api.payload(size) for size in options.sizes}
        parser = SnapshotParser(LABELS)
        rows = []
        loads: dict[int, float] = {}
        for size, body in payloads.items():
            progress(f"poll processing: {size:,} sessions")
            row, loads[size] = parse_row(size, body, options.rounds, parser)
            rows.append(row)
        for size, body in payloads.items():
            if size < api.REALISTIC_FROM or size not in (min(payloads), max(payloads)):
                continue
            progress(f"poll processing: {size:,} sessions, by one author, with equal values")
            realistic = f"{api.AUTHORS} authors"
            variants = {realistic: body, "1 author": api.one_author(body)}
            rows.append(
                same_cost_row(f"{api.AUTHORS} authors vs 1", size, variants, options.rounds)
            )
            variants = {"distinct": body, "equal": api.equal_values(body)}
            rows.append(
                same_cost_row("distinct vs equal titles, branches, PR URLs", size, variants, 1)
            )
        largest = max(payloads)
        progress(f"poll processing: {largest:,} sessions, 1 % with a bad value")
        rows.append(bad_values_row(largest, payloads[largest], options.rounds, parser))
        rows += profile_rows(
            largest, payloads.pop(largest), loads[largest], options.profile_polls, workdir
        )
        del payloads
        port = free_port()
        api_command = ["-m", "benchmarks.api", "--sessions", str(options.poll_sessions)]
        with child([*api_command, "--port", str(port)], workdir) as api_server:
            api_url = f"http://127.0.0.1:{port}"
            wait_until(api_server, f"{api_url}/api/sessions", lambda r: r.status_code == 200)
            rows += scrape_rows(options, api_url, workdir)
            rows += poll_rows(options, api_url, workdir)
        rows += footprint_rows(options, workdir)
    return rows


def sizing(sizes: Sequence[int], profile_polls: int) -> str:
    """The sizing table of docs/deployment.md: memory, CPU and transfer at each size."""
    lines = [
        "| sessions | body | received per poll | per day at 60 s | peak memory | steady memory "
        "| CPU per poll |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory(prefix="magnet-sizing-") as tmp:
        workdir = Path(tmp)
        for size in sizes:
            progress(f"sizing: {size:,} sessions")
            path = workdir / "body.json"
            path.write_bytes(api.payload(size))
            found = polls.profile(path, size, profile_polls, workdir, memory=True)
            per_day = found.received_per_poll * 86_400 / 60
            lines.append(
                f"| {size:,} | {mb(int(found.body_bytes))} | {mb(int(found.received_per_poll))} "
                f"| {per_day / 1e9:.2f} GB | {mb(found.peak_memory)} | {mb(found.steady_memory)} "
                f"| {ms(found.cpu_per_poll)} |"
            )
    return "\n".join(lines)


HEADER = ("measurement", "ours", "baseline", "ratio", "target", "met")


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, aligned so that it also reads well as plain text."""
    cells = [HEADER] + [
        (
            row.measurement,
            row.ours,
            row.baseline,
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            row.target,
            "-" if row.met is None else ("yes" if row.met else "NO"),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(HEADER))]
    numeric = (False, True, True, True, False, False)

    def line(values: Sequence[str]) -> str:
        padded = (
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|".join(
        "-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, numeric, strict=True)
    )
    return "\n".join([line(cells[0]), f"|{rule}|", *(line(values) for values in cells[1:])])


def sizes(text: str) -> tuple[int, ...]:
    """`1000,10000` -> (1000, 10000), each at least 1."""
    values = tuple(int(part) for part in text.split(","))
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive numbers of sessions")
    return tuple(sorted(set(values)))


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; the defaults are the figures of docs/design.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add = parser.add_argument
    add(
        "--sizes",
        type=sizes,
        default=(1_000, 10_000, CONTRACT_SIZE),
        metavar="N,N,...",
        help="sessions per body for poll processing; the largest for memory too "
        "(default 1000,10000,100000)",
    )
    add("--rounds", type=int, default=5, help="parse rounds at the largest size (default 5)")
    add("--scrape-seconds", type=float, default=5.0, help="seconds of each scrape load (default 5)")
    add(
        "--poll-sessions",
        type=int,
        default=10_000,
        help="sessions the API serves to the exporters (default 10000)",
    )
    add("--polls", type=int, default=1_000, help="polls in the harness in all (default 1000)")
    add(
        "--first-polls",
        type=int,
        default=10,
        help="polls before the idle scrapes and the first memory figure (default 10)",
    )
    add(
        "--footprint-sessions",
        type=int,
        default=1_000,
        help="sessions of the small organization whose footprint is measured (default 1000)",
    )
    add(
        "--footprint-polls",
        type=int,
        default=10,
        help=f"polls, {FOOTPRINT_INTERVAL:.0f} s apart, before the footprint figures (default 10)",
    )
    add(
        "--profile-polls",
        type=int,
        default=3,
        help="polls, 5 s apart, of the exporter whose poll time and memory are measured "
        "(default 3)",
    )
    add(
        "--sizing",
        action="store_true",
        help="instead of the table of targets, the sizing table of docs/deployment.md for --sizes",
    )
    options = parser.parse_args(argv)
    if options.footprint_polls < 2 or options.profile_polls < 2:
        parser.error("--footprint-polls and --profile-polls must be at least 2")
    if not 1 <= options.first_polls < options.polls:
        parser.error("--first-polls must be at least 1 and less than --polls")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run everything, print the machine, the table and the wall time; 1 if a figure failed."""
    options = parse_options(argv)
    started = time.monotonic()
    if options.sizing:
        try:
            print(sizing(options.sizes, options.profile_polls))
        except BenchmarkError as error:
            print(f"benchmark failed: {error}", file=sys.stderr)
            return 1
        return 0
    try:
        rows = measure(options)
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    missed = [row.measurement for row in rows if row.met is False]
    print(f"machine: {machine()}")
    print()
    print(table(rows))
    print()
    print(f"targets missed: {len(missed)} of {sum(row.met is not None for row in rows)}")
    print()  # a paragraph of its own when the output is pasted into Markdown
    print(f"total wall time: {time.monotonic() - started:.0f} s")
    return 0
