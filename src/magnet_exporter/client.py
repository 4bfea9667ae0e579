"""The one HTTP call to Magnet's List Sessions API, and the typed error for every way it fails."""

from __future__ import annotations

import enum
from collections.abc import Callable

import httpx
from pydantic import SecretStr

SESSIONS_PATH = "/api/sessions"

# The hint tells the operator what to do; it names the setting, never its value.
_STATUS_HINTS = {
    401: "check MAGNET_API_KEY",
    403: "the key has no access to this organization; check MAGNET_ORGANIZATION_ID",
    429: "Magnet is rate limiting this exporter; raise MAGNET_POLL_INTERVAL_SECONDS",
}


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


class PollError(Exception):
    """A poll that did not give usable data: its outcome, HTTP status if any, and a reason."""

    def __init__(self, outcome: Outcome, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.status_code = status_code

    def __str__(self) -> str:
        return self.reason


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


def _status_error(response: httpx.Response) -> PollError:
    code = response.status_code
    reason = f"{code} {response.reason_phrase or 'HTTP error'}".rstrip()
    hint = _STATUS_HINTS.get(code)
    if code == 429 and "retry-after" in response.headers:
        hint = f"{hint} (Retry-After: {response.headers['retry-after'][:64]})"
    if 300 <= code < 400:
        hint = "redirects are not followed; set MAGNET_API_URL to the final address"
    elif hint is None and code >= 500:
        hint = "Magnet reported a server error"
    return PollError(outcome_for_status(code), f"{reason}: {hint}" if hint else reason, code)


class MagnetClient:
    """Fetches the raw List Sessions body; turns every failure into a `PollError`."""

    def __init__(
        self,
        http: httpx.Client,
        api_url: str,
        api_key: Callable[[], SecretStr],
        organization_id: str | None = None,
    ) -> None:
        self._http = http
        self._url = api_url.rstrip("/") + SESSIONS_PATH
        self._api_key = api_key
        self._params = {"organizationId": organization_id} if organization_id else {}

    def fetch_sessions(self) -> bytes:
        """Return the body of a 2xx answer to `GET /api/sessions`, or raise `PollError`."""
        # The key is asked for on every poll, so that a rotated key file takes effect at once.
        headers = {"x-api-key": self._api_key().get_secret_value(), "accept": "application/json"}
        try:
            response = self._http.get(self._url, params=self._params, headers=headers)
        except httpx.TimeoutException as exc:
            raise PollError(Outcome.TIMEOUT, f"timed out: {_describe(exc)}") from None
        except httpx.LocalProtocolError:
            # h11 quotes the offending header value, which would be the key: never pass it on.
            raise PollError(
                Outcome.CONNECTION_ERROR,
                "request not sent: a header value is not allowed in HTTP; check MAGNET_API_KEY",
            ) from None
        except httpx.TransportError as exc:
            raise PollError(
                Outcome.CONNECTION_ERROR, f"connection failed: {_describe(exc)}"
            ) from None
        if not response.is_success:
            raise _status_error(response)
        return response.content


def _describe(exc: httpx.HTTPError) -> str:
    # httpx messages carry the URL at most (the key travels in a header), never headers.
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
