"""A simulated Magnet API: `GET /api/sessions` in the documented shape, with live, changing data.

Sessions are a pure function of (seed, organization, time): session `i` of an organization is
created at a fixed moment, works for a while, then completes or fails, and its pull request
goes draft -> open -> merged or closed. The newest sessions are listed, so with a fixed seed
and clock every answer is reproducible, and with the real clock the numbers move every few
seconds. The windows are sized so that every status and PR status is present at all times.

For tests of failure handling the server can also misbehave: a canned `Fault` for every
request or for the next few, or `FaultRates`, chances per request of each kind of failure,
drawn from (seed, request number) so that a run is reproducible.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import random
import socket
import ssl
import struct
import threading
import time
from bisect import bisect
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("magnet_exporter.demo")

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
LISTED_SESSIONS = 150
"""Sessions listed by default: about 125 of the past two weeks and the newest quick ones."""
DAY = 86_400.0
HISTORY_PERIOD = 3 * 3600.0
HISTORY_SECONDS = 14 * DAY
STUCK_PERIOD = 2 * 3600.0
STUCK_WORK = 7 * 3600.0
"""How long a stuck session stays active before it fails."""
STUCK_ACTIVITY = 300.0
"""How long a stuck session shows activity before it stops."""
DEFAULT_ORGANIZATION = "acme"
MODELS = ("claude-opus-4-6", "claude-sonnet-4-6", "gpt-5-codex", "gemini-3-pro")
REPOSITORIES = ("web-app", "api", "mobile", "infra", "docs")
PEOPLE = ("Alice Chen", "Bruno Diaz", "Chidi Okafor", "Dana Levi", "Eun-ji Park", "Farah Aziz")
TASKS = (
    "Add input validation to signup form",
    "Fix flaky checkout test",
    "Upgrade the ORM to the new major version",
    "Add rate limiting to the public API",
    "Write docs for the billing webhooks",
    "Remove the legacy feature flags",
    "Migrate the nightly export job from cron to the workflow scheduler",
    "Investigate memory growth in the image resizing worker after the last deploy",
)
PROMPTS = (
    "Please take care of this task.",
    "The form accepts empty emails and passwords shorter than eight characters.",
    "Add server-side checks as well, and return field-level errors the UI can show.",
    "Keep the public interface as it is; other teams depend on it.",
    "Run the whole test suite before you open the pull request.",
    "The logs from last night are attached in the ticket, start from the first stack trace.",
)
REPLIES = (
    "Done.",
    "I've opened a pull request with the changes.",
    "All 412 tests pass locally; two were flaky before and are now deterministic.",
    "I updated the migration and added a rollback step in case the deploy fails halfway.",
    "Could you confirm whether the old endpoint can be removed, or should it redirect?",
    "The root cause was a cache that was never evicted; the fix bounds it at 10,000 entries.",
)
REGULARS = 3
"""People of an organization who prompt every day; the others (one to three) now and then."""
PREVIEW_LENGTH = 200
"""Characters of a message preview; longer messages are cut and end with "..."."""


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 (not for security)


def _preview(rng: random.Random, sentences: tuple[str, ...]) -> str:
    """Make a message preview of one to five sentences, cut as the API cuts long ones."""
    text = " ".join(rng.choice(sentences) for _ in range(rng.randint(1, 5)))
    if len(text) <= PREVIEW_LENGTH:
        return text
    return text[: PREVIEW_LENGTH - 3].rstrip() + "..."


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


FIRST_NAMES = (
    "Ada", "Bo", "Carmen", "Dmitri", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas",
    "Kwame", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
)  # fmt: skip
LAST_NAMES = (
    "Abe", "Baptiste", "Costa", "Dubois", "Eriksen", "Fischer", "Gupta", "Horvat", "Ito",
    "Jansen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okoye", "Petrov", "Rossi", "Sato",
)  # fmt: skip
TITLE_WORDS = (
    "the", "flaky", "billing", "webhook", "retry", "cache", "migration", "signup", "search",
    "index", "timeout", "export", "dashboard", "permissions", "pagination", "locale", "queue",
    "worker", "schema", "deprecated", "endpoint", "config", "tests", "for", "and", "in",
)  # fmt: skip
TITLE_VERBS = ("Fix", "Add", "Remove", "Refactor", "Investigate", "Document", "Speed up", "Port")


@dataclasses.dataclass(frozen=True)
class Population:
    """Who works in an organization shaped like a real one, and how their sessions spread.

    Authors and repositories have Zipf-like shares (the k-th gets a share proportional to
    1 / k^skew): a few heavy users and busy repositories, a long tail of occasional ones.
    Sessions take from `shortest_work` to `longest_work` seconds (log-uniform), so hundreds
    are active at once in a large organization, and each session's title, branch and pull
    request (number and URL) is its own. The statuses and PR statuses follow `plans`.
    """

    authors: int = 500
    repositories: int = 50
    author_skew: float = 1.1
    repository_skew: float = 1.0
    shortest_work: float = 40.0
    longest_work: float = 6 * 3600.0
    plans: tuple[tuple[str, float], ...] = (
        ("merged", 0.45),
        ("closed", 0.12),
        ("open", 0.08),
        ("none", 0.35),
    )
    """Where a session's pull request ends, with its share; `none` is no pull request."""
    failed_share: float = 0.3
    """Of the sessions without a pull request, those that fail."""
    span: float = 30 * DAY
    """The time over which the listed sessions were created: more sessions, more often."""

    def __post_init__(self) -> None:
        """Check the sizes and shares."""
        if self.authors < 1 or self.repositories < 1:
            raise ValueError("a population needs at least one author and one repository")
        if not 0 < self.shortest_work <= self.longest_work or self.span <= 0:
            raise ValueError("work times and the span must be positive, the work times in order")

    @staticmethod
    def _cumulative(weights: Sequence[float]) -> tuple[float, ...]:
        total, cumulative = 0.0, []
        for weight in weights:
            total += weight
            cumulative.append(total)
        return tuple(share / total for share in cumulative)

    def author_shares(self) -> tuple[float, ...]:
        """Cumulative shares of the sessions by author rank (the last one is 1)."""
        return self._cumulative([1 / k**self.author_skew for k in range(1, self.authors + 1)])

    def repository_shares(self) -> tuple[float, ...]:
        """Cumulative shares of the sessions by repository rank (the last one is 1)."""
        skew = self.repository_skew
        return self._cumulative([1 / k**skew for k in range(1, self.repositories + 1)])


def _pick(rng: random.Random, cumulative: tuple[float, ...]) -> int:
    return min(bisect(cumulative, rng.random()), len(cumulative) - 1)


def _author(rank: int) -> tuple[str, str]:
    """Return the id and name of the population's author of this rank (0: the busiest)."""
    first = FIRST_NAMES[rank % len(FIRST_NAMES)]
    last = LAST_NAMES[(rank // len(FIRST_NAMES)) % len(LAST_NAMES)]
    return f"user_{rank + 1:04d}", f"{first} {last}"


def _title(rng: random.Random) -> str:
    """Make a task title of three to thirty words: titles vary in length as people's do."""
    words = rng.choices(TITLE_WORDS, k=round(math.exp(rng.uniform(math.log(3), math.log(30)))))
    return " ".join([rng.choice(TITLE_VERBS), *words])


@dataclasses.dataclass(frozen=True)
class _Organization:
    name: str
    period: float  # seconds between two new sessions
    plan_offset: int
    people: tuple[str, ...]
    models: tuple[str, ...]
    archived_merges: int  # merges in the past week by sessions no longer listed

    @classmethod
    def of(cls, seed: int, name: str) -> _Organization:
        rng = _rng(seed, name)
        return cls(
            name=name,
            period=rng.uniform(8.0, 12.0),
            plan_offset=rng.randrange(5),
            people=tuple(rng.sample(PEOPLE, rng.randint(4, len(PEOPLE)))),
            models=tuple(rng.sample(MODELS, 3)),
            archived_merges=rng.randint(10, 40),
        )


class SimulatedMagnet:
    """Computes the List Sessions answer for any organization at the clock's current time.

    Three kinds of sessions are listed: a quick one every ten seconds or so (the newest,
    which keep the numbers moving), one every few hours over the past two weeks that takes
    from a minute to more than a day (for the windows and the duration histogram), and one
    every two hours over the past day that gets stuck: no activity after its first minutes,
    until it fails seven hours later (for the idle histogram, the idle sessions listed by
    name and the stuck-session alert; those stuck at once have distinct repositories and
    authors).
    """

    def __init__(
        self,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        listed_sessions: int = LISTED_SESSIONS,
        population: Population | None = None,
    ) -> None:
        self.seed = seed
        self.listed_sessions = listed_sessions
        """How many sessions an answer lists: the older kinds, then the newest quick ones."""
        self.population = population
        """Who the newest sessions come from; None: the demo's own few people."""
        self._clock = clock
        self._author_shares = population.author_shares() if population else ()
        self._repository_shares = population.repository_shares() if population else ()

    def now(self) -> float:
        """Return the simulator's current time (Unix seconds)."""
        return self._clock()

    def sessions_response(self, organization: str) -> dict[str, Any]:
        """Answer `GET /api/sessions` for `organization` at the current time, as a JSON document."""
        org = _Organization.of(self.seed, organization)
        now = self._clock()
        older = [*self._history(org, now), *self._stuck(org, now)]
        older.sort(key=lambda session: session["createdAt"])
        older = older[max(0, len(older) - self.listed_sessions) :]
        quick = self.listed_sessions - len(older)
        if self.population is not None:  # the newest sessions fill the population's span
            org = dataclasses.replace(org, period=self.population.span / max(1, quick))
        newest = int((now - EPOCH) // org.period)
        recent = (
            [
                session
                for i in range(newest - quick, newest + 1)
                if (session := self._session(org, i, now)) is not None
            ][-quick:]
            if quick > 0
            else []
        )
        sessions = older + recent
        return {"sessions": sessions, "stats": self._stats(org, sessions, now)}

    def _history(self, org: _Organization, now: float) -> list[dict[str, Any]]:
        """Sessions of every length, one every few hours over the past two weeks."""
        newest = int((now - EPOCH) // HISTORY_PERIOD)
        first = int((now - HISTORY_SECONDS - EPOCH) // HISTORY_PERIOD)
        sessions = []
        for index in range(first, newest + 1):
            rng = _rng(self.seed, org.name, "history", index)
            created = EPOCH + index * HISTORY_PERIOD + rng.uniform(0, HISTORY_PERIOD / 2)
            if not 0 <= now - created <= HISTORY_SECONDS:
                continue
            # Log-uniform: as many sessions of a minute as of an hour or of a day.
            work = math.exp(rng.uniform(math.log(40), math.log(30 * 3600)))
            review = math.exp(rng.uniform(math.log(60), math.log(2 * 86_400)))
            # Most sessions are the regulars'; now and then someone who prompts less often.
            people = org.people[REGULARS:] if rng.random() < 0.2 else org.people[:REGULARS]
            sessions.append(
                self._document(org, rng, f"h{index}", index, created, now, work, review, people)
            )
        return sessions

    def _stuck(self, org: _Organization, now: float) -> list[dict[str, Any]]:
        """Sessions with no activity after their first minutes, one every two hours today."""
        newest = int((now - EPOCH) // STUCK_PERIOD)
        sessions = []
        for index in range(newest - int(DAY // STUCK_PERIOD) - 1, newest + 1):
            rng = _rng(self.seed, org.name, "stuck", index)
            created = EPOCH + index * STUCK_PERIOD + rng.uniform(0, STUCK_PERIOD / 6)
            if not 0 <= now - created <= DAY:
                continue
            session = self._document(
                org, rng, f"s{index}", 0, created, now, STUCK_WORK, 0.0, org.people[:REGULARS]
            )
            session["status"] = "active" if now - created < STUCK_WORK else "failed"
            last = created + min(now - created, STUCK_ACTIVITY) // 7 * 7
            session["updatedAt"] = _iso(last)
            session["messageCount"] = 1 + int((last - created) // 7)
            # By turns, so that the (up to four) stuck at once differ in repository and author.
            repository = REPOSITORIES[index % len(REPOSITORIES)]
            session["metadata"] = {"repository": f"{org.name}/{repository}"}
            person = org.people[index % len(org.people)]
            number = PEOPLE.index(person) + 1
            session["author"] = {
                "id": f"user_{number}",
                "name": person,
                "imageUrl": f"https://avatars.example.com/{number}.png",
            }
            sessions.append(session)
        return sessions

    def _session(self, org: _Organization, index: int, now: float) -> dict[str, Any] | None:
        rng = _rng(self.seed, org.name, index)
        created = EPOCH + index * org.period + rng.uniform(0, org.period / 2)
        if now < created:
            return None
        if self.population is not None:
            return self._member_session(org, rng, index, created, now, self.population)
        work = rng.uniform(80, 100)  # seconds the agent works
        review = rng.uniform(60, 150)  # seconds a PR stays open before it merges or closes
        people = org.people[:REGULARS]
        return self._document(org, rng, str(index), index, created, now, work, review, people)

    def _member_session(
        self,
        org: _Organization,
        rng: random.Random,
        index: int,
        created: float,
        now: float,
        population: Population,
    ) -> dict[str, Any]:
        """Make a session of a member of a realistic population."""
        work = math.exp(
            rng.uniform(math.log(population.shortest_work), math.log(population.longest_work))
        )
        review = math.exp(rng.uniform(math.log(60), math.log(2 * DAY)))
        plans, shares = zip(*population.plans, strict=True)
        plan = rng.choices(plans, shares)[0]
        failed = plan == "none" and rng.random() < population.failed_share
        author_id, name = _author(_pick(rng, self._author_shares))
        repository = f"{org.name}/repo-{_pick(rng, self._repository_shares) + 1:02d}"
        return self._document(
            org,
            rng,
            str(index),
            index,
            created,
            now,
            work,
            review,
            org.people,
            plan=(plan, failed),
            author=(author_id, name),
            repository=repository,
            title=_title(rng),
        )

    def _document(
        self,
        org: _Organization,
        rng: random.Random,
        name: str,
        index: int,
        created: float,
        now: float,
        work: float,
        review: float,
        people: tuple[str, ...],
        plan: tuple[str, bool] | None = None,
        author: tuple[str, str] | None = None,
        repository: str | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        """One session as the API lists it; `index` picks its plan, `name` makes its id.

        `plan` (where its PR ends, whether it fails), `author` (id, name), `repository` and
        `title` replace what the demo's own small organization would pick.
        """
        age = now - created
        if plan is None:
            outcome = ("none", "merged", "merged", "closed", "open")[(index + org.plan_offset) % 5]
            plan = (outcome, outcome == "none" and (index // 5) % 2 == 0)
        status = "active" if age < work else ("failed" if plan[1] else "completed")
        step = max(7.0, work / 40)  # seconds between two messages
        worked = min(age, work) // step * step
        if author is None:
            person = rng.choice(people)
            author = (f"user_{PEOPLE.index(person) + 1}", person)
        if repository is None:
            repository = f"{org.name}/{rng.choice(REPOSITORIES)}"
        session: dict[str, Any] = {
            "id": f"cm{hashlib.sha1(f'{self.seed}{org.name}{name}'.encode()).hexdigest()[:10]}",  # noqa: S324
            "title": rng.choice(TASKS) if title is None else title,
            "status": status,
            "createdAt": _iso(created),
            "updatedAt": _iso(created + worked),
            "model": rng.choice(org.models),
            "author": {
                "id": author[0],
                "name": author[1],
                "imageUrl": f"https://avatars.example.com/{author[0]}.png",
            },
            "metadata": {"repository": repository, "branch": f"agent/task-{name}"},
            "messageCount": 1 + int(worked // step),
            "firstMessagePreview": _preview(rng, PROMPTS),
            "lastMessagePreview": "Working on it..."
            if status == "active"
            else _preview(rng, REPLIES),
        }
        pr_status = self._pr_status(plan[0], age, work, review)
        if pr_status is not None:
            number = 100 + index
            session["metadata"].update(
                prNumber=number,
                prUrl=f"https://github.com/{repository}/pull/{number}",
                prStatus=pr_status,
            )
        elif index % 3 == 0:
            session["metadata"] = None  # the API omits metadata for some sessions
        return session

    @staticmethod
    def _pr_status(plan: str, age: float, work: float, review: float) -> str | None:
        if plan == "none" or age < work / 2:
            return None
        if age < work:
            return "draft"
        if plan == "open" or age < work + review:
            return "open"
        return plan

    @staticmethod
    def _stats(org: _Organization, sessions: list[dict[str, Any]], now: float) -> dict[str, int]:
        week_ago = _iso(now - 7 * DAY)
        authors = {s["author"]["id"] for s in sessions if s["updatedAt"] > week_ago}
        prompting = {s["author"]["id"] for s in sessions if s["status"] == "active"}
        merged = sum(1 for s in sessions if (s["metadata"] or {}).get("prStatus") == "merged")
        return {
            "mergesPastWeek": org.archived_merges + merged,
            "authorsPastWeek": len(authors),
            "humansPastWeek": len(authors) + 2,  # reviewers who prompt no agent themselves
            "humansPromptingNow": len(prompting),
        }


@dataclasses.dataclass(frozen=True)
class Fault:
    """A canned answer that replaces the simulated one (for tests of failure handling)."""

    status: int = 500
    body: bytes = b'{"error": "Internal Server Error"}'
    content_type: str = "application/json"
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


FAULT_KINDS = (
    "server_error",
    "rate_limited",
    "slow",
    "truncated",
    "not_json",
    "oversized",
    "reset",
)
"""The failures `FaultRates` can inject, in the order their chances are laid out."""
_WHOLE_NUMBERS = frozenset({"retry_after_seconds", "oversized_bytes"})


@dataclasses.dataclass(frozen=True)
class FaultRates:
    """Chances per request of each injected failure; the other requests are answered normally.

    `server_error` answers 500, 502 or 503 (a 503 with `Retry-After`); `rate_limited` answers
    429 with `Retry-After` in seconds or as an HTTP date; `slow` answers after `slow_seconds`;
    `truncated` sends half of the JSON (a complete HTTP answer); `not_json` an HTML page;
    `oversized` a JSON body of `oversized_bytes` without a length; `reset` half of the body,
    then a TCP reset.
    """

    server_error: float = 0.0
    rate_limited: float = 0.0
    slow: float = 0.0
    truncated: float = 0.0
    not_json: float = 0.0
    oversized: float = 0.0
    reset: float = 0.0
    retry_after_seconds: int = 1
    slow_seconds: float = 15.0
    """Longer than the exporter's default 10-second timeout."""
    oversized_bytes: int = 65 * 2**20
    """Past the exporter's default limit of 64 MiB."""

    def __post_init__(self) -> None:
        """Check that the chances are probabilities that add up to at most 1."""
        rates = [getattr(self, kind) for kind in FAULT_KINDS]
        if not all(0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError("fault rates must be between 0 and 1 and add up to at most 1")
        if self.retry_after_seconds < 0 or self.slow_seconds < 0 or self.oversized_bytes < 0:
            raise ValueError("retry_after_seconds, slow_seconds and oversized_bytes must be >= 0")

    @classmethod
    def parse(cls, spec: str) -> FaultRates:
        """Read `name=value,...`, e.g. `server_error=0.1,slow=0.05,slow_seconds=12`."""
        names = [field.name for field in dataclasses.fields(cls)]
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, text = (piece.strip() for piece in item.partition("="))
            if name not in names:
                raise ValueError(f"unknown fault setting {name!r}; choose from {', '.join(names)}")
            try:
                values[name] = (int if name in _WHOLE_NUMBERS else float)(text)
            except ValueError:
                raise ValueError(f"{name}: not a number: {text!r}") from None
        return cls(**values)

    def pick(self, draw: float) -> str | None:
        """Return the fault for a uniform `draw` in [0, 1), or None for a normal answer."""
        for kind in FAULT_KINDS:
            draw -= getattr(self, kind)
            if draw < 0:
                return kind
        return None


class Served(NamedTuple):
    """One request to `/api/sessions`: when it arrived (`time.monotonic()`) and how it was met."""

    arrived: float
    kind: str
    """A `FAULT_KINDS` value, `fault` (a canned `Fault`), `unauthorized` or `ok`."""


class DemoApiServer:
    """Serves a `SimulatedMagnet` over HTTP from a background thread."""

    def __init__(
        self,
        magnet: SimulatedMagnet,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultRates | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Listen on `host:port` (0: a free port); with `tls`, serve HTTPS."""
        self.magnet = magnet
        self.fault: Fault | None = None
        """Answer every request with this, while it is set."""
        self.faults = faults
        self.revoked_keys: set[str] = set()
        """Keys answered with 401, as Magnet answers a key revoked in its dashboard."""
        self.requests = 0
        self.served: collections.deque[Served] = collections.deque(maxlen=10_000)
        """The latest requests, oldest first (bounded: the demo API may run for months)."""
        self.last_headers: dict[str, str] = {}
        self.last_query: dict[str, list[str]] = {}
        self._next: collections.deque[Fault] = collections.deque()
        self._last_body: tuple[tuple[str, float], bytes] | None = None
        self._last_gzipped: tuple[bytes, bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http = _server_class(host)((host, port), _handler_for(self))
        self._http.daemon_threads = True
        self._scheme = "https" if tls is not None else "http"
        if tls is not None:
            # The handshake runs in the request's thread, on its first read: never in the loop.
            self._http.socket = tls.wrap_socket(
                self._http.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.1}, name="demo-api"
        )

    @property
    def url(self) -> str:
        """Base URL of the simulated API."""
        host, port = self._http.server_address[:2]
        host = str(host)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{self._scheme}://{where}"

    def push(self, *faults: Fault) -> None:
        """Answer the next requests with these faults, one each, before anything else."""
        with self._lock:
            self._next.extend(faults)

    def start(self) -> DemoApiServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end the delays of answers in progress, and close the socket."""
        self._stopping.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=1)

    def serve_forever(self) -> None:
        """Serve in the calling thread until `stop` is called from another one."""
        self._http.serve_forever(poll_interval=0.1)

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the server is stopping."""
        self._stopping.wait(seconds)

    def sessions_body(self, organization: str) -> bytes:
        """Return the encoded answer for `organization` now, built once per moment."""
        # With a stopped clock (benchmarks) a large answer is built once, not on every request.
        moment = (organization, self.magnet.now())
        with self._lock:
            if self._last_body is not None and self._last_body[0] == moment:
                return self._last_body[1]
        body = json.dumps(self.magnet.sessions_response(organization)).encode()
        with self._lock:
            self._last_body = (moment, body)
        return body

    def gzipped(self, body: bytes) -> bytes:
        """Return `body` gzipped, compressed once for as long as the body stays the same."""
        with self._lock:
            if self._last_gzipped is not None and self._last_gzipped[0] is body:
                return self._last_gzipped[1]
        packed = gzip.compress(body, compresslevel=6, mtime=0)
        with self._lock:
            self._last_gzipped = (body, packed)
        return packed

    def arrive(self, has_key: bool) -> tuple[str, Fault | random.Random | None]:
        """Count a request and choose its answer: a kind and its canned fault or random source."""
        with self._lock:
            self.requests += 1
            kind, detail = self._choose(self.requests, has_key)
            self.served.append(Served(time.monotonic(), kind))
        return kind, detail

    def _choose(self, number: int, has_key: bool) -> tuple[str, Fault | random.Random | None]:
        canned = self._next.popleft() if self._next else self.fault
        if canned is not None:
            return "fault", canned
        if not has_key:
            return "unauthorized", None
        if self.faults is None:
            return "ok", None
        rng = _rng(self.magnet.seed, "fault", number)
        return self.faults.pick(rng.random()) or "ok", rng


def _handler_for(api: DemoApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "magnet-demo-api"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path.rstrip("/") != "/api/sessions":
                self._send(404, {"error": "Not Found"})
                return
            api.last_headers = dict(self.headers.items())
            api.last_query = parse_qs(url.query)
            key = self.headers.get("x-api-key", "").strip()
            kind, detail = api.arrive(bool(key) and key not in api.revoked_keys)
            if isinstance(detail, Fault):
                self._send_fault(detail)
            elif kind == "unauthorized":
                self._send(401, {"error": "Unauthorized"})
            elif isinstance(detail, random.Random):
                self._answer(kind, detail)
            else:
                self._send_sessions(self._sessions_body())

        def _wants_gzip(self) -> bool:
            """Say whether `Accept-Encoding` lists gzip with a weight above 0."""
            for item in self.headers.get("accept-encoding", "").split(","):
                coding, _, weight = item.strip().partition(";")
                if coding.strip().lower() in ("gzip", "x-gzip", "*"):
                    quality = weight.strip().removeprefix("q=").strip()
                    try:
                        return not quality or float(quality) > 0
                    except ValueError:
                        return False
            return False

        def _send_sessions(self, body: bytes) -> None:
            """Send a List Sessions body, gzipped when the client asks for it, as Magnet does."""
            if self._wants_gzip():
                headers = (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"))
                self._send_fault(Fault(200, api.gzipped(body), headers=headers))
            else:
                self._send_fault(Fault(200, body, headers=(("Vary", "Accept-Encoding"),)))

        def _answer(self, kind: str, rng: random.Random) -> None:
            faults = api.faults or FaultRates()
            if kind == "server_error":
                self._send_fault(_server_error(rng, faults))
            elif kind == "rate_limited":
                self._send_fault(_rate_limited(rng, faults, api.magnet.now()))
            elif kind == "not_json":
                self._send_fault(Fault(200, b"<html><body>Maintenance</body></html>", "text/html"))
            elif kind == "oversized":
                self._send_oversized(faults.oversized_bytes)
            else:
                if kind == "slow":
                    api.sleep(faults.slow_seconds)
                body = self._sessions_body()
                if kind == "truncated":
                    self._send_fault(Fault(200, body[: len(body) // 2]))
                elif kind == "reset":
                    self._send_then_reset(body)
                else:
                    self._send_sessions(body)

        def _sessions_body(self) -> bytes:
            organization = api.last_query.get("organizationId", [DEFAULT_ORGANIZATION])[0]
            return api.sessions_body(organization)

        def _send(self, status: int, document: dict[str, Any]) -> None:
            self._send_fault(Fault(status, json.dumps(document).encode()))

        def _send_fault(self, fault: Fault) -> None:
            api.sleep(fault.delay)
            try:
                self.send_response(fault.status)
                self.send_header("Content-Type", fault.content_type)
                self.send_header("Content-Length", str(len(fault.body)))
                for name, value in fault.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(fault.body)
            except ConnectionError:
                pass  # the client gave up waiting (a timeout test); nothing to tell it

        def _send_oversized(self, size: int) -> None:
            # No Content-Length: the client learns the size only by reading, as from a proxy.
            prefix, suffix = b'{"sessions": [], "padding": "', b'"}'
            padding = max(0, size - len(prefix) - len(suffix))
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(prefix)
                for start in range(0, padding, 2**16):
                    self.wfile.write(b"x" * min(2**16, padding - start))
                self.wfile.write(suffix)
            except ConnectionError:
                pass  # the client abandoned the body, as it should

        def _send_then_reset(self, body: bytes) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
            except ConnectionError:
                return
            # Linger 0: close() sends a TCP reset instead of an orderly end.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format % args)

    return Handler


def _server_class(host: str) -> type[ThreadingHTTPServer]:
    """Return the server class for `host`: IPv6 for an IPv6 address, as the exporter does."""
    if ":" not in host:
        return ThreadingHTTPServer

    class IPv6Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    return IPv6Server


def _server_error(rng: random.Random, faults: FaultRates) -> Fault:
    status = rng.choice((500, 502, 503))
    if status != 503:
        return Fault(status)
    retry_after = (("Retry-After", str(faults.retry_after_seconds)),)
    return Fault(503, b'{"error": "Service Unavailable"}', headers=retry_after)


def _rate_limited(rng: random.Random, faults: FaultRates, now: float) -> Fault:
    seconds = faults.retry_after_seconds
    # Either form of RFC 9110; the date is rounded up, so the wait is never shorter.
    value = (
        str(seconds) if rng.random() < 0.5 else formatdate(math.ceil(now + seconds), usegmt=True)
    )
    return Fault(429, b'{"error": "Too Many Requests"}', headers=(("Retry-After", value),))
