"""The HTTP face of the exporter: /metrics, a landing page, and health and readiness checks.

With a web configuration it serves HTTPS, asks for basic auth and adds the configured headers.

Open connections cost no thread. One thread ("http") runs an asyncio event loop that holds
every connection with a small object, reads requests and frames answers with h11 (HTTP/1.1 by
RFC 9110 and 9112), and closes connections whose request does not arrive in time or that stay
idle too long. Only complete requests go to a small fixed
pool of threads, which runs the app and hands back the whole answer for the loop to write.
TLS is done in memory (`ssl.MemoryBIO`) by the same loop, so a slow handshake holds no thread
either. However many connections are open, the server uses `HTTP_THREADS` threads at most.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import html
import http
import logging
import re
import resource
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from email.utils import formatdate
from typing import NamedTuple, cast
from urllib.parse import unquote, urlsplit

import h11
from prometheus_client import CollectorRegistry

from magnet_exporter import __version__
from magnet_exporter.collector import States
from magnet_exporter.exposition import Exposition, VersionedCollector
from magnet_exporter.poller import PollState
from magnet_exporter.webconfig import BasicAuth, WebConfig

log = logging.getLogger("magnet_exporter.server")

UNGUARDED_PATH = "/-/healthy"
"""The one path that basic auth does not protect, so that liveness probes need no secret."""

REALM = "magnet-exporter"
TLS_HANDSHAKE_TIMEOUT_SECONDS = 10.0
HEAD_TIMEOUT_SECONDS = 10.0
"""How long a request head may take to arrive once its first byte has: a slow or stalled
client is closed, instead of holding its connection for the idle time."""
IDLE_CONNECTION_SECONDS = 120.0
"""How long a kept-alive connection may wait for its next request: past the longest usual
scrape interval, so that Prometheus reuses its connection. Also how long an answer may take to
be sent to a client that reads it slowly."""
MAX_HEAD_BYTES = 16384
"""The longest request head (request line and headers) read: a longer one is answered 414 if
its request line alone is too long, else 431. Prometheus sends well under 1 kB."""
MAX_HEADERS = 100
"""More header lines than this are answered 431, as Python's http.server does."""
MAX_BODY_BYTES = 65536
"""The longest request body read (and thrown away: no route reads one); a longer one is
answered 413 and its connection closed."""
HEAD_BYTES_BUDGET = 16 * 2**20
"""Bytes of unfinished request heads (and requests sent on before an answer) held over all
connections; past it, the oldest unfinished heads are closed, so that many slow clients cannot
fill the memory with partial heads."""
WORKER_THREADS = 8
"""Threads that run the app: answers are CPU work under the interpreter lock, so more would
not answer faster; a few keep a slow answer from holding up the others."""
HTTP_THREADS = 1 + WORKER_THREADS + 1
"""Threads of the server at most: the event loop, the workers, and one that checks basic auth
credentials not seen before (bcrypt), so that a flood of wrong passwords does not hold up the
workers. The exporter's threads: 1 (main) + one per organization (pollers) + HTTP_THREADS, and
with `--demo` the simulated API's: 1 + one per request it is answering."""
DEFAULT_MAX_CONNECTIONS = 20_000
"""Open connections at most; at the limit, a new connection closes the one that has waited
longest without a request being answered (see `HttpServer`)."""
DEFAULT_TLS_MAX_CONNECTIONS = 5_000
"""The default with TLS: a connection holds about 19 kB once its handshake is done (OpenSSL's
session and buffers), so 5,000 of them keep the exporter within a 256Mi memory limit."""
RESERVED_FILES = 128
"""File descriptors left for the rest of the exporter when the limit on open files, rather
than `max_connections`, bounds the connections."""
SWEEP_SECONDS = 1.0
"""How often deadlines are checked: a deadline is kept to within this."""
STOP_SECONDS = 1.0
"""How long `stop` waits for the event loop to close every connection."""
TLS_READ_BYTES = 65536
ACCEPT_WARNING_SECONDS = 10.0
"""At most one warning in this time while connections cannot be accepted (no file left)."""


_NO_STORE = ("Cache-Control", "no-store")
"""Every answer tells the state of the moment: no cache on the way may keep it."""
_VARY = ("Vary", "Accept, Accept-Encoding")
"""`/metrics` chooses its format and compression by these request headers."""
_ALLOW = ("Allow", "OPTIONS,GET,HEAD")


class Request(NamedTuple):
    """A request as the app sees it: header names in lower case, repeated ones joined by commas."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


class Answer(NamedTuple):
    """An answer for the event loop to frame and send; with `close`, the connection ends."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes
    close: bool = False


App = Callable[[Request], Answer]


class ExporterApp:
    """Routes requests: `/metrics` to the exposition, the rest answered here.

    `registry` is rendered on every scrape, `data` once per version of its data.
    """

    def __init__(
        self, registry: CollectorRegistry, states: States, data: VersionedCollector | None = None
    ) -> None:
        self.exposition = Exposition(registry, data)
        self._states = states

    def __call__(self, request: Request) -> Answer:
        """Answer one request."""
        if request.path == "/metrics":
            answer = self.exposition.answer(
                # The server sends HEAD without the body.
                "GET" if request.method == "HEAD" else request.method,
                request.headers.get("accept"),
                request.headers.get("accept-encoding"),
                request.query,
            )
            # prometheus-client's headers, and what a cache on the way must know.
            headers = [
                _ALLOW if name == "Allow" else (name, value) for name, value in answer.headers
            ]
            return Answer(answer.status, [*headers, _VARY, _NO_STORE], answer.body)
        if request.path == "/-/healthy":
            return _text("200 OK", "Healthy.\n")
        if request.path == "/-/ready":
            # One organization with data is enough: a revoked key elsewhere must not hide it.
            if not any(s.last_success is not None for s in self._states().values()):
                return _text("503 Service Unavailable", "Not ready: no poll yet.\n")
            return _text("200 OK", "Ready.\n")
        if request.path == "/":
            return Answer(
                "200 OK", [("Content-Type", "text/html; charset=utf-8"), _NO_STORE], self._landing()
            )
        return _text("404 Not Found", "Not found. Metrics are at /metrics.\n")

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


def _text(status: str, body: str, *headers: tuple[str, str], close: bool = False) -> Answer:
    text = [("Content-Type", "text/plain; charset=utf-8"), _NO_STORE, *headers]
    return Answer(status, text, body.encode(), close)


class _Guard:
    """Wraps an app: basic auth on every path but UNGUARDED_PATH, extra headers on every answer."""

    MAX_REMEMBERED = 1024
    """Authorization values remembered as good; past that, they count as never seen."""

    def __init__(self, app: App, auth: BasicAuth | None, headers: Mapping[str, str]) -> None:
        self._app = app
        self._auth = auth
        self._headers = list(headers.items())
        self._replaced = {name.lower() for name in headers}
        # Keyed hashes, never the credentials: as BasicAuth remembers them.
        self._key = secrets.token_bytes(32)
        self._passed: set[bytes] = set()

    def __call__(self, request: Request) -> Answer:
        """Answer one request, or refuse it with 401."""
        authorization = request.headers.get("authorization")
        if self._auth is None or request.path == UNGUARDED_PATH:
            answer = self._app(request)
        elif not self._auth.check(authorization):
            realm = ("WWW-Authenticate", f'Basic realm="{REALM}"')
            answer = _text("401 Unauthorized", "Unauthorized.\n", realm)
        else:
            if authorization is not None and len(self._passed) < self.MAX_REMEMBERED:
                self._passed.add(self._fingerprint(authorization))
            answer = self._app(request)
        kept = [
            (name, value) for name, value in answer.headers if name.lower() not in self._replaced
        ]
        return answer._replace(headers=kept + self._headers)

    def costly(self, request: Request) -> bool:
        """Tell whether answering may take a bcrypt check: credentials not yet seen to pass."""
        if self._auth is None or request.path == UNGUARDED_PATH:
            return False
        authorization = request.headers.get("authorization")
        return authorization is not None and self._fingerprint(authorization) not in self._passed

    def _fingerprint(self, authorization: str) -> bytes:
        return hmac.digest(self._key, authorization.encode("utf-8", "surrogateescape"), "sha256")


def _guarded(app: App, config: WebConfig) -> App:
    if not config.basic_auth_users and not config.headers:
        return app
    auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
    return _Guard(app, auth, config.headers)


# --- HTTP/1.1 over the event loop ---------------------------------------------------------------


def _refusal(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> Answer:
    """Return an answer that ends the connection, for a request the app does not answer."""
    phrase = http.HTTPStatus(status).phrase
    return _text(f"{status} {phrase}", f"{status} {phrase}: {reason}\n", *headers, close=True)


# A host is a reg-name, an IPv4 address or an IP literal in brackets, and a port.
_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]*")


def _request(event: h11.Request) -> tuple[Request, tuple[int, str] | None]:
    """Turn a request head into a `Request` in one pass over its headers.

    Also return the refusal, if any, of what h11 accepts but RFC 9110 and 9112 do not, or of
    what the app cannot answer.
    """
    headers: dict[str, str] = {}
    control = False
    for name, value in event.headers:
        control = control or b"\x7f" in value  # h11 lets DEL through; RFC 9110 5.5 does not
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text  # RFC 9110 5.3
    target = event.target.decode("ascii")
    if target.startswith("//"):  # as http.server does: not a host-relative URL
        target = "/" + target.lstrip("/")
    elif not target.startswith("/") and "://" in target:  # the absolute form
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    path, _, query = target.partition("?")
    request = Request(event.method.decode("ascii"), unquote(path, "latin-1"), query, headers)
    version = event.http_version.decode("ascii")
    if len(event.headers) > MAX_HEADERS:
        return request, (431, "Too many headers.")
    # h11 frames such a request by Transfer-Encoding and would keep the connection: a proxy
    # in front may have framed it by Content-Length, and read what follows differently
    # (RFC 9112 6.3: the server ought to refuse it, or at least close the connection).
    if "content-length" in headers and "transfer-encoding" in headers:
        return request, (400, "Both Content-Length and Transfer-Encoding.")
    if int(headers.get("content-length", 0)) > MAX_BODY_BYTES:  # h11 checked the digits
        return request, (413, "Request body too large.")
    if control:
        return request, (400, "Bad header value.")
    if not _HOST.fullmatch(headers.get("host", "")):  # RFC 9112 3.2: 400
        return request, (400, "Bad Host header.")
    if version >= "2":
        return request, (505, f"Invalid HTTP version ({version}).")
    return request, None


_CONTINUE = h11.InformationalResponse(status_code=100, headers=[])
_END = h11.EndOfMessage()
_FRAMING = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})
"""Headers of the app's that h11 and the server set themselves."""


@functools.lru_cache(maxsize=1)
def _date(second: int) -> bytes:
    """Return the Date header's value: made once a second, not for every answer."""
    return formatdate(second, usegmt=True).encode("ascii")


# A connection is in one of these states; all but _BUSY and _CLOSED have a deadline.
_HEAD = 0  # a request (or the TLS handshake) is on its way
_IDLE = 1  # waiting for a request
_BUSY = 2  # a worker is answering
_SENDING = 3  # the answer waits in the send buffer for a slow client
_CLOSED = 4

_Queue = collections.OrderedDict["_Connection", None]


class _Hub:
    """What the connections of one server share: the app, the pools and the deadlines.

    Connections with a deadline sit in one of three queues, oldest first, so that the sweep
    and the choice of a connection to close at the limit look only at the front of each.
    """

    def __init__(
        self,
        app: App,
        tls: ssl.SSLContext | None,
        extra_headers: Mapping[str, str],
        max_connections: int,
    ) -> None:
        self.app = app
        self.guard = app if isinstance(app, _Guard) else None
        self.tls = tls
        self.extra_headers = list(extra_headers.items())
        self.max_connections = max_connections
        self.pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="http-worker")
        self.auth_pool = (
            ThreadPoolExecutor(1, thread_name_prefix="http-auth") if self.guard else None
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.every: set[_Connection] = set()
        self.heads: _Queue = collections.OrderedDict()
        self.idle: _Queue = collections.OrderedDict()
        self.sending: _Queue = collections.OrderedDict()
        self.held = 0
        """Bytes of unfinished heads, and of requests sent on, held by the connections."""
        self.stopping = False
        self.quiet_until = 0.0
        """Until when a failing accept is not logged again."""
        self.limits = (
            (self.heads, HEAD_TIMEOUT_SECONDS),
            (self.idle, IDLE_CONNECTION_SECONDS),
            (self.sending, IDLE_CONNECTION_SECONDS),
        )

    def sweep(self) -> None:
        """Close the connections past their deadline; run again in a second."""
        now = time.monotonic()
        for queue, seconds in self.limits:
            while queue:
                oldest = next(iter(queue))
                if now - oldest.since < seconds:
                    break
                oldest.expire()
        if self.loop is not None and not self.stopping:
            self.loop.call_later(SWEEP_SECONDS, self.sweep)

    def make_room(self) -> bool:
        """At the limit, close the connection that has waited longest; False if none can be."""
        fronts = [next(iter(queue)) for queue in (self.heads, self.idle) if queue]
        if not fronts:
            return False  # every connection has a request being answered
        min(fronts, key=lambda connection: connection.since).expire()
        return True

    def trim_heads(self) -> None:
        """Close the oldest unfinished heads while they hold more than the budget."""
        while self.held > HEAD_BYTES_BUDGET and self.heads:
            next(iter(self.heads)).expire()

    def submit(self, connection: _Connection, request: Request) -> None:
        """Have a worker answer; requests that may need bcrypt go to their own thread."""
        costly = self.guard is not None and self.guard.costly(request)
        pool = self.auth_pool if costly and self.auth_pool is not None else self.pool
        try:
            pool.submit(self.answer, connection, request)
        except RuntimeError:  # the pool is shut down: the server is stopping
            connection.expire()

    def answer(self, connection: _Connection, request: Request) -> None:
        """Run the app for one request (in a worker) and give the answer to the loop."""
        line = f"{request.method} {request.path[:200]}"
        try:
            answer = self.app(request)
        except Exception:
            log.exception("cannot answer a request", extra={"request": line})
            answer = _refusal(500, "The answer failed.", self.extra_headers)
        if log.isEnabledFor(logging.DEBUG):
            extra = {"request": line, "status": answer.status[:3], "bytes": len(answer.body)}
            log.debug("answered", extra=extra)
        assert self.loop is not None  # noqa: S101 (requests come only from a running loop)
        # RuntimeError: the loop is closed, as the server has stopped, and the connection with it.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(connection.answered, answer)

    def problem(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        """Log what asyncio could not hand to a connection (its exception handler)."""
        error = context.get("exception")
        if isinstance(error, OSError) and "out of system resource" in str(context.get("message")):
            # Out of file descriptors: asyncio stops accepting for a second, then tries again.
            # It reports this once per connection waiting, so it is logged once in a while.
            now = time.monotonic()
            if now >= self.quiet_until:
                self.quiet_until = now + ACCEPT_WARNING_SECONDS
                log.warning(
                    "cannot accept connections for now; trying again every second",
                    extra={"error": str(error), "open_connections": len(self.every)},
                )
            return
        log.error(
            "HTTP server problem",
            extra={"problem": str(context.get("message")), "error": repr(error)},
        )

    def shutdown(self, server: asyncio.AbstractServer, loop: asyncio.AbstractEventLoop) -> None:
        """Stop accepting, drop every connection at once, then stop the loop."""
        self.stopping = True
        server.close()
        for connection in list(self.every):
            connection.expire()
        loop.call_soon(loop.stop)  # after the connections' own callbacks, queued before it


class _Tls:
    """A TLS session in memory: bytes from the client in, bytes for the client out."""

    __slots__ = ("incoming", "outgoing", "ready", "session")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.session = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = False


class _Connection(asyncio.Protocol):
    """One client connection: its state, a deadline, and its request in progress; no thread."""

    # Slots keep an idle connection small: there may be tens of thousands.
    __slots__ = (
        "_body",
        "_buffer",
        "_close_after",
        "_held",
        "_http",
        "_hub",
        "_paused",
        "_queue",
        "_request",
        "_state",
        "_tls",
        "_transport",
        "since",
    )

    _transport: asyncio.Transport

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub
        self._tls: _Tls | None = None
        # The request in progress, made on its first byte: an idle connection holds none.
        self._http: h11.Connection | None = None
        self._request: Request | None = None
        self._body = 0  # bytes of its body read, and thrown away
        self._state = _HEAD
        self._queue: _Queue | None = None
        self.since = 0.0
        """When the connection entered its queue: its deadline counts from then."""
        self._buffer = b""  # bytes sent on before the answer left (pipelining)
        self._held = 0  # bytes of requests not yet answered, held here or in h11
        self._paused = False
        self._close_after = False

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection, making room for it at the limit."""
        hub = self._hub
        self._transport = cast("asyncio.Transport", transport)
        if hub.stopping or (len(hub.every) >= hub.max_connections and not hub.make_room()):
            self._state = _CLOSED
            self._transport.abort()
            return
        hub.every.add(self)
        # A high-water mark of 0 makes asyncio tell (resume_writing) when an answer is sent.
        self._transport.set_write_buffer_limits(high=0)
        if hub.tls is None:
            self._wait_for_request()
        else:
            self._enter(hub.heads)  # the handshake has the head's deadline

    def data_received(self, data: bytes) -> None:
        """Decrypt if need be, then read requests."""
        if self._state == _CLOSED:
            return
        if self._hub.tls is not None:
            # Made on the first bytes: a connection that never speaks costs no TLS session.
            if self._tls is None:
                self._tls = _Tls(self._hub.tls)
            plain = self._decrypt(self._tls, data)
            if plain is None:
                self.expire()
                return
            data = plain
        if data:
            self._take(data)

    def eof_received(self) -> bool:
        """Keep a half-closed connection open only to answer the requests it sent."""
        if self._state in (_BUSY, _SENDING):
            self._close_after = True
            return True
        return False

    def resume_writing(self) -> None:
        """Wait for the next request, now that the answer has left."""
        if self._state == _SENDING and not self._transport.is_closing():
            self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self._state = _CLOSED
        self._drop()
        self._hub.every.discard(self)

    # Called by the hub

    def answered(self, answer: Answer) -> None:
        """Send an answer from a worker; then close, or wait for the next request."""
        if self._state == _BUSY:  # else closed meanwhile
            self._respond(answer)

    def expire(self) -> None:
        """Close at once: a deadline has passed, or the server needs the room."""
        self._state = _CLOSED
        self._drop()
        self._transport.abort()

    # The request cycle

    def _take(self, data: bytes) -> None:
        if self._state in (_BUSY, _SENDING):
            # Sent on before the answer left (pipelining): kept for later, up to a head's worth.
            self._buffer += data
            self._count(self._held + len(data))
            return
        if self._http is None:
            data = data.lstrip(b"\r\n")  # empty lines before a request are allowed; not by h11
            if not data:
                return
            self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            self._state = _HEAD
            self._enter(self._hub.heads)
        if self._request is None:
            # h11 bounds only a head still incomplete: one that came whole in a single read
            # would pass at any size. So h11 gets one byte past the limit at most, and the rest
            # once the head is read.
            room = MAX_HEAD_BYTES + 1 - self._held
            data, self._buffer = data[:room], data[room:]
            self._count(self._held + len(data))  # against the budget of unfinished heads
        self._http.receive_data(data)
        self._read(self._http)

    def _read(self, http: h11.Connection) -> None:
        """Read a request whole, throwing its body away; then hand it to a worker."""
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as error:
                status = error.error_status_hint
                if status == 431 and b"\n" not in http.trailing_data[0][:MAX_HEAD_BYTES]:
                    status = 414  # the request line alone is too long
                self._refuse(status, str(error))
                return
            if event is h11.NEED_DATA:
                if self._request is None:
                    self._hub.trim_heads()
                return
            if isinstance(event, h11.Request):
                self._count(0)
                self._request, refusal = _request(event)
                if refusal is not None:
                    self._refuse(*refusal)
                    return
                if self._buffer:  # what came after the head in the same read
                    http.receive_data(self._buffer)
                    self._buffer = b""
                if http.they_are_waiting_for_100_continue:  # RFC 9110 10.1.1
                    self._send(http.send(_CONTINUE) or b"")
            elif isinstance(event, h11.Data):
                self._body += len(event.data)
                if self._body > MAX_BODY_BYTES:
                    self._refuse(413, "Request body too large.")
                    return
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                self._state = _BUSY
                self._leave()
                self._count(len(http.trailing_data[0]))  # a next request, sent along
                self._hub.submit(self, self._request)
                return
            else:  # ConnectionClosed or PAUSED: neither comes before a request's end
                self.expire()
                return

    def _respond(self, answer: Answer) -> None:
        """Frame an answer with h11 and send it; then close, or wait for the next request."""
        http = cast("h11.Connection", self._http)  # a request is in progress
        code, _, reason = answer.status.partition(" ")
        fields = [(b"Date", _date(int(time.time())))]
        fields += [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in answer.headers
            if name.lower() not in _FRAMING
        ]
        # Also for HEAD, whose answer has the GET's Content-Length, not its body: RFC 9110 9.3.2.
        fields.append((b"Content-Length", str(len(answer.body)).encode("ascii")))
        if answer.close:
            fields.append((b"Connection", b"close"))
        head = h11.Response(status_code=int(code), headers=fields, reason=reason.encode("latin-1"))
        try:
            data = http.send(head) or b""
            if self._request is None or self._request.method != "HEAD":
                data += http.send(h11.Data(data=answer.body)) or b""
            data += http.send(_END) or b""
        except h11.LocalProtocolError:
            log.exception("cannot frame an answer", extra={"status": answer.status})
            self.expire()
            return
        self._send(data)
        if http.our_state is h11.MUST_CLOSE:
            self._close_when_sent()
        elif self._transport.get_write_buffer_size():
            self._state = _SENDING
            self._enter(self._hub.sending)
        else:
            self._wait_for_request()

    def _wait_for_request(self) -> None:
        """Wait for the next request, reading at once those sent before the answer left."""
        leftover, self._buffer = self._buffer, b""
        if self._http is not None:
            # A new h11 connection for each request, rather than its next cycle: h11 would
            # refuse the empty lines that may come before a request, and would stay in memory.
            leftover = self._http.trailing_data[0] + leftover
            self._http = None
        self._request = None
        self._body = 0
        self._count(0)
        self._state = _IDLE
        self._enter(self._hub.idle)
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        if leftover:
            self._take(leftover)
        if self._close_after and self._state in (_IDLE, _HEAD):
            self._close_when_sent()  # the client has sent all it will

    def _refuse(self, status: int, reason: str) -> None:
        log.debug("refused a request", extra={"status": status, "reason": reason})
        self._leave()
        self._buffer = b""
        self._count(0)
        self._respond(_refusal(status, reason, self._hub.extra_headers))

    def _close_when_sent(self) -> None:
        self._transport.close()  # asyncio sends what is buffered first
        if self._transport.get_write_buffer_size():
            self._state = _SENDING  # a client that does not read is dropped at the deadline
            self._enter(self._hub.sending)
        else:
            self._state = _CLOSED
            self._leave()

    def _send(self, data: bytes) -> None:
        if self._tls is not None:
            try:
                self._tls.session.write(data)
            except ssl.SSLError:
                return  # a broken session: the client will see the connection close
            data = self._tls.outgoing.read()
        self._transport.write(data)

    def _decrypt(self, tls: _Tls, data: bytes) -> bytes | None:
        """Return the plain bytes that `data` completes (b"" if none), None if TLS failed."""
        tls.incoming.write(data)
        plain = []
        failed = False
        try:
            if not tls.ready:
                tls.session.do_handshake()
                tls.ready = True
                self._wait_for_request()
            while chunk := tls.session.read(TLS_READ_BYTES):
                plain.append(chunk)
        except ssl.SSLWantReadError:
            pass  # more bytes needed
        except ssl.SSLZeroReturnError:
            self._close_after = True  # the client ended the session
        except ssl.SSLError as error:
            log.debug("TLS failed", extra={"client": self._peer(), "error": str(error)})
            failed = True
        if tls.outgoing.pending:  # handshake messages, tickets, alerts
            self._transport.write(tls.outgoing.read())
        if failed:
            return None
        if self._close_after and self._state != _BUSY and not plain:
            return None
        return b"".join(plain)

    def _peer(self) -> str:
        return str(self._transport.get_extra_info("peername"))

    # Bookkeeping

    def _enter(self, queue: _Queue) -> None:
        if self._queue is not None:
            del self._queue[self]
        self.since = time.monotonic()
        self._queue = queue
        queue[self] = None

    def _leave(self) -> None:
        if self._queue is not None:
            del self._queue[self]
            self._queue = None

    def _count(self, held: int) -> None:
        self._hub.held += held - self._held
        self._held = held
        if held > MAX_HEAD_BYTES and self._state in (_BUSY, _SENDING) and not self._paused:
            # Pipelined past a head's worth: read no more until the answer has left.
            self._transport.pause_reading()
            self._paused = True

    def _drop(self) -> None:
        self._leave()
        self._buffer = b""
        self._count(0)
        self._http = None


# --- The server ----------------------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, as Go programs do.

    Return the soft limit now in force. The default soft limit (often 1,024) would otherwise,
    not memory, bound the connections the server can hold.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.debug("cannot raise the open files limit", extra={"error": str(error)})
        else:
            soft = hard
    return soft


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        # The default backlog of 5 (socketserver's) left a burst of scrapers waiting for SYN
        # retransmissions (1 s, 3 s, 7 s): past a scrape timeout.
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


class HttpServer:
    """Serves the app on host:port from a background thread, as the web configuration says.

    Connections are kept alive between requests. One whose request head has not arrived
    within HEAD_TIMEOUT_SECONDS of its first byte is closed, as is one that stays idle for
    IDLE_CONNECTION_SECONDS. At most `max_connections` are open (by default
    DEFAULT_MAX_CONNECTIONS, or DEFAULT_TLS_MAX_CONNECTIONS with TLS; fewer if the limit on
    open files is lower): past it, a new connection closes the open one that has waited longest
    without a request being answered, so that idle connections cannot lock a scraper out.
    """

    def __init__(
        self,
        app: ExporterApp,
        host: str,
        port: int,
        web_config: WebConfig | None = None,
        max_connections: int | None = None,
    ) -> None:
        config = web_config or WebConfig()
        if max_connections is None:
            tls = config.tls is not None
            max_connections = DEFAULT_TLS_MAX_CONNECTIONS if tls else DEFAULT_MAX_CONNECTIONS
        files = raise_open_files_limit()
        self._socket = _listening_socket(host, port)
        self._port: int = self._socket.getsockname()[1]
        self._scheme = "https" if config.tls is not None else "http"
        self.max_connections = max(1, min(max_connections, files - RESERVED_FILES))
        """The connections open at most: `max_connections`, or fewer to fit the open files."""
        self._hub = _Hub(
            _guarded(app, config),
            config.tls.context if config.tls is not None else None,
            config.headers,
            self.max_connections,
        )
        self._ready = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def scheme(self) -> str:
        """`https` when TLS is configured, else `http`."""
        return self._scheme

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return self._port

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting requests, close every connection and the socket; quick in any case."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive() and self._ready.wait(STOP_SECONDS):
            loop, server = self._running
            with contextlib.suppress(RuntimeError):  # the loop has ended on its own
                loop.call_soon_threadsafe(self._hub.shutdown, server, loop)
            self._thread.join(timeout=STOP_SECONDS)
        else:
            self._socket.close()
        self._hub.pool.shutdown(wait=False, cancel_futures=True)
        if self._hub.auth_pool is not None:
            self._hub.auth_pool.shutdown(wait=False, cancel_futures=True)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.set_exception_handler(self._hub.problem)
            hub = self._hub
            server = loop.run_until_complete(
                loop.create_server(
                    lambda: _Connection(hub), sock=self._socket, backlog=socket.SOMAXCONN
                )
            )
            hub.loop = loop
            loop.call_later(SWEEP_SECONDS, hub.sweep)
            self._running = (loop, server)
            self._ready.set()
            loop.run_forever()
            # Connections accepted while stopping are still being set up: let them end.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()
