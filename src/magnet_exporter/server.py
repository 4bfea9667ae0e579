"""The HTTP face of the exporter: /metrics, a landing page, and health and readiness checks.

With a web configuration it serves HTTPS, asks for basic auth and adds the configured headers.
"""

from __future__ import annotations

import html
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from socketserver import ThreadingMixIn
from typing import IO, TYPE_CHECKING, cast
from wsgiref.headers import Headers
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from magnet_exporter import __version__
from magnet_exporter.collector import States
from magnet_exporter.exposition import Exposition, VersionedCollector
from magnet_exporter.poller import PollState
from magnet_exporter.webconfig import BasicAuth, WebConfig

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("magnet_exporter.server")

UNGUARDED_PATH = "/-/healthy"
"""The one path that basic auth does not protect, so that liveness probes need no secret."""

REALM = "magnet-exporter"
TLS_HANDSHAKE_TIMEOUT_SECONDS = 10.0
IDLE_CONNECTION_SECONDS = 120.0
"""How long a kept-alive connection may wait for its next request: past the longest usual
scrape interval, so that Prometheus reuses its connection, yet no thread waits forever."""
MAX_REQUEST_LINE = 65536


class ExporterApp:
    """Routes requests: `/metrics` to the exposition, the rest answered here.

    `registry` is rendered on every scrape, `data` once per version of its data.
    """

    def __init__(
        self, registry: CollectorRegistry, states: States, data: VersionedCollector | None = None
    ) -> None:
        self.exposition = Exposition(registry, data)
        self._states = states

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request."""
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            answer = self.exposition.answer(
                environ["REQUEST_METHOD"],
                environ.get("HTTP_ACCEPT"),
                environ.get("HTTP_ACCEPT_ENCODING"),
                environ.get("QUERY_STRING", ""),
            )
            start_response(answer.status, answer.headers)
            return [answer.body]
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


class _Guard:
    """Wraps an app: basic auth on every path but UNGUARDED_PATH, extra headers on every answer."""

    def __init__(
        self, app: WSGIApplication, auth: BasicAuth | None, headers: Mapping[str, str]
    ) -> None:
        self._app = app
        self._auth = auth
        self._headers = list(headers.items())
        self._replaced = {name.lower() for name in headers}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request, or refuse it with 401."""

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            kept = [(name, value) for name, value in headers if name.lower() not in self._replaced]
            return start_response(status, kept + self._headers, exc_info)

        if (
            self._auth is not None
            and environ.get("PATH_INFO") != UNGUARDED_PATH
            and not self._auth.check(environ.get("HTTP_AUTHORIZATION"))
        ):
            body = b"Unauthorized.\n"
            start(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("WWW-Authenticate", f'Basic realm="{REALM}"'),
                ],
            )
            return [body]
        return self._app(environ, start)


def _guarded(app: WSGIApplication, config: WebConfig) -> WSGIApplication:
    if not config.basic_auth_users and not config.headers:
        return app
    auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
    return _Guard(app, auth, config.headers)


class _KeepAliveServerHandler(ServerHandler):
    """Answers in HTTP/1.1, so that a scraper may send its next request on the same connection."""

    http_version = "1.1"
    headers: Headers | None  # set by wsgiref while an answer is made; typeshed leaves it out
    request_handler: WSGIRequestHandler

    def cleanup_headers(self) -> None:
        """Close the connection after an answer whose end only the close would tell."""
        super().cleanup_headers()
        if self.headers is not None and "Content-Length" not in self.headers:
            self.headers["Connection"] = "close"
            self.request_handler.close_connection = True


class _QuietHandler(WSGIRequestHandler):
    """Keeps connections alive between requests; request lines go to the debug log."""

    protocol_version = "HTTP/1.1"  # parse_request keeps HTTP/1.1 connections open
    timeout = IDLE_CONNECTION_SECONDS
    # wsgiref writes the status line, the headers and the body apart. Buffered, they leave in
    # one write; and with Nagle's algorithm off, the last segment of an answer goes at once
    # instead of waiting up to 40 ms for the delayed ACK of a kept-alive client.
    wbufsize = -1

    def setup(self) -> None:
        """Send small segments at once, as every HTTP server with keep-alive must."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        """Answer requests on one connection until it closes, asks to, or stays idle too long."""
        try:
            self._handle_one()
            while not self.close_connection:
                self._handle_one()
        except (TimeoutError, ConnectionError):
            pass  # an idle or vanished client: nothing to answer

    def _handle_one(self) -> None:
        # wsgiref's own handle(), which serves one request and leaves the connection to close.
        self.close_connection = True
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an empty line (the client closed) or an error sent
            return
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body no route reads must not pass for a request
        output = cast("IO[bytes]", self.wfile)  # a socket writer, which is what wsgiref uses
        handler = _KeepAliveServerHandler(
            self.rfile, output, self.get_stderr(), self.get_environ(), multithread=False
        )
        handler.request_handler = self
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format % args)

    def get_environ(self) -> WSGIEnvironment:
        """Tell the app, as CGI does, when the request came over TLS."""
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"
        return environ


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not hold up shutdown
    # socketserver's default backlog of 5 leaves a burst of scrapers waiting for SYN
    # retransmissions (1 s, 3 s, 7 s): past a scrape timeout.
    request_queue_size = socket.SOMAXCONN

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Serve one connection, after its TLS handshake if the socket is a TLS one."""
        # Here in the connection's own thread, not in the accept loop: a client that is slow
        # or speaks plain HTTP stalls only its own connection.
        if isinstance(request, ssl.SSLSocket) and not _handshake(request, client_address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def _handshake(connection: ssl.SSLSocket, client_address: object) -> bool:
    timeout = connection.gettimeout()
    connection.settimeout(TLS_HANDSHAKE_TIMEOUT_SECONDS)
    try:
        connection.do_handshake()
    except OSError as error:  # ssl.SSLError and timeouts included
        log.debug(
            "TLS handshake failed", extra={"client": str(client_address), "error": str(error)}
        )
        return False
    connection.settimeout(timeout)
    return True


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


class HttpServer:
    """Serves the app on host:port from a background thread, as the web configuration says."""

    def __init__(
        self, app: ExporterApp, host: str, port: int, web_config: WebConfig | None = None
    ) -> None:
        config = web_config or WebConfig()
        server_class = _ThreadingServerV6 if ":" in host else _ThreadingServer
        self._server = make_server(
            host,
            port,
            _guarded(app, config),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self._scheme = "http"
        if config.tls is not None:
            # Accepted connections come out wrapped but not yet shaken hands with: see
            # _ThreadingServer.process_request_thread.
            self._server.socket = config.tls.context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self._scheme = "https"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http"
        )

    @property
    def scheme(self) -> str:
        """`https` when TLS is configured, else `http`."""
        return self._scheme

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
