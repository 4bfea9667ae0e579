"""The command line in a real subprocess: help, version, configuration errors, check, shutdown."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme
from conftest import SECRET_KEY, exporter_env, free_port, wait_for_status
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter import __version__
from magnet_exporter.demo import DemoApiServer, Fault
from magnet_exporter.settings import FLAGS

COMMAND = [sys.executable, "-m", "magnet_exporter"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=exporter_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_version(tmp_path: Path) -> None:
    result = run(["--version"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"magnet-exporter {__version__}"


def test_help_documents_every_option(tmp_path: Path) -> None:
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    for flag in FLAGS.values():
        assert flag in result.stdout
    for command in ("check", "demo-api"):
        assert command in result.stdout
    assert "MAGNET_API_KEY" in result.stdout
    # A key on the command line would show in `ps`; a key file's path is fine.
    assert re.search(r"--api-key(?!-file)", result.stdout) is None


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, ["MAGNET_API_KEY is required"]),
        (["--poll-interval", "2"], {"MAGNET_API_KEY": "k"}, ["MAGNET_POLL_INTERVAL_SECONDS"]),
        (["--session-labels", "status,title"], {"MAGNET_API_KEY": "k"}, ["MAGNET_SESSION_LABELS"]),
        (
            [],
            {"MAGNET_API_KEY": "k", "MAGNET_LISTEN_ADDRESS": "nowhere"},
            ["MAGNET_LISTEN_ADDRESS"],
        ),
        (
            ["check", "--log-format", "xml"],
            {"MAGNET_API_KEY": "k", "MAGNET_MAX_LABEL_VALUES": "-1"},
            ["MAGNET_MAX_LABEL_VALUES", "MAGNET_LOG_FORMAT"],
        ),
    ],
)
def test_bad_configuration_exits_2_naming_each_setting(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: list[str]
) -> None:
    result = run(args, tmp_path, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected)
    for line, setting in zip(lines, expected, strict=True):
        assert line.startswith(f"magnet-exporter: configuration error: {setting}")


def test_bad_configuration_file_exits_2_with_a_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "magnet.yml").write_text(
        "organizations:\n"
        "  - name: acme\n"
        "  - name: globex\n"
        "    api_key_file: missing.key\n"
        "  - name: initech\n"
        "    api_key: k\n"
        "    api_key_file: missing.key\n"
    )
    result = run(["--config", "magnet.yml"], tmp_path)
    assert result.returncode == 2
    missing = tmp_path / "missing.key"  # where it was looked for: beside the file
    assert result.stderr.splitlines() == [
        "magnet-exporter: configuration error: organizations[0] in the configuration file: "
        "organization 'acme' needs api_key or api_key_file (one)",
        "magnet-exporter: configuration error: organizations[1].api_key_file in the "
        f"configuration file: cannot read {missing}: No such file or directory",
        "magnet-exporter: configuration error: organizations[2].api_key_file in the "
        f"configuration file: cannot read {missing}: No such file or directory",
    ]


def test_check_polls_every_organization_of_the_file(
    tmp_path: Path, simulator: DemoApiServer
) -> None:
    (tmp_path / "acme.key").write_text(SECRET_KEY)
    (tmp_path / "magnet.yml").write_text(
        f"api_url: {simulator.url}\n"
        "organizations:\n"
        "  - name: acme\n    api_key_file: acme.key\n"
        "  - name: globex\n    api_key: other\n    organization_id: globex\n"
    )
    result = run(["check", "--config", "magnet.yml"], tmp_path)
    assert result.returncode == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    assert {s.labels["organization"]: s.value for s in families["magnet_up"].samples} == {
        "acme": 1,
        "globex": 1,
    }


def test_bad_web_config_exits_2(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: absent.crt\n")
    result = run(["--demo", "--web.config.file", "web.yml"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines
    assert all(
        line.startswith(
            "magnet-exporter: configuration error: MAGNET_WEB_CONFIG_FILE (--web.config.file): "
        )
        for line in lines
    )
    assert any("cert_file" in line for line in lines)


def test_web_config_serves_https_with_basic_auth(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    certificate.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    with started(
        ["--demo", "--listen-address", f"127.0.0.1:{port}", "--web.config.file", "web.yml"],
        tmp_path,
    ) as running:
        process = running.process
        trust = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with httpx.Client(verify=trust, timeout=5) as client:
            healthy = first_answer(lambda: client.get(base + "/-/healthy"))
            assert healthy.status_code == 200  # no password needed
            assert client.get(base + "/metrics").status_code == 401
            wrong = client.get(base + "/metrics", auth=("prometheus", "nope"))
            assert wrong.status_code == 401
            right = client.get(base + "/metrics", auth=("prometheus", "scrape-pass"))
            assert right.status_code == 200
            assert "magnet_exporter_build_info{" in right.text
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/-/healthy", timeout=2)
        stop_within(process, signal.SIGTERM, STOP_SECONDS)
    assert process.returncode == 0


def test_dotenv_file_is_read(tmp_path: Path, simulator: DemoApiServer) -> None:
    (tmp_path / ".env").write_text(f"MAGNET_API_KEY={SECRET_KEY}\nMAGNET_API_URL={simulator.url}\n")
    result = run(["check"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert simulator.last_headers["x-api-key"] == SECRET_KEY


def test_check_prints_the_metrics(tmp_path: Path, simulator: DemoApiServer) -> None:
    result = run(["check", "--api-url", simulator.url], tmp_path, MAGNET_API_KEY=SECRET_KEY)
    assert result.returncode == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    assert families["magnet_up"].samples[0].value == 1
    assert sum(s.value for s in families["magnet_sessions"].samples) > 0
    assert SECRET_KEY not in result.stdout + result.stderr


def test_check_reports_a_rejected_key(tmp_path: Path, simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=401, body=b'{"error": "Unauthorized"}')
    result = run(["check", "--api-url", simulator.url], tmp_path, MAGNET_API_KEY=SECRET_KEY)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        "magnet-exporter check failed: 401 Unauthorized: check MAGNET_API_KEY"
    )
    assert SECRET_KEY not in result.stderr


def test_check_in_demo_mode_needs_no_key(tmp_path: Path) -> None:
    result = run(["check", "--demo"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "magnet_humans_prompting{" in result.stdout


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *args],
        cwd=cwd,
        env=exporter_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclasses.dataclass
class Started:
    """A running command; `stderr` holds its error output once it has exited."""

    process: subprocess.Popen[str]
    stderr: str = ""


@contextlib.contextmanager
def started(args: list[str], cwd: Path, **env: str) -> Iterator[Started]:
    """Run the exporter in the background; it is always stopped (killed if need be) at the end."""
    running = Started(start(args, cwd, **env))
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
        _, running.stderr = running.process.communicate()


def first_answer(get: Callable[[], httpx.Response], timeout: float = 15) -> httpx.Response:
    """Call `get` until the server answers at all, or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get()
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"no answer within {timeout} s"
            time.sleep(0.05)


STOP_SECONDS = 10.0
"""Room to exit after SIGTERM on a loaded machine; far below what waiting would take (20 s)."""


def stop_within(process: subprocess.Popen[str], signum: int, seconds: float) -> float:
    """Send `signum`, wait for the exit; return how long it took (the process is always reaped)."""
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"no exit within {seconds}s of {signal.Signals(signum).name}")
    return time.monotonic() - sent


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_demo_cleanly(tmp_path: Path, signum: int) -> None:
    port = free_port()
    with started(["--demo", "--listen-address", f"127.0.0.1:{port}"], tmp_path) as running:
        process = running.process
        wait_for_status(f"http://127.0.0.1:{port}/-/ready", 200, timeout=15)
        stop_within(process, signum, 2.0)
    assert process.returncode == 0, running.stderr
    assert "shutting down" in running.stderr


def test_sigterm_in_the_middle_of_a_slow_poll(tmp_path: Path, simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=200, body=b'{"sessions": []}', delay=20)
    port = free_port()
    with started(
        [
            "--api-url",
            simulator.url,
            "--listen-address",
            f"127.0.0.1:{port}",
            "--request-timeout",
            "30",
        ],
        tmp_path,
        MAGNET_API_KEY=SECRET_KEY,
    ) as running:
        process = running.process
        wait_for_status(f"http://127.0.0.1:{port}/-/healthy", 200, timeout=15)
        deadline = time.monotonic() + 10
        while simulator.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert simulator.requests == 1  # the poll is now waiting on the slow answer
        stop_within(process, signal.SIGTERM, STOP_SECONDS)
    assert process.returncode == 0, running.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/-/healthy", timeout=1)


def test_port_in_use_is_reported(tmp_path: Path, demo_exporter: str) -> None:
    taken = demo_exporter.removeprefix("http://")
    result = run(["--demo", "--listen-address", taken], tmp_path)
    assert result.returncode == 2
    assert "cannot listen" in result.stderr


def test_demo_api_command_serves_the_simulator(tmp_path: Path) -> None:
    port = free_port()
    with started(
        ["demo-api", "--listen-address", f"127.0.0.1:{port}", "--seed", "3"], tmp_path
    ) as running:
        process = running.process
        url = f"http://127.0.0.1:{port}/api/sessions"
        wait_for_status(url, 401, timeout=15)  # no key: refused, as the real API does
        answer = httpx.get(url, headers={"x-api-key": "anything"}, timeout=5)
        assert answer.status_code == 200
        assert len(answer.json()["sessions"]) > 0
        stop_within(process, signal.SIGTERM, STOP_SECONDS)
    assert process.returncode == 0


def test_demo_api_injects_faults_from_the_command_line(tmp_path: Path) -> None:
    assert run(["demo-api", "--faults", "bogus=1"], tmp_path).returncode == 2
    port = free_port()
    with started(
        ["demo-api", "--listen-address", f"127.0.0.1:{port}", "--faults", "server_error=1"],
        tmp_path,
    ) as running:
        process = running.process
        url = f"http://127.0.0.1:{port}/api/sessions"
        answer = first_answer(lambda: httpx.get(url, headers={"x-api-key": "k"}, timeout=5))
        assert 500 <= answer.status_code < 600
        stop_within(process, signal.SIGTERM, STOP_SECONDS)


def test_demo_api_listens_on_ipv6_as_run_does(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    with started(["demo-api", "--listen-address", f"[::1]:{port}"], tmp_path) as running:
        url = f"http://[::1]:{port}/api/sessions"
        wait_for_status(url, 401, timeout=15)
        answer = httpx.get(url, headers={"x-api-key": "k"}, timeout=5)
        assert answer.status_code == 200
        stop_within(running.process, signal.SIGTERM, 2.0)
    assert running.process.returncode == 0


@pytest.mark.parametrize("command", [["demo-api"], ["--demo"]])
def test_a_busy_or_bad_address_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        for address in (busy, "no-such-host.invalid:9878"):
            result = run([*command, "--listen-address", address], tmp_path)
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            (line,) = [line for line in result.stderr.splitlines() if "level=error" in line]
            assert 'msg="cannot listen"' in line
            assert f"address={address}" in line
