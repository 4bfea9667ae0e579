"""A flood of connections: threads stay few, memory grows little, scrapes and polls go on.

The exporter runs in its own process (`--demo`, whose simulated API is in that process too), so
that its threads and resident memory can be read in /proc. The flood stays on loopback, is
bounded in count and time, and is always closed at the end.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from conftest import RunningExporter, background_process, exporter_env, free_port, terminate
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter.server import (
    DEFAULT_TLS_MAX_CONNECTIONS,
    HEAD_TIMEOUT_SECONDS,
    HTTP_THREADS,
    SWEEP_SECONDS,
)

# Thousands of connections take the ephemeral ports other tests' servers are about to bind.
pytestmark = pytest.mark.alone

FLOOD = 10_000
HOLD_SECONDS = 20.0
MEMORY_ALLOWANCE = 64 * 2**20
"""Resident memory the flood may add to the exporter's idle figure (about 2.5 kB each)."""
ORGANIZATIONS = 1
DOCUMENTED_THREADS = 1 + ORGANIZATIONS + HTTP_THREADS + (1 + ORGANIZATIONS)
"""The main thread, a poller per organization, the HTTP server's, and with `--demo` the
simulated API's listener and a thread per request it is answering (one per poll worker)."""
SCRAPE_SECONDS = 5.0
EXIT_SECONDS = 2.0
STALLED = 200
STALLED_CLOSED_SECONDS = 15.0


@pytest.fixture(autouse=True)
def open_files_for_the_flood() -> Iterator[None]:
    """Let this process hold the flood's sockets, as the exporter does for its side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 1_000:
        pytest.skip(f"the hard limit on open files ({hard}) is below the flood")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def status(pid: int) -> tuple[int, int]:
    """Return the resident memory (bytes) and the thread count of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"])


@contextlib.contextmanager
def flood(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    """Open `count` connections (sending `first_bytes` on each); close them all at the end."""
    sockets: list[socket.socket] = []
    deadline = time.monotonic() + 60
    try:
        while len(sockets) < count and time.monotonic() < deadline:
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(connection)
            if first_bytes:
                connection.sendall(first_bytes)
        assert len(sockets) == count, f"opened only {len(sockets)} connections in 60 s"
        yield sockets
    finally:
        for connection in sockets:  # all at once, as a client process that ends
            connection.close()


def scrape(url: str) -> tuple[float, dict[str, float]]:
    """Scrape /metrics on a new connection; return its seconds and the samples by name."""
    started = time.monotonic()
    response = httpx.get(f"{url}/metrics", timeout=30)  # the bound is asserted by the caller
    seconds = time.monotonic() - started
    assert response.status_code == 200
    samples = {
        sample.name + repr(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return seconds, samples


SUCCESSFUL_POLLS = "magnet_exporter_polls_total" + repr(
    sorted({"organization": "default", "outcome": "success"}.items())
)
OPEN_FDS = "process_open_fds[]"


def wait_until_held(url: str, count: int) -> None:
    """Wait until the exporter holds `count` files: the flood is accepted."""
    samples: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seconds, samples = scrape(url)
        assert seconds < SCRAPE_SECONDS
        if samples[OPEN_FDS] >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"the exporter holds {samples[OPEN_FDS]:.0f} files, not {count}")


def sigterm(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Send SIGTERM; return the exit code and the seconds until the process ended."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    return code, time.monotonic() - started


@contextlib.contextmanager
def demo_exporter(tmp_path: Path, name: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`magnet-exporter --demo`, polling every 5 s, on a free loopback port."""
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "magnet_exporter", "--demo", f"--listen-address={address}"]
    command.append("--poll-interval=5")
    url = f"http://{address}"
    with background_process(
        command, tmp_path / f"{name}.log", f"{url}/-/ready", exporter_env()
    ) as process:
        yield process, url


def still_open(connection: socket.socket) -> bool:
    """Tell whether the server has left a connection open (nothing to read, no end)."""
    timeout = connection.gettimeout()
    connection.settimeout(0)  # a look, not a wait
    try:
        return connection.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        connection.settimeout(timeout)


def test_ten_thousand_idle_connections(tmp_path: Path) -> None:
    with demo_exporter(tmp_path, "exporter") as (process, url):
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            scrape(url)
        idle_memory, idle_threads = status(process.pid)
        _, samples = scrape(url)
        files = samples[OPEN_FDS]
        with flood(port, FLOOD) as connections:
            wait_until_held(url, files + FLOOD)
            _, samples = scrape(url)
            first_polls = samples[SUCCESSFUL_POLLS]
            memory, threads, latencies = [], [], []
            held_until = time.monotonic() + HOLD_SECONDS
            while time.monotonic() < held_until:
                resident, count = status(process.pid)
                memory.append(resident)
                threads.append(count)
                seconds, samples = scrape(url)
                latencies.append(seconds)
                time.sleep(1)
            last_polls = samples[SUCCESSFUL_POLLS]
            assert all(still_open(connection) for connection in connections[::100])
            code, exit_seconds = sigterm(process)
        growth = max(memory) - idle_memory
        print(
            f"\n{FLOOD} idle connections: threads {idle_threads} idle, {max(threads)} flooded; "
            f"resident {idle_memory / 2**20:.1f} MB idle, +{growth / 2**20:.1f} MB flooded "
            f"({growth / FLOOD:.0f} B each); scrape p100 {max(latencies):.3f} s; "
            f"polls {first_polls:.0f} -> {last_polls:.0f}; SIGTERM exit {exit_seconds:.2f} s"
        )
        assert growth <= MEMORY_ALLOWANCE
        assert max(threads) <= DOCUMENTED_THREADS <= 64
        assert max(latencies) < SCRAPE_SECONDS
        assert last_polls > first_polls, "no poll succeeded during the flood"
        assert code == 0
        assert exit_seconds < EXIT_SECONDS


def test_sigterm_right_after_ten_thousand_connections_close(tmp_path: Path) -> None:
    with demo_exporter(tmp_path, "exporter") as (process, url):
        port = int(url.rsplit(":", 1)[1])
        _, samples = scrape(url)
        with flood(port, FLOOD):
            wait_until_held(url, samples[OPEN_FDS] + FLOOD)
        code, exit_seconds = sigterm(process)
        print(f"\nSIGTERM right after {FLOOD} connections closed: exit {exit_seconds:.2f} s")
        assert code == 0
        assert exit_seconds < EXIT_SECONDS


def test_stalled_request_heads_are_closed_and_do_not_hold_up_scrapes(
    exporter_factory: Callable[..., RunningExporter],
) -> None:
    exporter = exporter_factory()
    exporter.poll()
    with socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5) as idle:
        started = time.monotonic()
        with flood(exporter.server.port, STALLED, b"GET /metrics HTTP/1.1\r\nHost: loc") as stalled:
            seconds, _ = scrape(exporter.url)
            assert seconds < SCRAPE_SECONDS
            closed_after: list[float] = []
            pending = list(stalled)
            deadline = started + STALLED_CLOSED_SECONDS + 5  # to see late closes as late
            while pending and time.monotonic() < deadline:
                time.sleep(0.1)
                ended = [connection for connection in pending if not still_open(connection)]
                closed_after += [time.monotonic() - started] * len(ended)
                pending = [connection for connection in pending if connection not in ended]
            assert not pending, f"{len(pending)} stalled connections still open"
            assert max(closed_after) <= STALLED_CLOSED_SECONDS
            # Not closed before the head's deadline, less the sweep's step.
            assert min(closed_after) >= HEAD_TIMEOUT_SECONDS - SWEEP_SECONDS
        # A connection with no request on its way is kept, as Prometheus keeps its own.
        assert still_open(idle)
        idle.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")


TLS_FLOOD = DEFAULT_TLS_MAX_CONNECTIONS + 1_000
MEMORY_LIMIT = 256 * 2**20
"""The memory limit of the shipped Kubernetes Deployment (256Mi)."""


def test_a_flood_of_tls_connections_stays_within_the_shipped_memory_limit(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    leaf.private_key_pem.write_to_path(tmp_path / "key.pem")
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
    )
    client = ssl.create_default_context()
    ca.configure_trust(client)
    address = ("127.0.0.1", free_port())
    url = f"https://{address[0]}:{address[1]}"
    command = [sys.executable, "-m", "magnet_exporter", "--demo", "--poll-interval=5"]
    command += [f"--listen-address={address[0]}:{address[1]}", "--web.config.file=web.yml"]
    with (tmp_path / "exporter.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=exporter_env(), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(verify=client, timeout=30) as https:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if https.get(f"{url}/-/ready").status_code == 200:
                        break
                time.sleep(0.1)
            idle_memory, _ = status(process.pid)
            assert https.get(f"{url}/metrics").status_code == 200, "not serving over TLS"
            connections: list[socket.socket] = []
            try:
                opened_until = time.monotonic() + 120
                while len(connections) < TLS_FLOOD and time.monotonic() < opened_until:
                    raw = socket.create_connection(address, timeout=10)
                    connections.append(client.wrap_socket(raw, server_hostname=address[0]))
                assert len(connections) == TLS_FLOOD, f"{len(connections)} TLS handshakes in 120 s"
                memory, _ = status(process.pid)
                response = https.get(f"{url}/metrics")
            finally:
                for connection in connections:
                    connection.close()
        assert response.status_code == 200
        files = next(
            sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name == "process_open_fds"
        )
        print(
            f"\n{TLS_FLOOD} TLS connections: {files:.0f} files held; resident "
            f"{idle_memory / 2**20:.1f} MB idle, {memory / 2**20:.1f} MB flooded "
            f"({(memory - idle_memory) / DEFAULT_TLS_MAX_CONNECTIONS:.0f} B each held)"
        )
        assert files <= DEFAULT_TLS_MAX_CONNECTIONS + 64  # the limit, and the exporter's own
        assert memory < MEMORY_LIMIT
    finally:
        terminate(process)
