"""The answers of `/metrics`: the data part rendered once per poll and format, the rest per scrape.

The data families (stats and sessions: most of the bytes) change only when a poll brings new
data or data turns stale, so they are rendered, and gzipped, once per version of the data and
content type. The live registry (process metrics, the poll counters, `magnet_up`) is rendered
on every scrape and appended. Format negotiation, `name[]` and the answers to other methods
are prometheus-client's own; the data part is written here, byte for byte as
prometheus-client writes it, in the formats Prometheus asks for (`_plain_openmetrics`).
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
        families = _Collected(list(self._data.collect()))  # collected once, whoever writes
        plain = _PLAIN_ENCODERS.get(content_type)
        if plain is not None and all(family.type in _PLAIN_TYPES for family in families.families):
            text = plain(families.families)
        else:
            text = encoder(families)
        if content_type.startswith("application/openmetrics-text"):
            return text.removesuffix(OPENMETRICS_EOF)  # the live part ends the body with it
        return text


class _Collected:
    """Families collected already, as a collector for prometheus-client's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _escaped(value: str) -> str:
    """Escape a label value (in both formats) or an OpenMetrics help text."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample_lines(family: Metric, names: Sequence[str] | None = None) -> list[str]:
    lines = []
    for sample in family.samples:
        if names is not None and sample.name not in names:
            continue
        labels = ",".join(f'{k}="{_escaped(v)}"' for k, v in sorted(sample.labels.items()))
        braces = f"{{{labels}}}" if labels else ""
        value = floatToGoString(sample.value)  # type: ignore[no-untyped-call]
        lines.append(f"{sample.name}{braces} {value}\n")
    return lines


def _plain_openmetrics(families: Iterable[Metric]) -> bytes:
    """Write gauges and gauge histograms in OpenMetrics 1.0.0, byte for byte as prometheus-client.

    prometheus-client 0.26 checks and escapes every name of every line it writes, about 16 µs
    a line: 5 to 10 ms for the data part of a large organization, rendered after every poll
    under the interpreter lock, which the scrapes of that moment wait for. The data part's
    names are ours, fixed and plain (the tests hold this output to prometheus-client's): its
    lines are written directly, in about 6 µs each.
    """
    output = []
    for family in families:
        output.append(f"# HELP {family.name} {_escaped(family.documentation)}\n")
        output.append(f"# TYPE {family.name} {family.type}\n")
        output.extend(_sample_lines(family))
    output.append("# EOF\n")
    return "".join(output).encode()


def _plain_text(families: Iterable[Metric]) -> bytes:
    """Write the same families in the Prometheus text format, as prometheus-client does.

    A gauge histogram is written as a histogram, its `_gcount` and `_gsum` as gauges after it.
    """
    output = []
    for family in families:
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        if family.type == "gauge":
            output.append(f"# HELP {family.name} {help_text}\n# TYPE {family.name} gauge\n")
            output.extend(_sample_lines(family))
            continue
        output.append(f"# HELP {family.name} {help_text}\n# TYPE {family.name} histogram\n")
        output.extend(_sample_lines(family, (f"{family.name}_bucket",)))
        for suffix in ("_gcount", "_gsum"):
            name = family.name + suffix
            output.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            output.extend(_sample_lines(family, (name,)))
    return "".join(output).encode()


_PLAIN_TYPES = frozenset({"gauge", "gaugehistogram"})
"""The types of the data part: any other goes through prometheus-client's encoder."""
_PLAIN_ENCODERS: dict[str, Callable[[Iterable[Metric]], bytes]] = {
    # Plain names are written alike whatever the escaping asked for.
    "text/plain; version=0.0.4; charset=utf-8": _plain_text,
    "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8": _plain_text,
    "text/plain; version=1.0.0; charset=utf-8; escaping=underscores": _plain_text,
    "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8": (
        _plain_openmetrics
    ),
    "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores": (
        _plain_openmetrics
    ),
}
"""The data part's encoders by the content type that `choose_encoder` names."""
