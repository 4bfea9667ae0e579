"""The exporter as an operator runs it, measured from outside while it polls.

A real `magnet-exporter` process polls the benchmark API (`benchmarks.api`) every few seconds.
A thread samples the memory (PSS) of the exporter and all its children, summed, every few
milliseconds: the figure a container limit sees, which the sum of each process's own peak is
not. The exporter's own metrics give the poll durations and the bytes received.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.children import (
    API_KEY,
    BenchmarkError,
    child,
    child_env,
    free_port,
    wait_until,
)
from benchmarks.procfs import descendants, pss_bytes, tree_cpu_seconds, tree_pss

SAMPLE_SECONDS = 0.01
INTERVAL = 5.0
"""Seconds between polls: the shortest the exporter allows."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """What a run of polls of one body cost the exporter."""

    sessions: int
    polls: int
    poll_seconds: float
    """Mean of `magnet_exporter_poll_duration_seconds` over every poll, the first included."""
    first_poll_seconds: float
    peak_memory: int
    """The highest memory (PSS) of all the exporter's processes together."""
    steady_memory: int
    """All processes together after the last poll, between two polls."""
    cpu_per_poll: float
    """CPU seconds of all processes per poll, from the second poll on."""
    received_per_poll: float
    """Body bytes received from the API per poll (compressed as sent)."""
    body_bytes: float
    """The decoded size of the answer."""


class MemorySampler:
    """Samples the memory of a process tree (PSS, see `tree_pss`) in a thread; keeps the highest.

    Finding the tree walks all of /proc, so it is looked for every `REFRESH_SECONDS` only;
    in between, each sample reads one file per process of the tree (about 0.5 ms each).
    """

    REFRESH_SECONDS = 0.1

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _run(self) -> None:
        tree: list[int] = []
        found_at = -self.REFRESH_SECONDS
        while not self._stop.is_set():
            if time.monotonic() - found_at >= self.REFRESH_SECONDS:
                tree, found_at = [self.pid, *descendants(self.pid)], time.monotonic()
            total = 0
            for pid in tree:
                with contextlib.suppress(OSError):  # ended while we looked
                    total += pss_bytes(pid)
            self.peak = max(self.peak, total)
            self._stop.wait(SAMPLE_SECONDS)

    @contextlib.contextmanager
    def running(self) -> Iterator[MemorySampler]:
        """Sample while the block runs."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def samples(url: str) -> dict[str, float]:
    """Every sample on `url` as `name` (labels dropped, values summed)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for sample in family.samples:
            found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


def wait_until_ready(url: str, timeout: float) -> None:
    """Wait until the exporter at `url` has polled successfully once; fail after `timeout` s.

    Its `/-/ready` is asked twice a second: an answer costs the exporter far less than a
    scrape, and the exporter's first poll, which runs in its own process, is being timed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/-/ready", timeout=30).status_code == 200:
                return
        time.sleep(0.5)
    raise BenchmarkError(f"{url}: no successful poll within {timeout:.0f} s")


def profile(
    body_file: Path, sessions: int, polls: int, workdir: Path, *, memory: bool = False
) -> Profile:
    """Run the exporter on the body in `body_file` for `polls` polls, and measure it.

    With `memory`, the peak memory is sampled too; reading it costs the machine CPU, so the
    times of such a run are not to be trusted (`peak_memory` is 0 without).
    """
    api_port, port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/metrics"
    api_command = ["-m", "benchmarks.api", "--body-file", str(body_file), "--port", str(api_port)]
    command = ["-m", "magnet_exporter", "--api-url", api_url, "--log-level", "warning"]
    command += ["--listen-address", f"127.0.0.1:{port}", "--poll-interval", str(INTERVAL)]
    # Room for the body whatever the default cap: the cap is not what is measured here.
    command += ["--max-response-bytes", str(max(2**26, 2 * body_file.stat().st_size))]
    with child(api_command, workdir) as api_server:
        wait_until(api_server, f"{api_url}/api/sessions", lambda r: r.status_code == 200)
        with child(command, workdir, child_env(MAGNET_API_KEY=API_KEY)) as exporter:
            sampler = MemorySampler(exporter.pid)
            with sampler.running() if memory else contextlib.nullcontext(sampler):
                wait_until_ready(base, timeout=120)
                # A large first poll starts the worker of the next ones, which takes about
                # 0.3 s of CPU to boot: once, so counted out of the CPU per poll.
                time.sleep(INTERVAL / 2)
                first = samples(url)
                cpu_before = tree_cpu_seconds(exporter.pid)
                # The next polls come every INTERVAL s from the first: wake between two polls.
                time.sleep(INTERVAL * (polls - 1))
                cpu_after = tree_cpu_seconds(exporter.pid)
                last = samples(url)
                steady = tree_pss(exporter.pid)
    done = last.get("magnet_exporter_polls_total", 0.0)
    later = done - first.get("magnet_exporter_polls_total", 0.0)
    if later < 1 or last.get("magnet_up", 0.0) != 1.0:
        raise BenchmarkError(f"{sessions:,} sessions: polls failed or too slow ({done:.0f} done)")
    duration = "magnet_exporter_poll_duration_seconds"
    received = last.get("magnet_exporter_received_bytes_total", float("nan"))
    return Profile(
        sessions=sessions,
        polls=int(done),
        poll_seconds=last[f"{duration}_sum"] / last[f"{duration}_count"],
        first_poll_seconds=first[f"{duration}_sum"] / first[f"{duration}_count"],
        peak_memory=sampler.peak,
        steady_memory=steady,
        cpu_per_poll=(cpu_after - cpu_before) / later,
        received_per_poll=received / done,
        body_bytes=last.get("magnet_exporter_response_size_bytes", float(body_file.stat().st_size)),
    )
