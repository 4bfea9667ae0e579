"""Log formats: one line per event, fields kept, values quoted where needed."""

from __future__ import annotations

import json
import logging
import sys

from magnet_exporter.logs import JsonFormatter, LogfmtFormatter


def record(message: str, **fields: object) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {
            "name": "magnet_exporter.poller",
            "levelname": "WARNING",
            "levelno": logging.WARNING,
            "msg": message,
        }
    )
    made.__dict__.update(fields)
    return made


def test_logfmt_line() -> None:
    line = LogfmtFormatter().format(
        record(
            "poll failed",
            outcome="unauthorized",
            status=401,
            reason='401 Unauthorized: check "key"\nnow',
        )
    )
    assert "\n" not in line
    assert line.startswith("ts=")
    assert ' level=warning logger=magnet_exporter.poller msg="poll failed" ' in line
    assert "outcome=unauthorized status=401 " in line
    assert line.endswith('reason="401 Unauthorized: check \\"key\\"\\nnow"')


def test_json_line() -> None:
    line = JsonFormatter().format(record("poll failed", outcome="timeout", duration_seconds=0.5))
    assert "\n" not in line
    document = json.loads(line)
    assert document["level"] == "warning"
    assert document["msg"] == "poll failed"
    assert document["outcome"] == "timeout"
    assert document["duration_seconds"] == 0.5


def test_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("unexpected")
        made.exc_info = sys.exc_info()
    line = LogfmtFormatter().format(made)
    assert "\n" not in line
    assert "ValueError: boom" in line
