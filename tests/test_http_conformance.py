"""HTTP/1.1 as RFC 9110 and 9112 ask, on raw sockets to the real server, with and without TLS.

Each case is a place where a server could read a request differently from a proxy in front of
it (the ground of request smuggling): the server must refuse it and close the connection, and
never read what follows as another request.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import trustme
from prometheus_client import CollectorRegistry, Gauge

from magnet_exporter.server import MAX_BODY_BYTES, ExporterApp, HttpServer
from magnet_exporter.webconfig import WebConfig, load_web_config

HEALTHY = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
LAST = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class Answer(NamedTuple):
    """One answer read off the wire."""

    status: int
    headers: dict[str, str]
    """Lower-cased names; repeated names joined with a comma."""
    body: bytes


Connect = Callable[[], socket.socket]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=["http", "https"])
def connect(request: pytest.FixtureRequest, ca: trustme.CA, tmp_path: Path) -> Iterator[Connect]:
    """A served exporter app; yield a function that opens a raw connection to it."""
    config = WebConfig()
    client: ssl.SSLContext | None = None
    if request.param == "https":
        leaf = ca.issue_cert("127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
        leaf.private_key_pem.write_to_path(tmp_path / "key.pem")
        path = tmp_path / "web.yml"
        path.write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")
        config = load_web_config(path)
        client = ssl.create_default_context()
        ca.configure_trust(client)
    registry = CollectorRegistry()
    Gauge("magnet_test_value", "A value to find on /metrics.", registry=registry).set(42)
    server = HttpServer(ExporterApp(registry, lambda: {}), "127.0.0.1", 0, config)
    server.start()

    def open_connection() -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if client is None:
            return raw
        return client.wrap_socket(raw, server_hostname="127.0.0.1")

    try:
        yield open_connection
    finally:
        server.stop()


def read_to_end(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def exchange(connect: Connect, data: bytes, *, half_close: bool = False) -> bytes:
    """Send `data` on a new connection; return all the server sent before it closed."""
    with connect() as connection:
        connection.sendall(data)
        if half_close:  # over TLS too, a TCP half-close: SSLSocket.shutdown would end TLS
            socket.socket.shutdown(connection, socket.SHUT_WR)
        return read_to_end(connection)


def parse(received: bytes, methods: list[str]) -> list[Answer]:
    """Split what was received into answers, one per request method given (HEAD: no body)."""
    answers = []
    rest = received
    for method in methods:
        head, found, rest = rest.partition(b"\r\n\r\n")
        assert found, f"answer to {method} missing in {received!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            key = name.lower()
            headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
        length = 0 if method == "HEAD" else int(headers["content-length"])
        answers.append(Answer(int(status), headers, rest[:length]))
        rest = rest[length:]
    assert rest == b"", f"more than {len(methods)} answers: {received!r}"
    return answers


REFUSED = {
    # RFC 9112 3.2: a request without Host, or with more than one, or an invalid one: 400.
    "no Host": (b"GET /-/healthy HTTP/1.1\r\n\r\n", 400),
    "two Host": (b"GET /-/healthy HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "bad Host": (b"GET /-/healthy HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    # RFC 9112 6.3: framing that a proxy may read otherwise.
    "two Content-Length": (
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    "Content-Length list": (
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab",
        400,
    ),
    "Content-Length and Transfer-Encoding": (
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9110 5.1 and 5.5: a field name is a token; a value holds no NUL, CR, LF or DEL.
    "not a token": (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nFo@o: bar\r\n\r\n", 400),
    "space before colon": (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nFoo : bar\r\n\r\n", 400),
    "NUL in a value": (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nFoo: a\x00b\r\n\r\n", 400),
    "lone CR in a value": (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nFoo: a\rb\r\n\r\n", 400),
    "DEL in a value": (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nFoo: a\x7fb\r\n\r\n", 400),
    "no colon": (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400),
    # RFC 9112 3 and 2.3: one space between the parts, a version of one digit each side.
    "HTTP/1.10": (b"GET /-/healthy HTTP/1.10\r\nHost: x\r\n\r\n", 400),
    "tabs in the request line": (b"GET\t/-/healthy\tHTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "no version": (b"HELLO\r\n\r\n", 400),
    "control in the target": (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "HTTP/2.0": (b"GET /-/healthy HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    # RFC 9112 6.1: a transfer coding the server does not know.
    "Transfer-Encoding gzip": (
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    "Transfer-Encoding chunked twice": (
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        501,
    ),
    # Limits: the head, its lines, the body.
    "request line over 16 KiB": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "head over 16 KiB": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n",
        431,
    ),
    "101 header lines": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 100 + b"\r\n", 431),
    "body over the cap by length": (
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
        413,
    ),
    "body over the cap by chunks": (
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"4000\r\n" + b"a" * 0x4000 + b"\r\n") * 5,
        413,
    ),
}


@pytest.mark.parametrize(("request_bytes", "status"), REFUSED.values(), ids=REFUSED.keys())
def test_what_the_rfcs_refuse_is_refused_and_the_connection_closed(
    connect: Connect, request_bytes: bytes, status: int
) -> None:
    # A request after it must not be answered: the connection ends with the refusal.
    received = exchange(connect, request_bytes + HEALTHY)
    (answer,) = parse(received, ["GET"])
    assert answer.status == status, received
    assert answer.headers["connection"] == "close"
    assert answer.body.startswith(f"{status} ".encode())


def test_a_body_is_read_and_thrown_away_never_taken_for_a_request(connect: Connect) -> None:
    smuggled = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
    received = exchange(
        connect,
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        + smuggled
        + b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(smuggled)
        + smuggled
        + b"\r\n0\r\n\r\n"
        + LAST,
    )
    answers = parse(received, ["POST", "POST", "GET"])
    assert [answer.status for answer in answers] == [200, 200, 200]  # no 404: nothing smuggled
    assert [answer.headers.get("connection") for answer in answers] == [None, None, "close"]


def test_a_body_up_to_the_cap_keeps_the_connection(connect: Connect) -> None:
    body = b"a" * MAX_BODY_BYTES
    head = b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    answers = parse(exchange(connect, head + body + LAST), ["POST", "GET"])
    assert [answer.status for answer in answers] == [200, 200]


def test_expect_100_continue(connect: Connect) -> None:
    with connect() as connection:
        connection.sendall(
            b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += connection.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 ")
        connection.sendall(b"body")
        (answer,) = parse(read_to_end(connection), ["POST"])
    assert answer.status == 200


def test_pipelined_requests_are_answered_in_order(connect: Connect) -> None:
    paths = ["/-/healthy", "/nowhere", "/-/ready", "/", "/metrics"]
    requests = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode() for p in paths)
    answers = parse(exchange(connect, requests + LAST), ["GET"] * (len(paths) + 1))
    assert [answer.status for answer in answers] == [200, 404, 503, 200, 200, 200]
    assert b"magnet_test_value 42.0" in answers[4].body


def test_requests_sent_before_a_half_close_are_all_answered(connect: Connect) -> None:
    received = exchange(
        connect, HEALTHY + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True
    )
    answers = parse(received, ["GET", "GET"])
    assert [answer.status for answer in answers] == [200, 404]


@pytest.mark.parametrize(
    "truncated",
    [
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n",
        b"GET /-/heal",
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
    ids=["head without its end", "half a request line", "short body", "short chunk"],
)
def test_a_truncated_request_is_not_answered(connect: Connect, truncated: bytes) -> None:
    assert exchange(connect, truncated, half_close=True) == b""


def test_bytes_after_a_connection_close_request_are_not_read(connect: Connect) -> None:
    received = exchange(connect, LAST + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    (answer,) = parse(received, ["GET"])
    assert (answer.status, answer.headers["connection"]) == (200, "close")


def test_empty_lines_before_a_request_and_bare_line_feeds_are_accepted(connect: Connect) -> None:
    # RFC 9112 2.2: an empty line before a request line is ignored; a bare LF may end a line.
    received = exchange(connect, b"\r\n\r\n" + HEALTHY + b"\r\nGET / HTTP/1.1\nHost: x\n\n" + LAST)
    assert [answer.status for answer in parse(received, ["GET"] * 3)] == [200, 200, 200]


def test_http_1_0_is_answered_and_closed(connect: Connect) -> None:
    (answer,) = parse(exchange(connect, b"GET /-/healthy HTTP/1.0\r\n\r\n"), ["GET"])
    assert (answer.status, answer.headers["connection"], answer.body) == (
        200,
        "close",
        b"Healthy.\n",
    )


@pytest.mark.parametrize("path", ["/metrics", "/", "/-/healthy", "/-/ready", "/nowhere"])
def test_head_is_answered_as_get_without_the_body(connect: Connect, path: str) -> None:
    request = b"%s " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    received = exchange(connect, request % b"HEAD" + request % b"GET" + LAST)
    head, get, _ = parse(received, ["HEAD", "GET", "GET"])
    assert head.body == b""
    assert get.body
    assert head.status == get.status
    without_date = [
        {name: value for name, value in answer.headers.items() if name != "date"}
        for answer in (head, get)
    ]
    assert without_date[0] == without_date[1]
    assert int(head.headers["content-length"]) == len(get.body)


def test_answers_carry_a_date(connect: Connect) -> None:
    (answer,) = parse(exchange(connect, LAST), ["GET"])
    assert answer.headers["date"].endswith(" GMT")


def test_the_server_stays_usable_after_each_refusal(connect: Connect) -> None:
    for request_bytes, _ in REFUSED.values():
        with contextlib.suppress(ConnectionError):  # some are refused before all is sent
            exchange(connect, request_bytes)
    (answer,) = parse(exchange(connect, LAST), ["GET"])
    assert answer.status == 200
