"""The one HTTP call to Magnet's List Sessions API, and the typed error for every way it fails."""

from __future__ import annotations

import dataclasses
import enum
import http
import re
import time
from collections.abc import Callable
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Protocol, cast

import httpx
from isal import isal_zlib

from magnet_exporter import __version__

SESSIONS_PATH = "/api/sessions"
USER_AGENT = f"magnet-exporter/{__version__}"
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20
ACCEPT_ENCODING = "gzip"
"""The content coding asked for: the one every HTTP server offers."""
_GZIP = frozenset({"gzip", "x-gzip"})
_GZIP_WINDOW = 16 + isal_zlib.MAX_WBITS  # a gzip header and trailer around deflate data
# isal's stub declares its error as an instance; it is the class of what decompress raises.
_GZIP_ERROR = cast("type[Exception]", isal_zlib.error)

# The hint tells the operator what to do; it names the setting, never its value.
_STATUS_HINTS = {
    401: "check MAGNET_API_KEY",
    403: "the key has no access to this organization; check MAGNET_ORGANIZATION_ID",
    429: "Magnet is rate limiting this exporter; raise MAGNET_POLL_INTERVAL_SECONDS",
}
# RFC 9110 allows Retry-After on any answer, but only these two mean "come back later".
_RETRY_AFTER_STATUSES = frozenset({429, 503})
# Any length: a delay too long for a float reads as infinite, and the poller caps it.
_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")
_SHOWN_RETRY_AFTER = 40
"""Characters of a `Retry-After` value shown in a reason at most (a date takes 29)."""


class Outcome(str, enum.Enum):
    """The result of one poll, as counted in `magnet_exporter_polls_total{outcome}`."""

    SUCCESS = "success"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    INVALID_RESPONSE = "invalid_response"
    TOO_LARGE = "too_large"


TRANSIENT_OUTCOMES = frozenset(
    {Outcome.RATE_LIMITED, Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR}
)
"""Outcomes that may go away on their own, so that a retry within the same poll can help."""


class PollError(Exception):
    """A poll that did not give usable data: its outcome, HTTP status if any, and a reason."""

    def __init__(
        self,
        outcome: Outcome,
        reason: str,
        status_code: int | None = None,
        *,
        transient: bool | None = None,
        retry_after: str | None = None,
        sent: bool = True,
        received_bytes: int = 0,
    ) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.status_code = status_code
        self.transient = outcome in TRANSIENT_OUTCOMES if transient is None else transient
        self.retry_after = retry_after
        """The raw `Retry-After` header of a 429 or 503 answer, if it had one."""
        self.sent = sent
        """False when no request went out (no time left, no worker): not counted as a request."""
        self.received_bytes = received_bytes
        """Body bytes received before the failure, as sent (compressed or not)."""

    def __str__(self) -> str:
        return self.reason

    @property
    def code(self) -> str:
        """The `code` label in `magnet_exporter_requests_total`: the status, or what failed."""
        return str(self.status_code) if self.status_code is not None else self.outcome.value


@dataclasses.dataclass(frozen=True)
class Answer:
    """A 2xx answer to `GET /api/sessions`, its body read in full."""

    status_code: int
    body: bytes | bytearray
    received_bytes: int = 0
    """The body's size as it came over the network (compressed, if it was)."""


def outcome_for_status(status_code: int) -> Outcome:
    """Classify a non-2xx HTTP status code."""
    named = {401: Outcome.UNAUTHORIZED, 403: Outcome.FORBIDDEN, 429: Outcome.RATE_LIMITED}
    if status_code in named:
        return named[status_code]
    if 400 <= status_code < 500:
        return Outcome.CLIENT_ERROR
    if 500 <= status_code < 600:
        return Outcome.SERVER_ERROR
    # Redirects are not followed (the key would travel with them); anything else is unexpected.
    return Outcome.INVALID_RESPONSE


def retry_after_seconds(value: str, now: float) -> float | None:
    """Seconds from `now` (Unix time) until a `Retry-After` value, or None if it is not valid.

    The value is delay-seconds or an HTTP-date (RFC 9110, 10.2.3); a date in the past gives 0,
    and a delay too long for a float gives infinity (the caller caps it).
    """
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)  # never raises: a huge number of digits reads as inf
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):  # which one depends on the Python version
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # "-0000": HTTP dates are in UTC
    return max(0.0, moment.timestamp() - now)


def _status_error(response: httpx.Response) -> PollError:
    code = response.status_code
    # The standard phrase, not the server's: free text from upstream could echo the key.
    reason = f"{code} {_standard_phrase(code)}"
    hint = _STATUS_HINTS.get(code)
    retry_after = response.headers.get("retry-after") if code in _RETRY_AFTER_STATUSES else None
    if code == 429 and retry_after is not None and retry_after_seconds(retry_after, 0) is not None:
        shown = retry_after.strip()[:_SHOWN_RETRY_AFTER]  # a number or a date: safe to show
        hint = f"{hint} (Retry-After: {shown})"
    if 300 <= code < 400:
        hint = "redirects are not followed; set MAGNET_API_URL to the final address"
    elif hint is None and code >= 500:
        hint = "Magnet reported a server error"
    message = f"{reason}: {hint}" if hint else reason
    return PollError(outcome_for_status(code), message, code, retry_after=retry_after)


def _standard_phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "HTTP error"


def _too_large(status_code: int, limit: int) -> PollError:
    return PollError(
        Outcome.TOO_LARGE,
        f"response body larger than {limit} bytes, abandoned; raise MAGNET_MAX_RESPONSE_BYTES",
        status_code,
    )


def api_http_client(timeout: float) -> httpx.Client:
    """Build the API's HTTP client: timeout, user agent, no redirects (they would carry the key).

    httpx reads `HTTPS_PROXY`, `NO_PROXY` and `SSL_CERT_FILE` from the environment.
    """
    headers = {"User-Agent": USER_AGENT}
    return httpx.Client(timeout=timeout, headers=headers, follow_redirects=False)


class Secret(Protocol):
    """The API key as the client reads it: pydantic's `SecretStr`, or the poll worker's own.

    A protocol, so that poll workers need not import pydantic (about 6 MB each).
    """

    def get_secret_value(self) -> str:
        """Return the key itself, for the request header only."""
        ...


class MagnetClient:
    """Fetches the raw List Sessions body, one request per call; every failure is a `PollError`."""

    def __init__(
        self,
        http: httpx.Client,
        api_url: str,
        api_key: Callable[[], Secret],
        organization_id: str | None = None,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._http = http
        self._url = api_url.rstrip("/") + SESSIONS_PATH
        self._api_key = api_key
        self._params = {"organizationId": organization_id} if organization_id else {}
        self._max_bytes = max_response_bytes

    def fetch_sessions(self) -> bytes | bytearray:
        """Return the body of a 2xx answer to `GET /api/sessions`, or raise `PollError`."""
        return self.fetch().body

    def fetch(self, deadline: float | None = None) -> Answer:
        """Send one `GET /api/sessions`; give up at `deadline` (`time.monotonic()` seconds)."""
        # The key is asked for on every request, so that a rotated key file takes effect at once.
        headers = {
            "x-api-key": self._api_key().get_secret_value(),
            "accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,  # what `_read_body` decodes, whatever the client
        }
        timeout = self._timeout(deadline)
        received = 0  # body bytes off the network, whatever becomes of the request
        try:
            with self._http.stream(
                "GET", self._url, params=self._params, headers=headers, timeout=timeout
            ) as response:
                try:
                    if not response.is_success:
                        raise _status_error(response)
                    body = self._read_body(response, deadline)
                finally:
                    received = response.num_bytes_downloaded
                return Answer(response.status_code, body, received)
        except PollError as error:
            error.received_bytes = received
            raise
        except httpx.TimeoutException as exc:
            reason = f"timed out: {_describe(exc)}"
            raise PollError(Outcome.TIMEOUT, reason, received_bytes=received) from None
        except httpx.LocalProtocolError:
            # h11 quotes the offending header value, which would be the key: never pass it on.
            raise PollError(
                Outcome.CONNECTION_ERROR,
                "request not sent: a header value is not allowed in HTTP; check MAGNET_API_KEY",
                transient=False,  # the same key would fail the same way
                sent=False,
            ) from None
        except httpx.TransportError as exc:
            reason = f"connection failed: {_describe(exc)}"
            raise PollError(Outcome.CONNECTION_ERROR, reason, received_bytes=received) from None

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        """Return the client's timeouts, each cut to the time left before `deadline`."""
        configured = self._http.timeout
        if deadline is None:
            return configured
        left = deadline - time.monotonic()
        if left <= 0:
            raise PollError(Outcome.TIMEOUT, "timed out: no time left in this poll", sent=False)

        def cut(seconds: float | None) -> float:
            return left if seconds is None else min(seconds, left)

        return httpx.Timeout(
            connect=cut(configured.connect),
            read=cut(configured.read),
            write=cut(configured.write),
            pool=cut(configured.pool),
        )

    def _read_body(self, response: httpx.Response, deadline: float | None) -> bytearray:
        """Read and decode the body in chunks; abandon it past the byte limit or the deadline.

        gzip is decoded here with ISA-L, twice as fast as zlib, and never more than the limit
        at a time: a gzip bomb is cut before it grows, not after a chunk is unpacked.
        """
        declared = response.headers.get("content-length", "")
        coding = response.headers.get("content-encoding", "identity").strip().lower()
        if coding in _GZIP:
            decoder = isal_zlib.decompressobj(_GZIP_WINDOW)
        elif coding != "identity":
            reason = f"invalid response: content coding {coding[:40]!r}, asked for gzip"
            raise PollError(Outcome.INVALID_RESPONSE, reason, response.status_code)
        elif declared.isdigit() and int(declared) > self._max_bytes:
            raise _too_large(response.status_code, self._max_bytes)  # before reading a byte
        else:
            decoder = None
        # One buffer that grows in place, not a list of chunks joined at the end: the body is
        # held once, in one block that goes back to the system when the poll is over.
        body = bytearray()
        try:
            for chunk in response.iter_raw():
                while chunk:
                    if decoder is None:
                        body += chunk
                        chunk = b""
                    else:  # one byte past the limit at most: enough to know it is too large
                        body += decoder.decompress(chunk, self._max_bytes - len(body) + 1)
                        chunk = decoder.unconsumed_tail
                    if len(body) > self._max_bytes:
                        raise _too_large(response.status_code, self._max_bytes)
                if deadline is not None and time.monotonic() > deadline:
                    # httpx's read timeout is per read: a slow trickle would never trip it.
                    raise PollError(Outcome.TIMEOUT, "timed out: the body came too slowly")
            if decoder is not None and not decoder.eof:
                raise _GZIP_ERROR("the gzip stream ends early")
        except _GZIP_ERROR as exc:
            reason = f"invalid response: not valid gzip: {exc}"[:300]
            raise PollError(Outcome.INVALID_RESPONSE, reason, response.status_code) from None
        return body


def _describe(exc: httpx.HTTPError) -> str:
    # httpx messages carry the URL at most (the key travels in a header), never headers.
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
