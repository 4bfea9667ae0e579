"""The HTTP call, against the simulated API over loopback: the request, and each failure class."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from email.utils import formatdate

import httpx
import pytest
from conftest import FIXED_NOW, SECRET_KEY, FakeClock, free_port, stop_promptly
from pydantic import SecretStr

from magnet_exporter import __version__
from magnet_exporter.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MagnetClient,
    Outcome,
    PollError,
    api_http_client,
    retry_after_seconds,
)
from magnet_exporter.demo import (
    DEFAULT_ORGANIZATION,
    DemoApiServer,
    Fault,
    FaultRates,
    SimulatedMagnet,
)
from magnet_exporter.keys import StaticKey


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0, headers={"User-Agent": f"magnet-exporter/{__version__}"}) as c:
        yield c


def client(
    http: httpx.Client, url: str, organization_id: str | None = None, max_bytes: int | None = None
) -> MagnetClient:
    key = StaticKey(SecretStr(SECRET_KEY))
    if max_bytes is None:
        return MagnetClient(http, url, key, organization_id)
    return MagnetClient(http, url, key, organization_id, max_response_bytes=max_bytes)


@contextlib.contextmanager
def faulty_api(rates: FaultRates) -> Iterator[DemoApiServer]:
    server = DemoApiServer(SimulatedMagnet(clock=FakeClock()), faults=rates).start()
    try:
        yield server
    finally:
        stop_promptly(server)


def fetch_error(magnet: MagnetClient, deadline: float | None = None) -> PollError:
    with pytest.raises(PollError) as caught:
        magnet.fetch(deadline)
    return caught.value


def test_request_carries_key_user_agent_and_organization(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    body = client(http, simulator.url + "/", "org-42").fetch_sessions()
    assert body.startswith(b'{"sessions"')
    assert simulator.last_headers["x-api-key"] == SECRET_KEY
    assert simulator.last_headers["User-Agent"] == f"magnet-exporter/{__version__}"
    assert simulator.last_query == {"organizationId": ["org-42"]}


def test_no_organization_id_sends_no_query(http: httpx.Client, simulator: DemoApiServer) -> None:
    client(http, simulator.url).fetch_sessions()
    assert simulator.last_query == {}


@pytest.mark.parametrize(
    ("status", "outcome", "reason"),
    [
        (401, Outcome.UNAUTHORIZED, "401 Unauthorized: check MAGNET_API_KEY"),
        (403, Outcome.FORBIDDEN, "403 Forbidden: the key has no access"),
        (429, Outcome.RATE_LIMITED, "429 Too Many Requests: Magnet is rate limiting"),
        (400, Outcome.CLIENT_ERROR, "400 Bad Request"),
        (404, Outcome.CLIENT_ERROR, "404 Not Found"),
        (500, Outcome.SERVER_ERROR, "500 Internal Server Error: Magnet reported a server error"),
        (503, Outcome.SERVER_ERROR, "503 Service Unavailable"),
        (302, Outcome.INVALID_RESPONSE, "302 Found: redirects are not followed"),
    ],
)
def test_http_error_statuses_are_classified(
    http: httpx.Client, simulator: DemoApiServer, status: int, outcome: Outcome, reason: str
) -> None:
    simulator.fault = Fault(status=status, headers=(("Location", "https://elsewhere.example"),))
    with pytest.raises(PollError) as caught:
        client(http, simulator.url).fetch_sessions()
    assert caught.value.outcome is outcome
    assert caught.value.status_code == status
    assert str(caught.value).startswith(reason)


def test_retry_after_is_reported(http: httpx.Client, simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=429, headers=(("Retry-After", "30"),))
    with pytest.raises(PollError, match=r"\(Retry-After: 30\)"):
        client(http, simulator.url).fetch_sessions()


def test_missing_key_is_unauthorized(http: httpx.Client, simulator: DemoApiServer) -> None:
    blank = MagnetClient(http, simulator.url, StaticKey(SecretStr("")))
    with pytest.raises(PollError) as caught:
        blank.fetch_sessions()
    assert caught.value.outcome is Outcome.UNAUTHORIZED


def test_slow_answer_is_a_timeout(simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=200, body=b'{"sessions": []}', delay=1.0)
    with httpx.Client(timeout=0.2) as impatient, pytest.raises(PollError) as caught:
        client(impatient, simulator.url).fetch_sessions()
    assert caught.value.outcome is Outcome.TIMEOUT
    assert caught.value.status_code is None


def test_refused_connection_is_a_connection_error(http: httpx.Client) -> None:
    with pytest.raises(PollError) as caught:
        client(http, f"http://127.0.0.1:{free_port()}").fetch_sessions()
    assert caught.value.outcome is Outcome.CONNECTION_ERROR
    assert caught.value.reason.startswith("connection failed:")


def test_connection_closed_without_answer_is_a_connection_error(http: httpx.Client) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def accept_and_hang_up() -> None:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.close()

        threading.Thread(target=accept_and_hang_up, daemon=True).start()
        with pytest.raises(PollError) as caught:
            client(http, f"http://127.0.0.1:{port}").fetch_sessions()
    assert caught.value.outcome is Outcome.CONNECTION_ERROR


def test_a_key_that_cannot_be_sent_is_not_quoted(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    broken = MagnetClient(http, simulator.url, StaticKey(SecretStr(SECRET_KEY + "\n")))
    with pytest.raises(PollError) as caught:
        broken.fetch_sessions()
    assert caught.value.outcome is Outcome.CONNECTION_ERROR
    assert "check MAGNET_API_KEY" in str(caught.value)
    assert SECRET_KEY not in str(caught.value)


def test_errors_never_carry_the_key(http: httpx.Client, simulator: DemoApiServer) -> None:
    reasons = []
    for fault in (Fault(status=401), Fault(status=500), Fault(status=429)):
        simulator.fault = fault
        with pytest.raises(PollError) as caught:
            client(http, simulator.url).fetch_sessions()
        reasons.append(repr(caught.value) + str(caught.value))
    assert not any(SECRET_KEY in reason for reason in reasons)


def test_answer_carries_status_and_body(http: httpx.Client, simulator: DemoApiServer) -> None:
    answer = client(http, simulator.url).fetch()
    assert answer.status_code == 200
    assert json.loads(answer.body) == simulator.magnet.sessions_response("acme")


def test_default_body_limit_is_64_mib() -> None:
    assert DEFAULT_MAX_RESPONSE_BYTES == 64 * 1024 * 1024


def test_body_at_the_limit_is_read(http: httpx.Client, simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=200, body=b"x" * 1000)
    assert client(http, simulator.url, max_bytes=1000).fetch().body == b"x" * 1000


def test_declared_length_past_the_limit_is_refused(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    simulator.fault = Fault(status=200, body=b"x" * 1001)
    error = fetch_error(client(http, simulator.url, max_bytes=1000))
    assert error.outcome is Outcome.TOO_LARGE
    assert error.status_code == 200
    assert error.code == "200"
    assert not error.transient
    assert "MAGNET_MAX_RESPONSE_BYTES" in error.reason


def test_body_without_length_is_abandoned_past_the_limit(http: httpx.Client) -> None:
    # 8 GiB without Content-Length: reading it all would take far longer than the bound.
    with faulty_api(FaultRates(oversized=1.0, oversized_bytes=8 * 2**30)) as server:
        started = time.monotonic()
        error = fetch_error(client(http, server.url, max_bytes=64 * 1024))
        assert time.monotonic() - started < 2.0
    assert error.outcome is Outcome.TOO_LARGE
    assert [served.kind for served in server.served] == ["oversized"]


def test_limit_applies_to_the_decoded_body(http: httpx.Client, simulator: DemoApiServer) -> None:
    bomb = gzip.compress(b"0" * 2**20)  # a few kilobytes that unpack to 1 MiB
    simulator.fault = Fault(status=200, body=bomb, headers=(("Content-Encoding", "gzip"),))
    error = fetch_error(client(http, simulator.url, max_bytes=64 * 1024))
    assert len(bomb) < 64 * 1024
    assert error.outcome is Outcome.TOO_LARGE


def test_a_gzip_bomb_is_cut_at_the_limit_inside_one_chunk(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * 2**20
    # About 250 kB that would unpack to 256 MiB: each 64 kB read holds some 64 MiB.
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    simulator.fault = Fault(status=200, body=bomb, headers=(("Content-Encoding", "gzip"),))
    tracemalloc.start()
    try:
        error = fetch_error(client(http, simulator.url, max_bytes=2**20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.outcome is Outcome.TOO_LARGE
    # Never much more than the limit was unpacked, not a read's worth of the bomb.
    assert peak < 8 * 2**20


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        (b"not gzip", "gzip"),
        (gzip.compress(b'{"sessions": []}')[:-12], "gzip"),  # the stream cut short
        (b'{"sessions": []}', "br"),  # a coding that was not asked for
    ],
    ids=["not-gzip", "cut-short", "not-asked-for"],
)
def test_undecodable_body_is_an_invalid_response(
    http: httpx.Client, simulator: DemoApiServer, body: bytes, coding: str
) -> None:
    simulator.fault = Fault(status=200, body=body, headers=(("Content-Encoding", coding),))
    error = fetch_error(client(http, simulator.url))
    assert error.outcome is Outcome.INVALID_RESPONSE
    assert error.code == "200"


def test_deadline_cuts_a_longer_request_timeout(simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=200, body=b'{"sessions": []}', delay=30.0)
    with httpx.Client(timeout=30.0) as patient:
        started = time.monotonic()
        error = fetch_error(client(patient, simulator.url), deadline=started + 0.3)
        took = time.monotonic() - started
    assert error.outcome is Outcome.TIMEOUT
    assert error.code == "timeout"
    assert 0.25 < took < 10  # cut at 0.3 s, not at 30 s; the rest is room for a loaded machine


def test_no_request_once_the_deadline_has_passed(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    error = fetch_error(client(http, simulator.url), deadline=time.monotonic() - 0.001)
    assert error.outcome is Outcome.TIMEOUT
    assert not error.sent  # not counted as a request
    assert simulator.requests == 0


def test_reset_in_the_middle_of_the_body_is_a_connection_error(http: httpx.Client) -> None:
    with faulty_api(FaultRates(reset=1.0)) as server:
        error = fetch_error(client(http, server.url))
    assert error.outcome is Outcome.CONNECTION_ERROR
    assert error.code == "connection_error"
    assert error.transient


@pytest.mark.parametrize(
    ("status", "transient"),
    [(status, False) for status in (400, 401, 403, 404)]
    + [(status, True) for status in (429, 500, 502, 503, 504)],
)
def test_only_429_and_5xx_statuses_are_transient(
    http: httpx.Client, simulator: DemoApiServer, status: int, transient: bool
) -> None:
    simulator.fault = Fault(status=status)
    error = fetch_error(client(http, simulator.url))
    assert error.transient is transient
    assert error.code == str(status)


def test_timeouts_and_refused_connections_are_transient(simulator: DemoApiServer) -> None:
    simulator.fault = Fault(status=200, body=b"{}", delay=1.0)
    with httpx.Client(timeout=0.2) as impatient:
        assert fetch_error(client(impatient, simulator.url)).transient
        refused = fetch_error(client(impatient, f"http://127.0.0.1:{free_port()}"))
    assert refused.transient
    assert refused.code == "connection_error"


def test_a_key_that_cannot_be_sent_is_not_transient(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    broken = MagnetClient(http, simulator.url, StaticKey(SecretStr("k\n")))
    error = fetch_error(broken)
    assert error.outcome is Outcome.CONNECTION_ERROR
    assert not error.transient


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_kept_on_429_and_503(
    http: httpx.Client, simulator: DemoApiServer, status: int
) -> None:
    simulator.fault = Fault(status=status, headers=(("Retry-After", "7"),))
    assert fetch_error(client(http, simulator.url)).retry_after == "7"


def test_retry_after_is_ignored_on_other_statuses(
    http: httpx.Client, simulator: DemoApiServer
) -> None:
    simulator.fault = Fault(status=500, headers=(("Retry-After", "7"),))
    assert fetch_error(client(http, simulator.url)).retry_after is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (formatdate(FIXED_NOW + 90, usegmt=True), 90.0),
        (formatdate(FIXED_NOW + 90).replace("+0000", "-0000"), 90.0),
        (formatdate(FIXED_NOW - 90, usegmt=True), 0.0),
        ("-5", None),
        ("soon", None),
        ("", None),
        ("1e9", None),
        ("99999999999", 99999999999.0),  # too long to wait, but a delay: the poller caps it
        ("9" * 400, float("inf")),
    ],
)
def test_retry_after_values(value: str, seconds: float | None) -> None:
    assert retry_after_seconds(value, FIXED_NOW) == seconds


def test_compressed_answers_are_asked_for_and_the_limit_applies_decoded(
    simulator: DemoApiServer,
) -> None:
    body = simulator.sessions_body(DEFAULT_ORGANIZATION)
    with api_http_client(2.0) as http:
        answer = client(http, simulator.url).fetch()
        assert simulator.last_headers["Accept-Encoding"] == "gzip"
        assert answer.body == body
        assert answer.received_bytes == len(simulator.gzipped(body)) < len(body)
        small = client(http, simulator.url, max_bytes=len(body) - 1)
        error = fetch_error(small)
    assert error.outcome is Outcome.TOO_LARGE
    assert 0 < error.received_bytes <= len(simulator.gzipped(body))
