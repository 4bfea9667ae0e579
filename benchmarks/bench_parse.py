"""Benchmark: validating and aggregating a large List Sessions body against `json.loads` alone.

Run: `python benchmarks/bench_parse.py [--sessions 100000] [--rounds 7]`. The budget is a ratio,
so it holds on any machine: parse_snapshot must take at most 0.6 times what json.loads takes.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from magnet_exporter.model import parse_snapshot

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "api" / "list-sessions.example.json"
BUDGET = 0.6
PR_STATUSES = ["open", "draft", "merged", "closed"]


def moment(rng: random.Random, minute: int) -> str:
    """A timestamp in November 2026, in the API's format."""
    return f"2026-11-{rng.randint(1, 27):02d}T{rng.randint(0, 23):02d}:{minute:02d}:00.000Z"


def build_body(sessions: int, seed: int = 1) -> bytes:
    """A body in the documented shape with varied statuses, models, repositories and authors."""
    rng = random.Random(seed)
    template = {
        "title": "Add input validation to signup form",
        "firstMessagePreview": "Add input validation to the signup form...",
        "lastMessagePreview": "I've opened PR #42 with the changes...",
    }
    items = []
    for index in range(sessions):
        has_pr = rng.random() < 0.7
        items.append(
            {
                "id": f"cm{index:010d}",
                **template,
                "status": rng.choice(["active", "completed", "completed", "failed"]),
                "createdAt": moment(rng, minute=30),
                "updatedAt": moment(rng, minute=45),
                "model": rng.choice(["claude-opus-4-6", "claude-sonnet-4-6", "gpt-5"]),
                "author": {
                    "id": f"user_{rng.randint(1, 50)}",
                    "name": "Alice Chen",
                    "imageUrl": "",
                },
                "metadata": {
                    "repository": f"acme/repo-{rng.randint(1, 20)}",
                    "branch": f"agent/change-{index}",
                    "prNumber": index if has_pr else None,
                    "prUrl": f"https://github.com/acme/web-app/pull/{index}" if has_pr else None,
                    "prStatus": rng.choice(PR_STATUSES) if has_pr else None,
                },
                "messageCount": rng.randint(1, 80),
            }
        )
    stats = {
        "mergesPastWeek": 8,
        "authorsPastWeek": 3,
        "humansPastWeek": 5,
        "humansPromptingNow": 1,
    }
    if EXAMPLE.exists():
        stats = json.loads(EXAMPLE.read_bytes())["stats"]
    return json.dumps({"sessions": items, "stats": stats}).encode()


def timed(work: Callable[[], object]) -> float:
    """CPU seconds one call takes (other processes do not count); the result is dropped untimed."""
    start = time.process_time()
    result = work()
    elapsed = time.process_time() - start
    del result
    return elapsed


def main() -> int:
    """Measure both, interleaved, and print medians and the ratio against the budget."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    body = build_body(args.sessions)
    gc.collect()
    labels = ("status", "pr_status", "model")
    loads, parse = [], []
    for _ in range(args.rounds):
        loads.append(timed(lambda: json.loads(body)))
        parse.append(timed(lambda: parse_snapshot(body, labels)))
    # The best of several rounds: noise from the rest of the machine only ever adds time.
    ratio = min(parse) / min(loads)
    print(f"body: {len(body) / 1e6:.1f} MB, {args.sessions} sessions, {args.rounds} rounds")
    for name, times in (("json.loads", loads), ("parse_snapshot", parse)):
        best, median = min(times) * 1000, statistics.median(times) * 1000
        print(f"{name + ':':16s}best {best:.0f} ms, median {median:.0f} ms")
    print(f"ratio of the bests: {ratio:.2f} (budget {BUDGET})")
    return 0 if ratio <= BUDGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
