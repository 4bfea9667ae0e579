"""End to end: a stuck demo session, alerted by a real Prometheus, delivered by a real Alertmanager.

The demo exporter, the Debian `prometheus` (1 s scrape and evaluation interval, the rules of
`prometheus/alerts.yml` with their `for:` shortened to 1 s in a copy, as the only change) and
the Debian `prometheus-alertmanager` with the shipped `alertmanager/alertmanager.yml`, whose
receiver is pointed at a webhook that the test serves. The notification must arrive at the
webhook as Alertmanager sends it: grouped by alert name and organization, one alert per stuck
session of the simulated API, each with its session, repository and runbook URL.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    background_process,
    demo_exporter_command,
    exporter_env,
    free_port,
    prometheus_command,
)

from magnet_exporter.demo import DEFAULT_ORGANIZATION, SimulatedMagnet

REPO_ROOT = Path(__file__).resolve().parent.parent
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
RUNBOOK = (
    "https://github.com/magnet-exporter/magnet-exporter/blob/main/docs/dashboard-and-alerts.md"
    "#magnetsessionstuck"
)
# The demo exporter's organization label (no MAGNET_ORGANIZATION, no organization id).
ORGANIZATION = "default"
# The shipped route waits 30 s (group_wait) before the first notification of a group; the
# rest (start, first polls, scrapes, evaluations) takes seconds. Far above what a loaded
# machine needs, so that the test proves delivery, not speed.
DELIVERY_TIMEOUT_SECONDS = 150


def alertmanager_binary() -> str | None:
    """The Alertmanager binary: Debian names it prometheus-alertmanager."""
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or alertmanager_binary() is None,
    reason="prometheus or alertmanager is not installed (Debian packages prometheus and "
    "prometheus-alertmanager; .ci/run installs them)",
)


class Webhook:
    """An HTTP endpoint that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with webhook.arrived:
                    webhook.bodies.append(json.loads(body))
                    webhook.arrived.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook")

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def wait_for(self, alertname: str, timeout: float) -> dict[str, Any]:
        """Return the first notification whose group is `alertname`, or fail the test."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for body in self.bodies:
                    if body["groupLabels"].get("alertname") == alertname:
                        return body
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [body["groupLabels"] for body in self.bodies]
                    pytest.fail(f"no {alertname} notification within {timeout} s (got {seen})")
                self.arrived.wait(left)


def rules_with_short_for(path: Path) -> None:
    """Write the shipped rules to `path`, each `for:` shortened to 1 s: the only change."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump(rules))


def alertmanager_config_to(webhook_url: str, path: Path) -> None:
    """Write the shipped configuration to `path`, its receiver pointed at `webhook_url`."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (receiver,) = config["receivers"]
    assert receiver["name"] == config["route"]["receiver"]
    receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": False}]
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


@pytest.fixture
def stack(tmp_path: Path, webhook: Webhook) -> Iterator[None]:
    """Alertmanager, Prometheus sending to it, and the demo exporter that Prometheus scrapes."""
    alertmanager_config = tmp_path / "alertmanager.yml"
    alertmanager_config_to(webhook.url, alertmanager_config)
    alertmanager_address = f"127.0.0.1:{free_port()}"
    binary = alertmanager_binary()
    assert binary is not None
    alertmanager = [
        binary,
        f"--config.file={alertmanager_config}",
        f"--storage.path={tmp_path / 'alertmanager-data'}",
        f"--web.listen-address={alertmanager_address}",
        "--cluster.listen-address=",  # one instance: no gossip port to collide with
        "--log.level=warn",
    ]
    rules = tmp_path / "alerts.yml"
    rules_with_short_for(rules)
    exporter_address = f"127.0.0.1:{free_port()}"
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [alertmanager_address]}]}]
                },
                "scrape_configs": [
                    {"job_name": "magnet", "static_configs": [{"targets": [exporter_address]}]}
                ],
            }
        )
    )
    prometheus_address = f"127.0.0.1:{free_port()}"
    prometheus = prometheus_command(
        str(shutil.which("prometheus")),
        prometheus_config,
        tmp_path / "prometheus-data",
        prometheus_address,
    )
    exporter = demo_exporter_command(exporter_address)
    with (
        background_process(
            alertmanager, tmp_path / "alertmanager.log", f"http://{alertmanager_address}/-/ready"
        ),
        background_process(
            prometheus, tmp_path / "prometheus.log", f"http://{prometheus_address}/-/ready"
        ),
        background_process(
            exporter,
            tmp_path / "exporter.log",
            f"http://{exporter_address}/-/ready",
            env=exporter_env(),
        ),
    ):
        yield


def stuck_demo_sessions(now: float) -> dict[str, dict[str, Any]]:
    """The simulated API's active sessions idle for more than an hour at `now`, by id."""
    magnet = SimulatedMagnet(clock=lambda: now)
    stuck = {}
    for session in magnet.sessions_response(DEFAULT_ORGANIZATION)["sessions"]:
        last = datetime.fromisoformat(session["updatedAt"] or session["createdAt"]).timestamp()
        if session["status"] == "active" and now - last > 3600:
            stuck[session["id"]] = session
    return stuck


@pytest.mark.usefixtures("stack")
def test_a_stuck_demo_session_arrives_at_the_webhook_named_with_its_runbook(
    webhook: Webhook,
) -> None:
    notification = webhook.wait_for("MagnetSessionStuck", DELIVERY_TIMEOUT_SECONDS)
    stuck = stuck_demo_sessions(time.time())
    assert stuck, "the simulated API has no stuck session right now"

    # Grouped as the shipped route says: by alert name and organization.
    assert notification["receiver"] == "magnet-oncall"
    assert notification["status"] == "firing"
    assert notification["groupLabels"] == {
        "alertname": "MagnetSessionStuck",
        "organization": ORGANIZATION,
    }
    alerts = notification["alerts"]
    assert alerts
    sessions = [alert["labels"]["session"] for alert in alerts]
    assert len(set(sessions)) == len(sessions), "one alert per session"
    for alert in alerts:
        labels, annotations = alert["labels"], alert["annotations"]
        # A session the simulated API lists as active and idle for more than an hour.
        session = stuck.get(labels["session"])
        assert session is not None, f"{labels['session']} is not stuck in the demo: {stuck}"
        assert labels["repository"] == session["metadata"]["repository"]
        assert labels["model"] == session["model"]
        assert labels["author"] == session["author"]["id"]
        assert labels["organization"] == ORGANIZATION
        assert labels["job"] == "magnet"
        assert labels["severity"] == "warning"
        assert annotations["runbook_url"] == RUNBOOK
        assert labels["session"] in annotations["summary"]
        assert labels["repository"] in annotations["summary"]
        for value in (labels["model"], labels["author"]):
            assert value in annotations["description"]
        # The author's name never travels; only the id does.
        assert session["author"]["name"] not in json.dumps(alert)
