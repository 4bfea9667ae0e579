"""Harness: the real exporter, wired as `magnet_exporter.cli.serve` does, polled on command.

As in `serve`, the exporter may poll in worker processes: an organization whose answers are
large (the benchmarks' 10,000 sessions) is polled in a worker from its second poll on.

Run: `python -m benchmarks.exporter --api-url URL`. Prints the port it serves /metrics on, then
reads commands from stdin, one a line:

- `poll N`: run N polls back to back in the background polling thread (/metrics keeps being
  served), then print one JSON line: `{"polls": N, "failed": F, "seconds": S, "rss": BYTES}`, where
  `rss` is the resident memory of this process and all its children, summed.
- `quit`: stop serving and exit.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from types import FrameType

from prometheus_client import disable_created_metrics
from pydantic import SecretStr

from benchmarks.procfs import tree_rss
from magnet_exporter.cli import Exporter, exporter_registry, http_client
from magnet_exporter.logs import configure_logging
from magnet_exporter.poller import Poller
from magnet_exporter.server import HttpServer
from magnet_exporter.settings import Settings

API_KEY = "k"


def run_polls(poller: Poller, batches: queue.Queue[int]) -> None:
    """Run each batch of polls back to back, then report it on stdout."""
    # One thread for every batch, as `serve` polls an organization from one thread for good:
    # the allocator keeps per-thread arenas, so a new thread per batch would inflate memory.
    while True:
        count = batches.get()
        started = time.perf_counter()
        failed = sum(not poller.poll_once().up for _ in range(count))
        seconds = time.perf_counter() - started
        rss = tree_rss(os.getpid())
        report = {"polls": count, "failed": failed, "seconds": seconds, "rss": rss}
        print(json.dumps(report), flush=True)


def obey(poller: Poller) -> None:
    """Run the commands read from stdin until `quit` or its end."""
    batches: queue.Queue[int] = queue.Queue()
    # daemon: SIGTERM must not wait for a batch to end
    threading.Thread(target=run_polls, args=(poller, batches), daemon=True).start()
    for line in sys.stdin:
        command, *arguments = line.split() or [""]
        if command == "quit":
            return
        if command != "poll" or len(arguments) != 1:
            raise SystemExit(f"unknown command: {line.strip()!r}")
        batches.put(int(arguments[0]))


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Through SystemExit, so that whatever the exporter started in children is cleaned up.
    raise SystemExit(128 + signum)


def main() -> None:
    """Serve, print the port, obey stdin."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-url", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    configure_logging("warning", "logfmt")
    settings = Settings(  # type: ignore[call-arg]  # _env_file: no .env lookup
        _env_file=None,
        api_url=args.api_url,
        api_key=SecretStr(API_KEY),
        listen_address="127.0.0.1:0",
    )
    http = http_client(settings)
    exporter = Exporter(settings, http, exporter_registry(), workers=True)  # as serve
    (poller,) = exporter.pollers.values()
    server = HttpServer(exporter.app, "127.0.0.1", 0)
    server.start()
    try:
        print(server.port, flush=True)
        obey(poller)
    finally:
        server.stop()
        exporter.close()
        http.close()


if __name__ == "__main__":
    main()
