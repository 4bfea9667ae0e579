"""Fixtures shared by the test modules: free ports and a demo exporter in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def exporter_env(**extra: str) -> dict[str, str]:
    """Environment for an exporter subprocess: no inherited MAGNET_ settings, no .env lookup."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGNET_")}
    env.update(extra)
    return env


@pytest.fixture
def demo_exporter(tmp_path: Path) -> Iterator[str]:
    """Run `magnet-exporter --demo` in a subprocess on a free port; yield its base URL."""
    port = free_port()
    log = (tmp_path / "exporter.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "magnet_exporter", "--demo", "--listen-address", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=exporter_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_status(f"{base_url}/-/ready", 200, timeout=15)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
