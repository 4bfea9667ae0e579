"""The simulated Magnet API with a stopped clock, so that every answer is the same body.

Run: `python -m benchmarks.api --sessions N --port PORT`. The body is built on the first
request and served from memory after that: the API must cost the benchmark next to nothing.
"""

from __future__ import annotations

import argparse
import json

from magnet_exporter.demo import DemoApiServer, SimulatedMagnet

SEED = 1
FROZEN_AT = 1_795_000_000.0
"""2026-11-18T09:46:40Z: a fixed moment, so that the payloads are the same in every run."""
ORGANIZATION = "acme"


def simulator(sessions: int) -> SimulatedMagnet:
    """The simulator the benchmark payloads come from: fixed seed, stopped clock."""
    return SimulatedMagnet(seed=SEED, clock=lambda: FROZEN_AT, listed_sessions=sessions)


def payload(sessions: int) -> bytes:
    """The List Sessions body with `sessions` sessions, as the API would send it."""
    return json.dumps(simulator(sessions).sessions_response(ORGANIZATION)).encode()


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = DemoApiServer(simulator(args.sessions), port=args.port)
    server.sessions_body(ORGANIZATION)  # built before the first poll, outside any timing
    server.serve_forever()


if __name__ == "__main__":
    main()
