"""The /metrics answers: formats, gzip, the data part rendered once per version, the live part."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest
from conftest import FakeClock
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from magnet_exporter.client import Outcome
from magnet_exporter.collector import DataCollector, StatusCollector
from magnet_exporter.demo import Population, SimulatedMagnet
from magnet_exporter.exposition import MAX_CACHED_FORMATS, Answer, Exposition, VersionedCollector
from magnet_exporter.model import SessionGroup, Snapshot, SnapshotParser, checked_fields
from magnet_exporter.poller import PollMetrics, PollState

LABELS = ("status", "model")
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
PROMETHEUS_3 = (  # what Prometheus 3 sends by default
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
TEXT_FORMATS: list[str | None] = [None, "text/plain;version=1.0.0;escaping=allow-utf-8", "*/*"]
OPENMETRICS_FORMATS: list[str | None] = [OPENMETRICS, PROMETHEUS_3, "application/openmetrics-text"]
DATA_FAMILIES = {
    "magnet_merges_past_week",
    "magnet_humans_prompting",
    "magnet_sessions",
    "magnet_session_messages",
    "magnet_session_last_created_timestamp_seconds",
    "magnet_sessions_created_past_day",
    "magnet_sessions_created_past_week",
    "magnet_session_authors_past_day",
    "magnet_session_authors_past_week",
    "magnet_idle_sessions_unlisted",
}
LIVE_FAMILIES = {
    "magnet_up",
    "magnet_exporter_build_info",
    "magnet_exporter_last_success_timestamp_seconds",
    "magnet_exporter_polls",
    "magnet_exporter_requests",
    "magnet_exporter_invalid_values",
    "magnet_exporter_received_bytes",
    "magnet_exporter_response_size_bytes",
    "magnet_exporter_poll_duration_seconds",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
}


def snapshot(active: int = 2) -> Snapshot:
    return Snapshot(
        stats=MappingProxyType({"mergesPastWeek": 8.0, "humansPromptingNow": 1.0}),
        label_names=LABELS,
        sessions=MappingProxyType(
            {("active", "m1"): SessionGroup(active, 30), ("failed", "m2"): SessionGroup(0, 0)}
        ),
        last_created=1_700_000_000.0,
        last_updated=None,
    )


class FakeProc:
    """A /proc with one process, whose CPU time the test sets."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "self").mkdir()
        (root / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
        self.set_cpu_ticks(100)

    def set_cpu_ticks(self, ticks: int) -> None:
        fields = ["S", *["0"] * 21]  # after "pid (comm)": state, ppid, ...
        fields[11], fields[19], fields[20], fields[21] = str(ticks), "50", "4096000", "300"
        (self.root / "self" / "stat").write_text("1 (python) " + " ".join(fields) + "\n")


class Scene:
    """One organization's state behind an exposition, as the exporter wires it."""

    def __init__(self, proc: FakeProc) -> None:
        self.clock = FakeClock()
        self.state = PollState()
        self.live = CollectorRegistry()
        ProcessCollector(proc=str(proc.root), registry=self.live)
        self.metrics = PollMetrics(self.live)
        self.metrics.start("acme", checked_fields(("status", "model")))
        self.live.register(StatusCollector(self.states))
        self.data = DataCollector(self.states, LABELS, 180, self.clock)
        self.exposition = Exposition(self.live, self.data)

    def states(self) -> dict[str, PollState]:
        return {"acme": self.state}

    def poll(self, new: Snapshot) -> None:
        """Swap in a successful poll's state, as the poller does."""
        self.state = PollState(
            True, new, self.clock.now, self.clock.now, Outcome.SUCCESS, None, self.clock.now
        )
        self.metrics.polls.labels("acme", "success").inc()

    def get(self, accept: str | None = None, gzipped: bool = False, query: str = "") -> Answer:
        answer = self.exposition.answer("GET", accept, "gzip" if gzipped else None, query)
        assert answer.status == "200 OK"
        return answer

    def reference(self, accept: str | None) -> bytes:
        """Both parts rendered straight by prometheus-client, in the format `accept` asks for."""
        both = CollectorRegistry()
        both.register(self.data)
        both.register(self.live)
        if accept is not None and "openmetrics" in accept:
            return openmetrics.generate_latest(both)  # type: ignore[no-any-return,no-untyped-call]
        return generate_latest(both)


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    """An exposition with fresh data."""
    scene = Scene(FakeProc(tmp_path))
    scene.poll(snapshot())
    return scene


def parse(body: bytes, accept: str | None = None) -> dict[str, Metric]:
    """Families by name, read by prometheus-client's parser of the format `accept` asks for."""
    if accept is not None and "openmetrics" in accept:
        families: Iterable[Metric] = openmetrics_parser.text_string_to_metric_families(  # type: ignore[no-untyped-call]
            body.decode()
        )
    else:
        families = text_string_to_metric_families(body.decode())
    return {family.name: family for family in families}


def samples(families: dict[str, Metric]) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in families.values()
        for s in family.samples
    }


def gunzip_with_httpx(body: bytes) -> str:
    """The body as httpx decodes it (it reads only the first gzip member)."""

    def serve(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=body)

    with httpx.Client(transport=httpx.MockTransport(serve)) as client:
        return client.get("http://exporter/metrics").text


@pytest.mark.parametrize("accept", TEXT_FORMATS)
def test_text_format_has_every_family_and_sample(scene: Scene, accept: str | None) -> None:
    for _ in range(2):  # rendered, then from the cache
        answer = scene.get(accept)
        assert answer.headers[0][1].startswith("text/plain; version=")
        families = parse(answer.body)
        assert set(families) == DATA_FAMILIES | LIVE_FAMILIES
        assert samples(families) == samples(parse(scene.reference(accept)))


@pytest.mark.parametrize("accept", OPENMETRICS_FORMATS)
def test_openmetrics_has_every_family_and_one_eof_at_the_end(scene: Scene, accept: str) -> None:
    expected = DATA_FAMILIES | LIVE_FAMILIES - {"magnet_exporter_build_info"}
    for _ in range(2):
        answer = scene.get(accept)
        assert answer.headers[0][1].startswith("application/openmetrics-text; version=1.0.0")
        assert answer.body.endswith(b"\n# EOF\n")
        assert answer.body.count(b"# EOF") == 1
        families = parse(answer.body, accept)  # the parser refuses anything after `# EOF`
        assert set(families) == expected | {"magnet_exporter_build"}  # an info family
        assert samples(families) == samples(parse(scene.reference(accept), accept))


@pytest.mark.parametrize("accept", TEXT_FORMATS + OPENMETRICS_FORMATS)
def test_gzip_is_one_member_that_decodes_to_the_identity_body(
    scene: Scene, accept: str | None
) -> None:
    identity = scene.get(accept).body
    for _ in range(2):  # the compressed data part is reused by the second scrape
        answer = scene.get(accept, gzipped=True)
        assert ("Content-Encoding", "gzip") in answer.headers
        assert gzip.decompress(answer.body) == identity
        assert gunzip_with_httpx(answer.body) == identity.decode()
        member = zlib.decompressobj(31)
        member.decompress(answer.body)
        assert member.eof
        assert member.unused_data == b""


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "*/*",
        "text/plain",
        "text/plain;version=0.0.4",
        "text/plain;version=1.0.0",
        "text/plain;version=1.0.0;escaping=underscores",
        "text/plain;version=1.0.0;escaping=dots",
        "application/openmetrics-text",
        "application/openmetrics-text;version=0.0.1",
        "application/openmetrics-text;version=1.0.0;escaping=values",
        "application/openmetrics-text;version=2.0.0",
        PROMETHEUS_3,
    ],
)
@pytest.mark.parametrize("encoding", [None, "gzip", "deflate, gzip;q=0.5", "br"])
def test_headers_are_those_of_prometheus_client(
    scene: Scene, accept: str | None, encoding: str | None
) -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    if encoding is not None:
        environ["HTTP_ACCEPT_ENCODING"] = encoding
    expected = wsgi_answer(CollectorRegistry(), environ)
    ours = scene.exposition.answer("GET", accept, encoding)
    assert (ours.status, ours.headers) == (expected.status, expected.headers)


@pytest.mark.parametrize("method", ["OPTIONS", "POST", "HEAD", "DELETE"])
def test_other_methods_are_answered_as_prometheus_client_does(scene: Scene, method: str) -> None:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    expected = wsgi_answer(scene.live, environ)
    assert scene.exposition.answer(method) == expected


def wsgi_answer(registry: CollectorRegistry, environ: dict[str, str]) -> Answer:
    """What prometheus-client's own WSGI app answers."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(
        make_wsgi_app(registry)(environ, lambda status, headers: started.append((status, headers)))
    )
    ((status, headers),) = started
    return Answer(status, headers, body)


def test_stale_data_disappears_without_a_new_poll(scene: Scene) -> None:
    assert "magnet_sessions" in parse(scene.get().body)
    scene.clock.advance(180)
    assert "magnet_sessions" in parse(scene.get().body)
    scene.clock.advance(1)
    families = parse(scene.get().body)
    assert not DATA_FAMILIES & set(families)
    assert set(families) == LIVE_FAMILIES
    assert families["magnet_exporter_last_success_timestamp_seconds"].samples


def test_a_new_poll_changes_the_data(scene: Scene) -> None:
    def active(answer: Answer) -> float:
        families = parse(gzip.decompress(answer.body), OPENMETRICS)
        (value,) = (
            s.value for s in families["magnet_sessions"].samples if s.labels["status"] == "active"
        )
        return value

    assert active(scene.get(OPENMETRICS, gzipped=True)) == 2
    scene.poll(snapshot(active=5))
    assert active(scene.get(OPENMETRICS, gzipped=True)) == 5


def test_the_live_part_changes_on_every_scrape(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    scene = Scene(proc)
    scene.poll(snapshot())

    def cpu(answer: Answer) -> float:
        families = parse(gzip.decompress(answer.body))
        return families["process_cpu_seconds"].samples[0].value

    ticks = os.sysconf("SC_CLK_TCK")
    assert cpu(scene.get(gzipped=True)) == 100 / ticks
    proc.set_cpu_ticks(250)
    assert cpu(scene.get(gzipped=True)) == 250 / ticks
    scene.metrics.requests.labels("acme", "200").inc(7)
    families = parse(scene.get().body)
    assert [s.value for s in families["magnet_exporter_requests"].samples] == [7]


class CountingData:
    """A data part that counts its renders; its version moves only when the test says so."""

    def __init__(self) -> None:
        self.collects = 0
        self.current = 0
        self.value = 1.0
        self.seconds = 0.0

    def version(self) -> object:
        return self.current

    def collect(self) -> Iterator[Metric]:
        self.collects += 1
        time.sleep(self.seconds)
        yield GaugeMetricFamily("fake_data", "Data.", value=self.value)


def data_value(answer: Answer) -> float:
    body = gzip.decompress(answer.body) if ("Content-Encoding", "gzip") in answer.headers else None
    return parse(body or answer.body)["fake_data"].samples[0].value


def test_the_data_part_is_rendered_once_per_version_and_format() -> None:
    data = CountingData()
    exposition = Exposition(CollectorRegistry(), data)
    for encoding in (None, "gzip", None, "gzip"):
        assert data_value(exposition.answer("GET", None, encoding)) == 1
    assert data.collects == 1
    data.value = 2  # unchanged version: the data part is not rendered again
    assert data_value(exposition.answer("GET", None, "gzip")) == 1
    assert data.collects == 1
    exposition.answer("GET", OPENMETRICS)
    assert data.collects == 2  # another format
    data.current += 1
    assert data_value(exposition.answer("GET", None, "gzip")) == 2
    assert data.collects == 3


def test_concurrent_scrapes_share_one_render() -> None:
    data = CountingData()
    data.seconds = 0.05  # a slow render, so that the others arrive during it
    exposition = Exposition(CollectorRegistry(), data)
    bodies: list[bytes] = []
    together = threading.Barrier(8)

    def scrape() -> None:
        together.wait()
        for _ in range(20):
            bodies.append(exposition.answer("GET", PROMETHEUS_3, "gzip").body)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert data.collects == 1
    assert {gzip.decompress(body) for body in bodies} == {
        b"# HELP fake_data Data.\n# TYPE fake_data gauge\nfake_data 1.0\n# EOF\n"
    }


def test_a_render_during_which_the_version_moved_is_not_kept() -> None:
    data = CountingData()
    exposition = Exposition(CollectorRegistry(), data)
    render = data.collect

    def polled_during_the_render() -> Iterator[Metric]:
        data.current, data.value = 1, 2  # a poll lands while the data part is rendered
        return render()

    data.collect = polled_during_the_render  # type: ignore[method-assign]
    assert data_value(exposition.answer("GET")) == 2
    data.collect = render  # type: ignore[method-assign]
    data.current, data.value = 0, 3  # back at the version seen before that render
    assert data_value(exposition.answer("GET")) == 3


def test_the_cache_holds_a_bounded_number_of_formats() -> None:
    data = CountingData()
    exposition = Exposition(CollectorRegistry(), data)
    formats = [f"application/openmetrics-text;version=1.0.{n}" for n in range(20)]
    for accept in formats:
        exposition.answer("GET", accept)
    assert data.collects == len(formats)
    exposition.answer("GET", formats[0])
    assert data.collects == len(formats)  # the first ones are kept
    exposition.answer("GET", formats[MAX_CACHED_FORMATS])
    assert data.collects == len(formats) + 1  # past the bound, rendered on each scrape


def test_name_filter_selects_families_of_both_parts(scene: Scene) -> None:
    query = "name[]=magnet_sessions&name[]=process_cpu_seconds_total&name[]=magnet_up"
    for accept in (None, OPENMETRICS):
        answer = scene.get(accept, query=query)
        families = parse(answer.body, accept)
        assert set(families) == {"magnet_sessions", "process_cpu_seconds", "magnet_up"}
        assert answer.body.count(b"# EOF") == (1 if accept else 0)
        gzipped = scene.get(accept, gzipped=True, query=query)
        assert gzip.decompress(gzipped.body) == answer.body


def test_text_renders_both_parts(scene: Scene) -> None:
    assert samples(parse(scene.exposition.text())) == samples(parse(scene.reference(None)))


def test_without_data_only_the_live_registry_is_served() -> None:
    live = CollectorRegistry()
    Gauge("live_value", "Live.", registry=live).set(3)
    exposition = Exposition(live)
    expected = openmetrics.generate_latest(live)  # type: ignore[no-untyped-call]
    assert exposition.answer("GET", OPENMETRICS).body == expected
    assert gzip.decompress(exposition.answer("GET", None, "gzip").body) == generate_latest(live)


class FixedData:
    """A data part of both types it holds, with label values and help that need escaping."""

    def version(self) -> object:
        return 0

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "magnet_fake", 'Help with a \\ backslash,\na newline and "quotes".', labels=["b", "a"]
        )
        for value in ("plain", "back\\slash", "new\nline", 'a "quote"', "ünïcödé", ""):
            gauge.add_metric([value, "x"], 1.5)
        for value in (1.0e21, 1.0e-7, 0, -2.5, 1234567.0, float("nan"), float("inf")):
            gauge.add_metric([str(value), "x"], value)
        yield gauge
        histogram = GaugeHistogramMetricFamily("magnet_fake_seconds", "Seconds.", labels=["m"])
        histogram.add_metric(["m1"], [("60.0", 2.0), ("+Inf", 3.0)], gsum_value=130.5)
        histogram.add_metric(["m2"], [("60.0", 0.0), ("+Inf", 0.0)], gsum_value=0.0)
        yield histogram


def realistic_data() -> DataCollector:
    """The data part of an organization of 2,000 sessions by hundreds of authors."""
    labels = ("status", "pr_status", "model", "repository")
    magnet = SimulatedMagnet(
        seed=3, clock=lambda: 1_795_000_000.0, listed_sessions=2_000, population=Population()
    )
    body = json.dumps(magnet.sessions_response("acme")).encode()
    found = SnapshotParser(labels).parse(body, 1_795_000_000.0)
    state = PollState(True, found, 0.0, 0.0, Outcome.SUCCESS, None, 0.0)
    return DataCollector(lambda: {"acme": state, "beta": state}, labels, 180, lambda: 0.0)


# Every content type the data part has an encoder of its own for, as Prometheus and curl ask.
PLAIN_FORMATS = [
    None,
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
    OPENMETRICS,
    PROMETHEUS_3,
]


@pytest.mark.parametrize("accept", PLAIN_FORMATS)
@pytest.mark.parametrize("make", [FixedData, realistic_data], ids=["escaping", "realistic"])
def test_the_data_part_is_written_byte_for_byte_as_prometheus_client_writes_it(
    accept: str | None, make: Callable[[], VersionedCollector]
) -> None:
    data = make()
    encoder, _ = choose_encoder(accept or "")
    answer = Exposition(CollectorRegistry(), data).answer("GET", accept)
    assert answer.body == encoder(data)
