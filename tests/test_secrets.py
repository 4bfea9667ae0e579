"""The API key shows nowhere: not in logs at debug level (logfmt or JSON), `check` output, `/`,
`/metrics` or configuration errors, whichever way the key is given and however upstream fails.

Upstream answers here are hostile on purpose: error bodies and pages that echo the key back, as
some APIs and debug error pages do. The exporter runs as a subprocess, as in production.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import SECRET_KEY, background_process, exporter_env, free_port

from magnet_exporter.demo import DemoApiServer, Fault

COMMAND = [sys.executable, "-m", "magnet_exporter"]
FORBIDDEN = (SECRET_KEY, SECRET_KEY.removeprefix("mgk_live_"))
"""The key, and its secret part alone (a key cut short or masked at the front still leaks)."""

ECHOING_401 = Fault(
    status=401, body=json.dumps({"error": f"Invalid API key: {SECRET_KEY}"}).encode()
)
ECHOING_500 = Fault(
    status=500,
    body=(
        "<html><body><h1>Internal Server Error</h1><pre>GET /api/sessions\n"
        f"x-api-key: {SECRET_KEY}\naccept: application/json</pre></body></html>"
    ).encode(),
    content_type="text/html",
)


def leaks(text: str) -> list[str]:
    return [secret for secret in FORBIDDEN if secret in text]


@dataclasses.dataclass(frozen=True)
class KeyWay:
    """One way of giving the key, with the log format used for it."""

    name: str
    log_format: str

    def environment(self, directory: Path) -> dict[str, str]:
        """Write what this way needs into `directory`; return the environment that points at it."""
        if self.name == "env":
            return {"MAGNET_API_KEY": SECRET_KEY}
        if self.name == "file":
            path = directory / "api-key"
            path.write_text(SECRET_KEY + "\n")  # as a Kubernetes or Docker secret has it
            return {"MAGNET_API_KEY_FILE": str(path)}
        path = directory / "magnet-exporter.yaml"
        path.write_text(f"organizations:\n  - name: acme\n    api_key: {SECRET_KEY}\n")
        return {"MAGNET_CONFIG_FILE": str(path)}


KEY_WAYS = (KeyWay("env", "logfmt"), KeyWay("file", "json"), KeyWay("config", "logfmt"))

UPSTREAM_ANSWERS = [
    pytest.param(None, "success", id="success"),
    pytest.param(ECHOING_401, "unauthorized", id="401-echoing-the-key"),
    pytest.param(Fault(status=403, body=b'{"error":"Forbidden"}'), "forbidden", id="403"),
    pytest.param(Fault(status=429, headers=(("Retry-After", "60"),)), "rate_limited", id="429"),
    pytest.param(ECHOING_500, "server_error", id="500-page-echoing-the-key"),
    pytest.param(
        Fault(status=200, body=b"<html>maintenance</html>", content_type="text/html"),
        "invalid_response",
        id="not-json",
    ),
    pytest.param(
        Fault(status=200, body=json.dumps({"sessions": {"key": SECRET_KEY}}).encode()),
        "invalid_response",
        id="wrong-shape-holding-the-key",
    ),
    pytest.param(
        Fault(status=302, headers=(("Location", f"http://127.0.0.1:9/?key={SECRET_KEY}"),)),
        "invalid_response",
        id="redirect-carrying-the-key",
    ),
    pytest.param(Fault(status=200, body=b'{"sessions": []}', delay=2.0), "timeout", id="slow"),
]


def run_checks(api_url: str, directory: Path) -> dict[KeyWay, subprocess.CompletedProcess[str]]:
    """Run `magnet-exporter check` once per way of giving the key, all at the same time."""
    running: dict[KeyWay, subprocess.Popen[str]] = {}
    try:
        for way in KEY_WAYS:
            cwd = directory / way.name
            cwd.mkdir()
            arguments = [
                "check",
                "--api-url",
                api_url,
                "--log-level",
                "debug",
                "--log-format",
                way.log_format,
                "--request-timeout",
                "0.5",
                "--poll-interval",
                "5",  # retries of transient failures end within this
            ]
            running[way] = subprocess.Popen(
                [*COMMAND, *arguments],
                cwd=cwd,
                env=exporter_env(**way.environment(cwd)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        results = {}
        for way, process in running.items():
            stdout, stderr = process.communicate(timeout=30)
            results[way] = subprocess.CompletedProcess(
                process.args, process.returncode, stdout, stderr
            )
        return results
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def check_logs(way: KeyWay, stderr: str) -> None:
    """The logs are in the asked format, so that the debug lines were really written."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        if line.startswith("magnet-exporter check failed"):
            continue
        if way.log_format == "json":
            assert isinstance(json.loads(line), dict), line
        else:
            assert line.startswith("ts="), line


@pytest.mark.parametrize(("fault", "outcome"), UPSTREAM_ANSWERS)
def test_check_never_shows_the_key(
    tmp_path: Path, simulator: DemoApiServer, fault: Fault | None, outcome: str
) -> None:
    simulator.fault = fault
    results = run_checks(simulator.url, tmp_path)
    assert simulator.last_headers.get("x-api-key") == SECRET_KEY  # the key was really used
    for way, result in results.items():
        where = f"{way}: exit {result.returncode}\n{result.stderr}"
        assert not leaks(result.stdout), where
        assert not leaks(result.stderr), where
        check_logs(way, result.stderr)
        if outcome == "success":
            assert result.returncode == 0, where
            assert 'magnet_up{organization="' in result.stdout
            assert "poll succeeded" in result.stderr, where  # a debug line: debug is on
        else:
            assert result.returncode == 1, where
            assert "magnet-exporter check failed" in result.stderr, where
            assert outcome in result.stderr, where


def test_check_never_shows_the_key_when_the_connection_is_refused(tmp_path: Path) -> None:
    results = run_checks(f"http://127.0.0.1:{free_port()}", tmp_path)
    for way, result in results.items():
        where = f"{way}: exit {result.returncode}\n{result.stderr}"
        assert result.returncode == 1, where
        assert "connection_error" in result.stderr, where
        assert not leaks(result.stdout + result.stderr), where
        check_logs(way, result.stderr)


@pytest.mark.parametrize(
    ("files", "environment"),
    [
        pytest.param({}, {"MAGNET_API_KEY": f"{SECRET_KEY} {SECRET_KEY}"}, id="key-with-a-space"),
        pytest.param(
            {"key": f"{SECRET_KEY}\n{SECRET_KEY}\n"},
            {"MAGNET_API_KEY_FILE": "key"},
            id="key-file-of-two-lines",
        ),
        pytest.param(
            {"key": SECRET_KEY},
            {"MAGNET_API_KEY_FILE": "key", "MAGNET_API_KEY": SECRET_KEY},
            id="key-and-key-file",
        ),
        pytest.param(
            {"config.yaml": f'organizations:\n  - name: acme\n    api_key: "{SECRET_KEY}\n'},
            {"MAGNET_CONFIG_FILE": "config.yaml"},
            id="config-file-not-yaml",
        ),
        pytest.param(
            {"config.yaml": f"organizations:\n  - name: acme\n    apikey: {SECRET_KEY}\n"},
            {"MAGNET_CONFIG_FILE": "config.yaml"},
            id="config-file-misspelt-key-setting",
        ),
        pytest.param(
            {"config.yaml": f"organizations:\n  - name: acme\n    api_key: {SECRET_KEY} x\n"},
            {"MAGNET_CONFIG_FILE": "config.yaml"},
            id="config-file-key-with-a-space",
        ),
    ],
)
def test_configuration_errors_never_show_the_key(
    tmp_path: Path, files: dict[str, str], environment: dict[str, str]
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {
        name: str(tmp_path / value) if name.endswith("_FILE") else value
        for name, value in environment.items()
    }
    result = subprocess.run(
        [*COMMAND, "check", "--log-level", "debug"],
        cwd=tmp_path,
        env=exporter_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr
    assert not leaks(result.stdout + result.stderr), result.stderr


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")


def test_a_running_exporter_never_shows_the_key(tmp_path: Path, simulator: DemoApiServer) -> None:
    """Two polls of the server: a 401 that echoes the key, then a 500 page that does, retried."""
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET_KEY + "\n")
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        *COMMAND,
        "--api-url",
        simulator.url,
        "--listen-address",
        url.removeprefix("http://"),
        "--poll-interval",
        "5",
        "--request-timeout",
        "1",
        "--log-level",
        "debug",
        "--log-format",
        "json",
    ]
    paths = ("/", "/metrics", "/-/ready", "/-/healthy", "/nowhere")
    seen: list[str] = []

    def look() -> None:
        for path in paths:
            response = httpx.get(url + path, timeout=5)
            seen.append(f"{path} {response.status_code} {response.headers}\n{response.text}")

    simulator.fault = ECHOING_401
    log = tmp_path / "exporter.log"
    env = exporter_env(MAGNET_API_KEY_FILE=str(key_file))
    with background_process(command, log, f"{url}/-/healthy", env):
        wait_until(lambda: "unauthorized" in httpx.get(url, timeout=5).text, "the first poll")
        look()
        simulator.push(ECHOING_500)  # the second poll: a 500, then its retry gets the data
        simulator.fault = None
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=5).status_code == 200, "data")
        look()
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert simulator.last_headers.get("x-api-key") == SECRET_KEY  # the key was really used
    assert 'magnet_up{organization="default"} 1.0' in metrics
    assert 'code="500"' in metrics  # the retry path ran
    output = log.read_text()
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert {"debug", "warning"} <= {record["level"] for record in records}
    assert [record for record in records if record["msg"] == "poll failed"]
    assert len(seen) == 2 * len(paths)
    assert not leaks(output), output
    for page in seen:
        assert not leaks(page), page


@pytest.fixture
def reason_echoing_api() -> Iterator[str]:
    """An upstream whose 401 status line echoes the key as its reason phrase; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    status_line = f"HTTP/1.1 401 Invalid API key {SECRET_KEY}\r\n"

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                connection.recv(65536)
                connection.sendall(
                    (status_line + "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
                )

    thread = threading.Thread(target=serve, name="reason-echoing-api")
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_check_never_shows_the_key_echoed_in_the_reason_phrase(
    tmp_path: Path, reason_echoing_api: str
) -> None:
    results = run_checks(reason_echoing_api, tmp_path)
    for way, result in results.items():
        where = f"{way}: exit {result.returncode}\n{result.stderr}"
        assert result.returncode == 1, where
        assert "unauthorized" in result.stderr, where
        assert not leaks(result.stdout + result.stderr), where
