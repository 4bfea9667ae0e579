"""The HTTP call, against the simulated API over loopback: the request, and each failure class."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from conftest import SECRET_KEY, free_port
from pydantic import SecretStr

from magnet_exporter import __version__
from magnet_exporter.client import MagnetClient, Outcome, PollError
from magnet_exporter.demo import DemoApiServer, Fault
from magnet_exporter.keys import StaticKey


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0, headers={"User-Agent": f"magnet-exporter/{__version__}"}) as c:
        yield c


def client(http: httpx.Client, url: str, organization_id: str | None = None) -> MagnetClient:
    return MagnetClient(http, url, StaticKey(SecretStr(SECRET_KEY)), organization_id)


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
