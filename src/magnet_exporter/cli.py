"""Command line: argument parsing, the subcommands, and the wiring of the parts."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType

import httpx
import pydantic
from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
)

from magnet_exporter import __version__
from magnet_exporter.client import MagnetClient, api_http_client
from magnet_exporter.collector import DataCollector, StatusCollector
from magnet_exporter.demo import (
    FAULT_KINDS,
    LISTED_SESSIONS,
    DemoApiServer,
    FaultRates,
    SimulatedMagnet,
)
from magnet_exporter.logs import configure_logging
from magnet_exporter.poller import Clock, Poller, PollMetrics, PollState
from magnet_exporter.series import SessionSeries
from magnet_exporter.server import ExporterApp, HttpServer
from magnet_exporter.settings import (
    FLAGS,
    Settings,
    Target,
    describe_errors,
    split_listen_address,
)
from magnet_exporter.sources import (
    MAX_WORKERS,
    AdaptiveSource,
    InProcessSource,
    SnapshotSource,
    WorkerConfig,
    WorkerPool,
    WorkerSource,
)
from magnet_exporter.webconfig import WebConfig, WebConfigError, load_web_config

log = logging.getLogger("magnet_exporter")

EXIT_CHECK_FAILED = 1
EXIT_CONFIG_ERROR = 2
DEMO_API_ADDRESS = "127.0.0.1:9878"

_OPTIONS: Sequence[tuple[str, type, str, str]] = (
    ("config_file", str, "FILE", "YAML file with settings and a list of organizations"),
    ("api_url", str, "URL", "base URL of the Magnet API (default https://magnet.run)"),
    ("api_key_file", str, "PATH", "file holding the API key, read again before each poll"),
    ("organization_id", str, "ID", "organizationId to send (default: the key's organization)"),
    ("organization", str, "NAME", "organization label (default: the id, else 'default')"),
    ("poll_interval_seconds", float, "SECONDS", "seconds between polls, at least 5 (default 60)"),
    ("request_timeout_seconds", float, "SECONDS", "timeout of one request (default 10)"),
    ("max_response_bytes", int, "BYTES", "abandon larger answers (default 67108864, 64 MiB)"),
    ("stale_after_seconds", float, "SECONDS", "serve data no older than this (default 3 polls)"),
    ("listen_address", str, "HOST:PORT", "HTTP listen address (default 0.0.0.0:9877)"),
    ("web_config_file", str, "FILE", "TLS and basic auth, in the Prometheus web config format"),
    (
        "session_labels",
        str,
        "LIST",
        "labels of the session metrics, of status, pr_status, "
        "model, repository, author (default status,pr_status,model)",
    ),
    ("max_label_values", int, "N", "distinct values per label before 'other' (default 100)"),
    (
        "idle_session_seconds",
        float,
        "SECONDS",
        "list active sessions idle at least this long by name (default 900)",
    ),
    (
        "idle_sessions_max",
        int,
        "N",
        "idle sessions listed per organization, the longest idle first, 0 for none (default 10)",
    ),
    ("log_level", str, "LEVEL", "debug, info, warning or error (default info)"),
    ("log_format", str, "FORMAT", "logfmt or json (default logfmt)"),
    (
        "max_connections",
        int,
        "N",
        "open HTTP connections at most; past it the longest-waiting one is closed "
        "(default 20000, 5000 with TLS)",
    ),
    (
        "worker_threshold_bytes",
        int,
        "BYTES",
        "poll an organization in a worker process once an answer is this large, "
        "0 for always (default 2097152, 2 MiB)",
    ),
)


def _exporter_options() -> argparse.ArgumentParser:
    """Options shared by `run` and `check`; an option not given stays unset, so env applies."""
    options = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for field, kind, metavar, text in _OPTIONS:
        options.add_argument(FLAGS[field], dest=field, type=kind, metavar=metavar, help=text)
    options.add_argument(
        FLAGS["demo"], dest="demo", action="store_true", help="poll a built-in simulated API"
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    """Build the full command line parser."""
    shared = _exporter_options()
    parser = argparse.ArgumentParser(
        prog="magnet-exporter",
        parents=[shared],
        description="Prometheus exporter for Magnet. Every option also reads MAGNET_<NAME> from "
        "the environment or a .env file; the API key is read only from MAGNET_API_KEY.",
    )
    parser.add_argument("--version", action="version", version=f"magnet-exporter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[shared], help="serve metrics (the default)")
    commands.add_parser(
        "check", parents=[shared], help="poll once, print the metrics, exit 0 (or 1 on failure)"
    )
    demo_api = commands.add_parser("demo-api", help="run only the simulated Magnet API")
    demo_api.add_argument("--listen-address", default=DEMO_API_ADDRESS, metavar="HOST:PORT")
    demo_api.add_argument("--seed", type=int, default=0, help="seed of the simulated data")
    demo_api.add_argument(
        "--sessions",
        type=int,
        default=LISTED_SESSIONS,
        metavar="N",
        help=f"sessions listed in each answer (default {LISTED_SESSIONS})",
    )
    demo_api.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="inject faults at these rates, e.g. server_error=0.05,rate_limited=0.02,slow=0.02 "
        f"(kinds: {', '.join(FAULT_KINDS)}; also retry_after_seconds, slow_seconds, "
        "oversized_bytes)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `magnet-exporter` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    # `*_created` series double every counter and histogram for no use on a dashboard.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    if args.command == "demo-api":
        return run_demo_api(args.listen_address, args.seed, args.faults, args.sessions)
    overrides = {key: value for key, value in vars(args).items() if key in FLAGS}
    try:
        settings = Settings(**overrides)
    except pydantic.ValidationError as error:
        return _configuration_errors(describe_errors(error))
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "check":
        return check(settings)
    try:
        web_config = load_web_config(settings.web_config_file) if settings.web_config_file else None
    except WebConfigError as error:
        where = "MAGNET_WEB_CONFIG_FILE (--web.config.file)"
        return _configuration_errors([f"{where}: {problem}" for problem in error.problems])
    return serve(settings, web_config)


def _configuration_errors(lines: Sequence[str]) -> int:
    """Print one line per problem; return the exit code of a bad configuration."""
    for line in lines:
        print(f"magnet-exporter: configuration error: {line}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


class Exporter:
    """The parts of a running exporter, wired together: a poller per organization."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.Client,
        registry: CollectorRegistry,
        clock: Clock = time.time,
        *,
        workers: bool = False,
        monotonic: Clock = time.monotonic,
    ) -> None:
        """Poll through `http` in this process; with `workers`, large answers in a worker.

        `clock` is the wall clock (timestamps, insight windows), `monotonic` the clock of
        every wait and age that spans polls (Retry-After, staleness, idle workers).
        """
        metrics = PollMetrics(registry)
        self.pollers: dict[str, Poller] = {}
        targets = settings.targets()
        self._pool = _worker_pool(settings, len(targets), monotonic) if workers else None
        for target in targets:
            self.pollers[target.name] = Poller(
                _source(settings, target, http, clock, self._pool),
                SessionSeries(settings.session_labels, settings.max_label_values),
                metrics,
                target.name,
                settings.poll_interval_seconds,
                clock,
                monotonic=monotonic,
            )
        registry.register(StatusCollector(self.states))
        data = DataCollector(self.states, settings.session_labels, settings.stale_after, monotonic)
        self.app = ExporterApp(registry, self.states, data)

    def states(self) -> dict[str, PollState]:
        """Return the current state of every organization."""
        return {name: poller.state for name, poller in self.pollers.items()}

    def close(self) -> None:
        """Stop the poll workers, if any."""
        if self._pool is not None:
            self._pool.close()


def _source(
    settings: Settings,
    target: Target,
    http: httpx.Client,
    clock: Clock,
    pool: WorkerPool | None,
) -> SnapshotSource:
    client = MagnetClient(
        http,
        settings.api_url,
        target.key,
        target.organization_id,
        max_response_bytes=settings.max_response_bytes,
    )
    here = InProcessSource(client, settings.session_labels, clock, settings.idle_listing)
    if pool is None:
        return here
    there = WorkerSource(pool, target.organization_id, target.key, clock)
    return AdaptiveSource(here, there, pool, settings.worker_threshold_bytes)


def _worker_pool(settings: Settings, organizations: int, monotonic: Clock) -> WorkerPool:
    config = WorkerConfig(
        api_url=settings.api_url,
        label_names=settings.session_labels,
        timeout=settings.request_timeout_seconds,
        max_response_bytes=settings.max_response_bytes,
        idle_listing=settings.idle_listing,
    )
    return WorkerPool(config, min(organizations, MAX_WORKERS), idle_clock=monotonic)


def exporter_registry() -> CollectorRegistry:
    """Build a registry with the process metrics (CPU, memory, file descriptors) of this process."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def http_client(settings: Settings) -> httpx.Client:
    """Build the API's HTTP client as the settings say."""
    return api_http_client(settings.request_timeout_seconds)


def check(settings: Settings) -> int:
    """Poll every organization once and print the exposition; return 1 if any poll failed."""
    with _demo_api_if(settings) as settings, http_client(settings) as http:
        registry = CollectorRegistry()
        exporter = Exporter(settings, http, registry)
        states = {name: poller.poll_once() for name, poller in exporter.pollers.items()}
    failed = {name: state for name, state in states.items() if not state.up}
    for name, state in failed.items():
        where = f" ({name})" if len(states) > 1 else ""
        print(f"magnet-exporter check failed{where}: {state.last_error}", file=sys.stderr)
    if failed:
        return EXIT_CHECK_FAILED
    sys.stdout.write(exporter.app.exposition.text().decode())
    return 0


@contextlib.contextmanager
def _demo_api_if(settings: Settings) -> Iterator[Settings]:
    """With --demo, run the simulated API in this process and point the settings at it."""
    if not settings.demo:
        yield settings
        return
    demo = DemoApiServer(SimulatedMagnet()).start()
    log.info("demo mode: polling the built-in simulated Magnet API", extra={"api_url": demo.url})
    try:
        yield settings.model_copy(update={"api_url": demo.url})
    finally:
        demo.stop()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def serve(settings: Settings, web_config: WebConfig | None = None) -> int:
    """Poll in the background and serve HTTP until SIGTERM or SIGINT; return the exit code."""
    stop = _stop_on_signals()
    with _demo_api_if(settings) as settings:
        http = http_client(settings)
        exporter = Exporter(settings, http, exporter_registry(), workers=True)
        host, port = settings.listen_host_port
        try:
            server = HttpServer(
                exporter.app, host, port, web_config, max_connections=settings.max_connections
            )
        except OSError as error:
            log.error(
                "cannot listen", extra={"address": settings.listen_address, "error": str(error)}
            )
            exporter.close()
            http.close()
            return EXIT_CONFIG_ERROR
        server.start()
        log.info(
            "serving metrics",
            extra={
                "address": f"{server.scheme}://{host}:{server.port}",
                "organization": settings.organization,
                "api_url": settings.api_url,
                "poll_interval_seconds": settings.poll_interval_seconds,
                "version": __version__,
            },
        )
        polling = _start_polling(exporter, settings.poll_interval_seconds, stop)
        while not stop.wait(0.5):
            pass
        server.stop()
        exporter.close()  # ends a poll in progress
        deadline = time.monotonic() + 1.0
        for thread in polling:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not any(thread.is_alive() for thread in polling):
            http.close()  # else a poll still uses it, and the process ends anyway
    return 0


def _start_polling(
    exporter: Exporter, interval: float, stop: threading.Event
) -> list[threading.Thread]:
    """Start a thread per organization, their first polls spread over one interval."""
    threads = []
    for index, (name, poller) in enumerate(exporter.pollers.items()):
        delay = interval * index / len(exporter.pollers)
        thread = threading.Thread(
            target=poller.run, args=(stop, delay), name=f"poller-{name}", daemon=True
        )  # daemon: a poll stuck on the network must not delay the exit
        thread.start()
        threads.append(thread)
    return threads


def run_demo_api(
    listen_address: str, seed: int, fault_spec: str = "", sessions: int = LISTED_SESSIONS
) -> int:
    """Serve only the simulated Magnet API until SIGTERM or SIGINT."""
    configure_logging("info", "logfmt")
    try:
        host, port = split_listen_address(listen_address)
    except ValueError as error:
        return _configuration_errors([f"--listen-address: {error}"])
    try:
        faults = FaultRates.parse(fault_spec) if fault_spec else None
    except ValueError as error:
        return _configuration_errors([f"--faults: {error}"])
    if sessions < 0:
        return _configuration_errors(["--sessions: must be 0 or more"])
    stop = _stop_on_signals()
    magnet = SimulatedMagnet(seed=seed, listed_sessions=sessions)
    try:
        demo = DemoApiServer(magnet, host, port, faults=faults).start()
    except OSError as error:  # as `run`: a host that does not resolve, a port in use
        log.error("cannot listen", extra={"address": listen_address, "error": str(error)})
        return EXIT_CONFIG_ERROR
    log.info(
        "simulated Magnet API listening",
        extra={"url": demo.url, "seed": seed, "sessions": sessions, "faults": fault_spec or "none"},
    )
    while not stop.wait(0.5):
        pass
    demo.stop()
    return 0
