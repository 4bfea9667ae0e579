"""Peak resident memory that processing one body adds, measured in a fresh process.

Run: `python -m benchmarks.memory {parse,loads} BODY_FILE`. Prints one JSON line,
`{"added": BYTES, "body": BYTES}`: the peak resident size while the body was processed, less
the resident size just before (body bytes, imports and the parser already in it).
"""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Callable
from pathlib import Path

from benchmarks import api
from benchmarks.procfs import reset_peak, status_bytes
from magnet_exporter.model import SnapshotParser

LABELS = ("status", "pr_status", "model")
"""The default session labels."""


def work(mode: str) -> Callable[[bytes], object]:
    """What processes a body in `mode`, built beforehand so that building it is not counted."""
    if mode == "parse":
        parser = SnapshotParser(LABELS)
        return lambda body: parser.parse(body, api.FROZEN_AT)
    return json.loads


def measure(process: Callable[[bytes], object], body: bytes) -> int:
    """Bytes by which the resident size peaked above its level before `process(body)`."""
    gc.collect()
    reset_peak()
    before = status_bytes("VmRSS")
    result = process(body)
    peak = status_bytes("VmHWM")
    del result
    return peak - before


def main() -> None:
    """Measure one mode on one body file and print the result."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("parse", "loads"))
    parser.add_argument("body_file", type=Path)
    args = parser.parse_args()
    body = args.body_file.read_bytes()
    added = measure(work(args.mode), body)
    print(json.dumps({"added": added, "body": len(body)}))


if __name__ == "__main__":
    main()
