"""Child processes of the benchmarks: started in a work directory, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.procfs import descendants

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "k"
READY_SECONDS = 60.0


class BenchmarkError(Exception):
    """The benchmark cannot give a figure: a child failed, or the exporters disagree."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child: the benchmarks importable, no MAGNET_* settings of the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAGNET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return {**env, **extra}


@contextlib.contextmanager
def child(
    arguments: Sequence[str], workdir: Path, env: dict[str, str] | None = None, **popen: Any
) -> Iterator[subprocess.Popen[str]]:
    """Run `python ARGUMENTS` in `workdir` (no .env there); always stop it and its children."""
    command = [sys.executable, *arguments]
    env = env or child_env()
    with subprocess.Popen(command, cwd=workdir, env=env, text=True, **popen) as process:
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen[str]) -> None:
    """Terminate a child, then kill whatever it started and left behind."""
    family = descendants(process.pid)
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(
    process: subprocess.Popen[str], url: str, ready: Callable[[httpx.Response], bool]
) -> None:
    """Wait until `url` answers as `ready` wants; fail if the process ends or time runs out."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"{process.args!r} exited with code {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if ready(httpx.get(url, headers={"x-api-key": API_KEY}, timeout=10)):
                return
        time.sleep(0.1)
    raise BenchmarkError(f"{url} not ready within {READY_SECONDS:.0f} s")
