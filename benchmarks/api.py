"""The simulated Magnet API with a stopped clock, so that every answer is the same body.

Run: `python -m benchmarks.api --sessions N --port PORT` (or `--body-file FILE` to serve a body
made beforehand). The body is built before the first request and served from memory after
that: the API must cost the benchmark next to nothing.

From 1,000 sessions on, the organization is shaped like a real one (`Population`): hundreds
of authors with a long tail, tens of repositories, a branch and pull request per session.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from magnet_exporter.demo import DemoApiServer, Population, SimulatedMagnet

SEED = 1
FROZEN_AT = 1_795_000_000.0
"""2026-11-18T09:46:40Z: a fixed moment, so that the payloads are the same in every run."""
ORGANIZATION = "acme"
REALISTIC_FROM = 1_000
"""Sessions from which a body comes from a realistic population."""
AUTHORS = 500


def population(sessions: int, authors: int = AUTHORS) -> Population | None:
    """The population of a body of `sessions`; None: the demo's own small organization."""
    return Population(authors=authors) if sessions >= REALISTIC_FROM else None


def simulator(sessions: int, authors: int = AUTHORS) -> SimulatedMagnet:
    """The simulator the benchmark payloads come from: fixed seed, stopped clock."""
    return SimulatedMagnet(
        seed=SEED,
        clock=lambda: FROZEN_AT,
        listed_sessions=sessions,
        population=population(sessions, authors),
    )


def payload(sessions: int, authors: int = AUTHORS) -> bytes:
    """The List Sessions body with `sessions` sessions, as the API would send it."""
    return json.dumps(simulator(sessions, authors).sessions_response(ORGANIZATION)).encode()


_AUTHOR_ID = re.compile(rb'"id": "user_\d+", "name": "[^"]*"')


def one_author(body: bytes) -> bytes:
    """The same body with every session by one author."""
    return _AUTHOR_ID.sub(b'"id": "user_0001", "name": "Ada Abe"', body)


def equal_values(body: bytes) -> bytes:
    """The same body with one title, branch and pull request URL for every session."""
    document = json.loads(body)
    for session in document["sessions"]:
        session["title"] = "Fix the flaky test"
        metadata = session.get("metadata") or {}
        if "branch" in metadata:
            metadata["branch"] = "agent/task"
        if "prUrl" in metadata:
            metadata["prUrl"] = "https://github.com/acme/repo/pull/1"
    return json.dumps(document).encode()


class _Recorded(SimulatedMagnet):
    """Answers with a document read from a file, at the frozen moment."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__(seed=SEED, clock=lambda: FROZEN_AT)
        self._document = document

    def sessions_response(self, organization: str) -> dict[str, Any]:
        """Return the recorded document, whoever asks."""
        return self._document


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int)
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.body_file is not None:
        magnet: SimulatedMagnet = _Recorded(json.loads(args.body_file.read_bytes()))
    elif args.sessions is not None:
        magnet = simulator(args.sessions)
    else:
        parser.error("give --sessions or --body-file")
    server = DemoApiServer(magnet, port=args.port)
    server.sessions_body(ORGANIZATION)  # built before the first poll, outside any timing
    server.serve_forever()


if __name__ == "__main__":
    main()
