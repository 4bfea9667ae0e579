"""The HTTP face of the exporter: /metrics, a landing page, and health and readiness checks."""

from __future__ import annotations

import html
import logging
import socket
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from magnet_exporter import __version__
from magnet_exporter.collector import States
from magnet_exporter.poller import PollState

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("magnet_exporter.server")


class ExporterApp:
    """Routes requests: `/metrics` to prometheus-client, the rest answered here."""

    def __init__(self, registry: CollectorRegistry, states: States) -> None:
        self._metrics = make_wsgi_app(registry)
        self._states = states

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request."""
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            exposition: Iterable[bytes] = self._metrics(environ, start_response)
            return exposition
        if path == "/-/healthy":
            return _text(start_response, "200 OK", "Healthy.\n")
        if path == "/-/ready":
            # One organization with data is enough: a revoked key elsewhere must not hide it.
            if not any(s.last_success is not None for s in self._states().values()):
                return _text(start_response, "503 Service Unavailable", "Not ready: no poll yet.\n")
            return _text(start_response, "200 OK", "Ready.\n")
        if path == "/":
            return _respond(start_response, "200 OK", "text/html; charset=utf-8", self._landing())
        return _text(start_response, "404 Not Found", "Not found. Metrics are at /metrics.\n")

    def _landing(self) -> bytes:
        rows = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in _row(name, state))
            + "</tr>"
            for name, state in self._states().items()
        )
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Magnet exporter</title>"
            f"</head><body><h1>Magnet exporter</h1><p>Version {html.escape(__version__)}</p>"
            "<table><tr><th>Organization</th><th>Last poll</th><th>Last success</th></tr>"
            f"{rows}</table>"
            "<p><a href='/metrics'>Metrics</a> · <a href='/-/healthy'>Health</a> · "
            "<a href='/-/ready'>Readiness</a></p></body></html>"
        )
        return page.encode()


def _row(organization: str, state: PollState) -> tuple[str, str, str]:
    if state.last_outcome is None:
        result = "not polled yet"
    else:
        result = state.last_outcome.value + (f" ({state.last_error})" if state.last_error else "")
        result += f" at {_when(state.last_poll)}"
    return organization, result, _when(state.last_success)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    return _respond(start_response, status, "text/plain; charset=utf-8", body.encode())


def _respond(
    start_response: StartResponse, status: str, content_type: str, body: bytes
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log instead of stderr."""

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format % args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not hold up shutdown


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


class HttpServer:
    """Serves the app on host:port from a background thread."""

    def __init__(self, app: ExporterApp, host: str, port: int) -> None:
        server_class = _ThreadingServerV6 if ":" in host else _ThreadingServer
        self._server = make_server(
            host, port, app, server_class=server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http"
        )

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting requests and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=1)
