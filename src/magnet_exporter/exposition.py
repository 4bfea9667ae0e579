"""The answers of `/metrics`: the data part rendered once per poll and format, the rest per scrape.

The data families (stats and sessions: most of the bytes) change only when a poll brings new
data or data turns stale, so they are rendered, and gzipped, once per version of the data and
content type. The live registry (process metrics, the poll counters, `magnet_up`) is rendered
on every scrape and appended. Format negotiation, `name[]` and the answers to other methods
are prometheus-client's own.
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

GZIP_LEVEL = 6
"""zlib's own default. The data part is compressed once per poll, but the live part on every
scrape, at the level of the stream it continues. On 100 kB of sessions with five labels, 9
took twice the time of 6 (1.9 ms against 0.8 for the data, 150 us against 90 per scrape) for
a body 6% smaller; 1 made it 50% bigger."""
MAX_CACHED_FORMATS = 8
"""Content types kept per data version: they come from a client's header, so bound them."""
GZIP_MEMBER = 31
"""`wbits` of zlib for one gzip member: header and trailer included."""
OPENMETRICS_EOF = b"# EOF\n"

Encoder = Callable[[Collector], bytes]


class VersionedCollector(Protocol):
    """A collector whose output changes only when its `version` does."""

    def collect(self) -> Iterable[Metric]:
        """Yield the families."""
        ...

    def version(self) -> object:
        """Return a value that stays equal as long as `collect` would yield the same."""
        ...


class Answer(NamedTuple):
    """An HTTP answer: status line, headers and body."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclasses.dataclass
class _Part:
    """The data part in one format, and once asked for, the start of a gzip member holding it."""

    text: bytes
    gzip: tuple[bytes, zlib._Compress] | None = None


class _NoData:
    """The data part of an exposition without one: always empty."""

    def version(self) -> object:
        return None

    def collect(self) -> Iterable[Metric]:
        return ()


class Exposition:
    """Answers requests to `/metrics`: the cached data part followed by the live registry."""

    def __init__(self, live: CollectorRegistry, data: VersionedCollector | None = None) -> None:
        self._live = live
        self._data: VersionedCollector = data if data is not None else _NoData()
        # Both parts, for what the cache does not serve: `name[]` filters and `text`.
        self._everything = CollectorRegistry(support_collectors_without_names=True)
        self._everything.register(self._data)
        self._everything.register(live)
        self._lock = threading.Lock()
        self._version: object = object()  # equal to no version: the first scrape renders
        self._parts: dict[str, _Part] = {}

    def answer(
        self,
        method: str,
        accept: str | None = None,
        accept_encoding: str | None = None,
        query: str = "",
    ) -> Answer:
        """Answer one request as prometheus-client's WSGI app would, from the cache if it can."""
        allow = [("Allow", "OPTIONS,GET")]
        if method == "OPTIONS":
            return Answer("200 OK", allow, b"")
        if method != "GET":
            status = "405 Method Not Allowed"
            body = f"# HTTP {status}: {method}; use OPTIONS or GET\n".encode()
            return Answer(status, allow, body)
        encoder, content_type = choose_encoder(accept or "")
        gzipped = gzip_accepted(accept_encoding or "")
        headers = [("Content-Type", content_type)]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        names = parse_qs(query).get("name[]")
        if names is not None:  # rare enough to render in full
            body = encoder(self._everything.restricted_registry(names))
            return Answer("200 OK", headers, gzip.compress(body, GZIP_LEVEL) if gzipped else body)
        return Answer("200 OK", headers, self._body(encoder, content_type, gzipped))

    def text(self) -> bytes:
        """Both parts in the Prometheus text format, rendered afresh."""
        return generate_latest(self._everything)

    def _body(self, encoder: Encoder, content_type: str, gzipped: bool) -> bytes:
        start, compressor = self._data_part(encoder, content_type, gzipped)
        live = encoder(self._live)
        if compressor is None:
            return start + live
        # One gzip member, not two concatenated: some clients (httpx) read only the first.
        rest = compressor.copy()
        return b"".join((start, rest.compress(live), rest.flush()))

    def _data_part(
        self, encoder: Encoder, content_type: str, gzipped: bool
    ) -> tuple[bytes, zlib._Compress | None]:
        """Return the data part as text, or gzipped and the compressor that did it."""
        # Held while rendering: after a poll, concurrent scrapes wait for one render, not N.
        with self._lock:
            version = self._data.version()
            if version != self._version:
                self._version, self._parts = version, {}
            part = self._parts.get(content_type)
            if part is None:
                part = _Part(self._render_data(encoder, content_type))
                # A poll during the render may have moved the version: then it is not kept.
                if len(self._parts) < MAX_CACHED_FORMATS and self._data.version() == version:
                    self._parts[content_type] = part
            if not gzipped:
                return part.text, None
            if part.gzip is None:
                compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_MEMBER)
                part.gzip = (compressor.compress(part.text), compressor)
            return part.gzip

    def _render_data(self, encoder: Encoder, content_type: str) -> bytes:
        text = encoder(self._data)
        if content_type.startswith("application/openmetrics-text"):
            return text.removesuffix(OPENMETRICS_EOF)  # the live part ends the body with it
        return text
