"""Load: 50 concurrent scrapers against a real exporter on loopback while polls run.

Every response must be a 200 whose body prometheus-client's parser reads (half the scrapers ask
for OpenMetrics as Prometheus does, half for the text format), and every scrape must see one
whole poll. Bodies are parsed after the load, so that the scrapers measure the exporter rather
than the parser. The load lasts until a poll has run during it, however long that takes on a
loaded machine. The request count and latency percentiles are printed (`pytest -n 0 -s` shows
them); they are information, not assertions: timings belong in the benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import FakeClock, RunningExporter, background_process, exporter_env, free_port
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from magnet_exporter.demo import LISTED_SESSIONS

pytestmark = pytest.mark.alone  # 50 scrapers load the machine: no other test runs meanwhile

SCRAPERS = 50
LOAD_LIMIT_SECONDS = 60
"""The load stops here even if no poll was seen (the test then fails): a safety net only."""
TIMEOUT_SECONDS = 30
"""Generous on purpose: how long a scrape takes is reported, not asserted."""
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
"""What Prometheus sends when it scrapes."""
PROCESS_VALUE = re.compile(r"^(process_\S*) \S+$", re.MULTILINE)
"""A sample line of the process collector (CPU, memory, file descriptors), without labels."""
PROCESS_LINE = re.compile(r"^(?:# (?:HELP|TYPE|UNIT) )?process_.*\n", re.MULTILINE)
"""A line of a process_* family: its metadata and its sample."""


@dataclasses.dataclass
class Scrape:
    openmetrics: bool
    seconds: float
    status: int | None = None
    body: str = ""
    problem: str | None = None
    polls: float | None = None
    """Successful polls the exporter had counted when it answered (read after the load)."""
    shape: bytes = b""
    """Digest of the body with its process_* values masked; its other bytes are all in it."""
    process_lines: str = ""


class Bodies:
    """What the scrapers got, kept small: one body per shape, the process_* lines of each.

    Bodies between two polls differ only in the process collector's values (CPU time and memory
    move on every scrape). A body of the same shape as one that parses, whose own process_*
    lines parse under their own metadata, parses too: every other byte, and every line's place,
    is the same. So each shape is parsed whole once, and the process_* lines of every body.
    """

    def __init__(self) -> None:
        self.first: dict[tuple[bool, int | None, bytes], Scrape] = {}

    def keep(self, scrape: Scrape, body: str) -> None:
        """Note the body's shape and process lines; keep the whole body if its shape is new."""
        masked = PROCESS_VALUE.sub(r"\1 _", body)
        scrape.shape = hashlib.sha256(masked.encode()).digest()
        scrape.process_lines = "".join(PROCESS_LINE.findall(body))
        scrape.body = body
        if self.first.setdefault(self.key(scrape), scrape) is not scrape:
            scrape.body = ""  # the first body of this shape is kept: let this one go

    @staticmethod
    def key(scrape: Scrape) -> tuple[bool, int | None, bytes]:
        return scrape.openmetrics, scrape.status, scrape.shape

    def read_all(self, scrapes: list[Scrape], organization: str) -> None:
        """Set every scrape's problem (if any) and poll count, as if its body were parsed whole."""
        for first in self.first.values():
            read(first, organization)
        for scrape in scrapes:
            if scrape.problem is not None or scrape.status != 200:
                read(scrape, organization)  # the answer itself was the problem
                continue
            first = self.first[self.key(scrape)]
            if first is scrape:
                continue
            scrape.problem, scrape.polls = first.problem, first.polls
            if scrape.problem is None:
                own = scrape.process_lines + ("# EOF\n" if scrape.openmetrics else "")
                parse = openmetrics_families if scrape.openmetrics else text_families
                try:
                    list(parse(own))
                except Exception as error:  # any parse error is a finding, as in `read`
                    scrape.problem = f"unparsable process_* lines: {error!r}"


def read(scrape: Scrape, organization: str) -> None:
    """Parse the body of one /metrics answer; set its problem (if any) and poll count."""
    if scrape.problem is not None:
        return
    if scrape.status != 200:
        scrape.problem = f"HTTP {scrape.status}"
        return
    parse = openmetrics_families if scrape.openmetrics else text_families
    try:
        families = list(parse(scrape.body))
    except Exception as error:  # any parse error is a finding, reported with the others
        scrape.problem = f"unparsable: {error!r}"
        return
    totals: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.labels.get("organization") != organization:
                continue
            if sample.name in ("magnet_sessions", "magnet_up"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            elif (
                sample.name == "magnet_exporter_polls_total"
                and sample.labels["outcome"] == "success"
            ):
                scrape.polls = sample.value
    if totals.get("magnet_up") != 1:
        scrape.problem = f"magnet_up is {totals.get('magnet_up')}"
    # One whole poll: the simulator always lists exactly LISTED_SESSIONS sessions.
    elif totals.get("magnet_sessions") != LISTED_SESSIONS:
        scrape.problem = f"sum(magnet_sessions) is {totals.get('magnet_sessions')}"
    elif scrape.polls is None:
        scrape.problem = "no magnet_exporter_polls_total{outcome='success'}"
    scrape.body = ""  # parsed: let it go


def scrape_concurrently(
    url: str, seconds: float, until: Callable[[], bool]
) -> tuple[list[list[Scrape]], Bodies, float]:
    """Scrape for `seconds`, on until `until()` is true, then once more from each scraper."""
    start = threading.Barrier(SCRAPERS + 1)
    results: list[list[Scrape]] = [[] for _ in range(SCRAPERS)]
    bodies = Bodies()
    bounds: dict[str, float] = {}

    settled = threading.Event()

    def done() -> bool:
        now = time.monotonic()
        if now >= bounds["soft"] and not settled.is_set() and until():
            settled.set()
        return now >= bounds["end"]

    def scraper(scrapes: list[Scrape], openmetrics: bool) -> None:
        headers = {"accept": PROMETHEUS_ACCEPT} if openmetrics else {}
        with httpx.Client(timeout=TIMEOUT_SECONDS, headers=headers) as client:
            start.wait()
            last = False
            while not last and not done():
                # One more scrape, begun after `until` held, so that it sees what `until` saw
                # (a fixed time after it may pass with every scraper still in its last request).
                last = settled.is_set()
                scrape = Scrape(openmetrics, 0.0)
                began = time.perf_counter()
                try:
                    response = client.get(url)
                except httpx.HTTPError as error:
                    scrape.seconds = time.perf_counter() - began
                    scrape.problem = repr(error)
                else:
                    scrape.seconds = time.perf_counter() - began
                    scrape.status = response.status_code
                    bodies.keep(scrape, response.text)
                scrapes.append(scrape)

    threads = [
        threading.Thread(target=scraper, args=(scrapes, index % 2 == 1), name=f"scraper-{index}")
        for index, scrapes in enumerate(results)
    ]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    bounds.update(soft=began + seconds, end=began + LOAD_LIMIT_SECONDS)
    start.wait()
    for thread in threads:
        thread.join(timeout=LOAD_LIMIT_SECONDS + TIMEOUT_SECONDS + 5)
    assert not any(thread.is_alive() for thread in threads)
    return results, bodies, time.monotonic() - began


def check_and_report(
    title: str,
    results: list[list[Scrape]],
    bodies: Bodies,
    organization: str,
    duration: float,
    polls: int,
) -> None:
    scrapes = [scrape for scrapes in results for scrape in scrapes]
    latencies = sorted(scrape.seconds * 1000 for scrape in scrapes)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"\n{title}: {len(scrapes)} requests by {SCRAPERS} scrapers in {duration:.2f} s "
        f"({len(scrapes) / duration:.0f}/s, {len(bodies.first)} shapes) while {polls} polls ran; "
        "latency ms: "
        f"p50 {cuts[49]:.1f}, p90 {cuts[89]:.1f}, p99 {cuts[98]:.1f}, max {latencies[-1]:.1f}"
    )
    assert all(scrapes for scrapes in results), "some scraper got no answer at all"
    bodies.read_all(scrapes, organization)
    problems = [scrape.problem for scrape in scrapes if scrape.problem is not None]
    assert not problems, f"{len(problems)} of {len(scrapes)} scrapes failed, e.g. {problems[:5]}"
    assert {scrape.status for scrape in scrapes} == {200}
    assert {scrape.openmetrics for scrape in scrapes} == {True, False}
    for scraper_scrapes in results:  # each scraper sees the poll count only go up
        counts = [scrape.polls or 0.0 for scrape in scraper_scrapes]
        assert counts == sorted(counts)
    seen = {scrape.polls for scrape in scrapes}
    assert len(seen) > 1, f"every scrape saw poll {seen}: no poll ran during the load"


def test_fifty_scrapers_while_polls_run_in_process(
    exporter_factory: Callable[..., RunningExporter], sim_clock: FakeClock
) -> None:
    """The exporter of the tests, polling as fast as it can (every 20 ms) during the load."""
    exporter = exporter_factory()
    assert exporter.poll().up
    stop = threading.Event()
    polls: list[bool] = []

    def poll_again_and_again() -> None:
        while not stop.wait(0.02):
            sim_clock.advance(7)  # the simulated API's answers change from poll to poll
            polls.append(exporter.poll().up)

    def polled_during_the_load() -> bool:
        """Two more polls ended since the load began: at least one ran wholly within it."""
        return len(polls) >= polls_before + 2

    poller = threading.Thread(target=poll_again_and_again, name="poll-loop")
    poller.start()
    polls_before = len(polls)
    try:
        results, bodies, duration = scrape_concurrently(
            exporter.url + "/metrics", 2.0, polled_during_the_load
        )
    finally:
        stop.set()
        poller.join(timeout=10)
    assert not poller.is_alive()
    assert polls
    assert all(polls), f"{polls.count(False)} of {len(polls)} polls failed"
    check_and_report("in-process exporter", results, bodies, "default", duration, len(polls))


def test_fifty_scrapers_against_the_demo_exporter(tmp_path: Path) -> None:
    """`magnet-exporter --demo` in its own process: scrape until it has polled again."""
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "magnet_exporter", "--demo", "--listen-address", address]
    url = f"http://{address}"
    with background_process(command, tmp_path / "exporter.log", f"{url}/-/ready", exporter_env()):
        first = Scrape(False, 0.0)
        response = httpx.get(f"{url}/metrics", timeout=TIMEOUT_SECONDS)
        first.status, first.body = response.status_code, response.text
        read(first, "default")
        assert first.problem is None, first.problem
        assert first.polls is not None

        seen = {"again": False, "next_look": 0.0}
        looks: list[float] = []  # the poll count at each look, all during the load
        looking = threading.Lock()

        def polled_again() -> bool:
            """Look (at most every 0.5 s, one scraper at a time) whether a poll has run since.

            Since the first look, not since `first`: a poll may have run before the load began.
            """
            if seen["again"] or time.monotonic() < seen["next_look"]:
                return seen["again"]
            if looking.acquire(blocking=False):
                try:
                    seen["next_look"] = time.monotonic() + 0.5
                    scrape = Scrape(False, 0.0)
                    response = httpx.get(f"{url}/metrics", timeout=TIMEOUT_SECONDS)
                    scrape.status, scrape.body = response.status_code, response.text
                    read(scrape, "default")
                    looks.append(scrape.polls or 0.0)
                    seen["again"] = looks[-1] > looks[0]
                finally:
                    looking.release()
            return seen["again"]

        # The demo polls every 5 s: scrape on until it has polled again, however long it takes.
        results, bodies, duration = scrape_concurrently(f"{url}/metrics", 1.0, polled_again)
    check_and_report("demo exporter subprocess", results, bodies, "default", duration, 1)


def test_a_body_is_checked_whole_even_when_only_its_process_values_are_new() -> None:
    """The shortcut for bodies of a known shape still finds a bad value or a torn body."""
    template = (
        "# HELP magnet_up Up.\n# TYPE magnet_up gauge\n"
        'magnet_up{organization="default"} 1.0\n'
        "# HELP magnet_sessions Sessions.\n# TYPE magnet_sessions gauge\n"
        f'magnet_sessions{{organization="default"}} {LISTED_SESSIONS}.0\n'
        "# HELP magnet_exporter_polls_total Polls.\n# TYPE magnet_exporter_polls_total counter\n"
        'magnet_exporter_polls_total{organization="default",outcome="success"} 3.0\n'
        "# HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total {cpu}\n"
    )
    good, moved, broken = (template.replace("{cpu}", cpu) for cpu in ("1.5", "1.75", "1.x"))
    torn = good[: len(good) // 2]
    bodies = Bodies()
    scrapes = [Scrape(False, 0.0, status=200) for _ in range(4)]
    for scrape, body in zip(scrapes, (good, moved, broken, torn), strict=True):
        bodies.keep(scrape, body)
    assert len(bodies.first) == 2  # good, moved and broken share a shape; torn has its own
    bodies.read_all(scrapes, "default")
    assert [scrape.polls for scrape in scrapes[:2]] == [3.0, 3.0]
    assert [scrape.problem is None for scrape in scrapes] == [True, True, False, False]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the backlog")
def test_the_listen_backlog_holds_fifty_scrapers(
    exporter_factory: Callable[..., RunningExporter],
) -> None:
    """Past the backlog, connections wait for SYN-ACK retransmissions: 1, 3, 7, 15 s."""
    exporter = exporter_factory()
    listening = subprocess.run(
        ["ss", "-ltnH", f"sport = :{exporter.server.port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    backlog = int(listening[2])  # for a listening socket, Send-Q is the backlog
    assert backlog >= SCRAPERS
