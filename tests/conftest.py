"""Shared test fixtures: ports, the simulated API, exporters in and out of process."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import disable_created_metrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from magnet_exporter.cli import Exporter, exporter_registry, http_client
from magnet_exporter.demo import DemoApiServer, SimulatedMagnet
from magnet_exporter.poller import Poller, PollState
from magnet_exporter.server import HttpServer
from magnet_exporter.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# As `magnet-exporter` does at start: no `*_created` series.
disable_created_metrics()  # type: ignore[no-untyped-call]


@pytest.fixture(autouse=True)
def run_alone_if_marked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """With pytest-xdist, a test marked `alone` runs while no other test runs in any worker.

    Such tests open thousands of connections (which take the ephemeral ports that other tests'
    servers are about to bind) or load the machine on purpose. A readers-writer lock shared by
    the workers: each test holds the run lock shared, a test marked `alone` holds it exclusive.
    The gate lets an `alone` test in as soon as the tests under way end: while it waits at the
    gate's far side, no other test can take the run lock. Without xdist tests run one at a
    time anyway, and nothing is locked.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # the same for every worker of this run
    alone = request.node.get_closest_marker("alone") is not None
    with (shared / "gate.lock").open("a") as gate, (shared / "run.lock").open("a") as run:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_status(url: str, status: int, timeout: float) -> None:
    """Poll `url` until it answers `status`, or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == status:
                return
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last = type(exc).__name__
        time.sleep(0.05)
    pytest.fail(f"{url} did not answer {status} within {timeout}s (last: {last})")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Check `condition` every 10 ms until it holds, or fail the test after `timeout` seconds.

    The timeout only keeps a broken test from hanging: it is far above what a loaded machine
    needs, so the test proves behaviour, not speed.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def exporter_env(**extra: str) -> dict[str, str]:
    """Environment for an exporter subprocess: no inherited MAGNET_ settings, no .env lookup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def background_process(
    command: list[str], log_path: Path, ready_url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` with its output in `log_path`, wait until `ready_url` answers 200.

    The process is always stopped at the end (SIGTERM, then SIGKILL after 5 s), also when
    it never got ready or the test failed.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=log_path.parent, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_status(ready_url, 200, timeout=15)
            yield process
        finally:
            terminate(process)


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Ask a process to stop, kill it if it has not within 5 s, and reap it."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_poller_until(poller: Poller, done: Callable[[], bool], timeout: float) -> None:
    """Run the poller's loop in a thread until `done()` or `timeout`; the loop must then stop."""
    stop = threading.Event()
    loop = threading.Thread(target=poller.run, args=(stop,))
    loop.start()
    try:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        loop.join(timeout=2)
    assert not loop.is_alive()


def demo_exporter_command(address: str) -> list[str]:
    """The command of `magnet-exporter --demo` listening on `address` (host:port)."""
    return [sys.executable, "-m", "magnet_exporter", "--demo", f"--listen-address={address}"]


def prometheus_command(binary: str, config: Path, data: Path, address: str) -> list[str]:
    """The command of a Prometheus server: its config file, data directory and address."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    ]


@pytest.fixture
def demo_exporter(tmp_path: Path) -> Iterator[str]:
    """Run `magnet-exporter --demo` in a subprocess on a free port; yield its base URL."""
    base_url = f"http://127.0.0.1:{free_port()}"
    command = demo_exporter_command(base_url.removeprefix("http://"))
    with background_process(
        command, tmp_path / "exporter.log", f"{base_url}/-/ready", env=exporter_env()
    ):
        yield base_url


SECRET_KEY = "mgk_live_TOPSECRET_4f9c2e7a"
"""The API key the tests use: it must never show up in logs, pages, metrics or errors."""

FIXED_NOW = 1_795_000_000.0
"""A fixed moment for the simulator, so its answers can be compared with what is exported."""


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: float = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def sim_clock() -> FakeClock:
    return FakeClock()


def stop_promptly(server: DemoApiServer) -> None:
    """Stop the simulated API without waiting out the 0.1 s poll interval of its accept loop.

    The loop looks for a shutdown only when its `select` returns, which a new connection makes
    it do at once: connections are opened (and closed unused) until `stop` returns. Over the
    hundreds of tests that use the simulator, this saves tens of seconds.
    """
    address = server.url.removeprefix("http://").rsplit(":", 1)
    stopped = threading.Event()

    def wake() -> None:
        while not stopped.wait(0.002):
            try:
                socket.create_connection((address[0], int(address[1])), timeout=1).close()
            except OSError:
                return  # the socket is closed: the loop has ended

    waker = threading.Thread(target=wake, name="wake-demo-api")
    waker.start()
    try:
        server.stop()
    finally:
        stopped.set()
        waker.join()


@pytest.fixture
def simulator(sim_clock: FakeClock) -> Iterator[DemoApiServer]:
    """The simulated Magnet API on a free loopback port, at a fixed time."""
    server = DemoApiServer(SimulatedMagnet(seed=7, clock=sim_clock)).start()
    try:
        yield server
    finally:
        stop_promptly(server)


class RunningExporter:
    """An exporter wired as in production, served over HTTP; polls only when told to."""

    def __init__(self, settings: Settings, clock: FakeClock) -> None:
        self.settings = settings
        self.clock = clock
        self.http = http_client(settings)
        self.registry = exporter_registry()
        # The test's clock is both clocks: one that never steps.
        self.exporter = Exporter(settings, self.http, self.registry, clock, monotonic=clock)
        self.server = HttpServer(self.exporter.app, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def poll(self) -> PollState:
        (poller,) = self.exporter.pollers.values()
        return poller.poll_once()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def metrics(self) -> dict[str, list[Sample]]:
        """The samples on /metrics, parsed by prometheus-client, by metric family name."""
        response = self.get("/metrics")
        assert response.status_code == 200
        families = text_string_to_metric_families(response.text)
        return {family.name: list(family.samples) for family in families}

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample called `name` whose labels include `labels`."""
        found = [
            s.value
            for samples in self.metrics().values()
            for s in samples
            if s.name == name and labels.items() <= s.labels.items()
        ]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0] if found else None


def make_settings(**values: object) -> Settings:
    """Settings from keyword arguments only: no environment, no .env file."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def exporter_factory(
    simulator: DemoApiServer,
) -> Iterator[Callable[..., RunningExporter]]:
    """Build exporters against the simulator (or elsewhere); all are stopped at the end."""
    running: list[RunningExporter] = []

    def build(clock: FakeClock | None = None, **values: object) -> RunningExporter:
        values.setdefault("api_url", simulator.url)
        values.setdefault("api_key", SECRET_KEY)
        exporter = RunningExporter(make_settings(**values), clock or FakeClock())
        exporter.server.start()
        running.append(exporter)
        return exporter

    try:
        yield build
    finally:
        for exporter in running:
            exporter.server.stop()
            exporter.http.close()


@pytest.fixture
def exporter(exporter_factory: Callable[..., RunningExporter]) -> RunningExporter:
    """An exporter with default settings against the simulator."""
    return exporter_factory()
