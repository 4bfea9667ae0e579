"""A simulated Magnet API: `GET /api/sessions` in the documented shape, with live, changing data.

Sessions are a pure function of (seed, organization, time): session `i` of an organization is
created at a fixed moment, works for a while, then completes or fails, and its pull request
goes draft -> open -> merged or closed. The newest sessions are listed, so with a fixed seed
and clock every answer is reproducible, and with the real clock the numbers move every few
seconds. The windows are sized so that every status and PR status is present at all times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("magnet_exporter.demo")

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
LISTED_SESSIONS = 40
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
)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 (not for security)


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
    """Computes the List Sessions answer for any organization at the clock's current time."""

    def __init__(self, seed: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.seed = seed
        self._clock = clock

    def sessions_response(self, organization: str) -> dict[str, Any]:
        """Answer `GET /api/sessions` for `organization` at the current time, as a JSON document."""
        org = _Organization.of(self.seed, organization)
        now = self._clock()
        newest = int((now - EPOCH) // org.period)
        sessions = [
            session
            for i in range(newest - LISTED_SESSIONS, newest + 1)
            if (session := self._session(org, i, now)) is not None
        ][-LISTED_SESSIONS:]
        return {"sessions": sessions, "stats": self._stats(org, sessions)}

    def _session(self, org: _Organization, index: int, now: float) -> dict[str, Any] | None:
        rng = _rng(self.seed, org.name, index)
        created = EPOCH + index * org.period + rng.uniform(0, org.period / 2)
        age = now - created
        if age < 0:
            return None
        work = rng.uniform(80, 100)  # seconds the agent works
        review = rng.uniform(60, 150)  # seconds a PR stays open before it merges or closes
        plan = ("none", "merged", "merged", "closed", "open")[(index + org.plan_offset) % 5]
        failed = plan == "none" and (index // 5) % 2 == 0
        status = "active" if age < work else ("failed" if failed else "completed")
        person = rng.choice(org.people)
        repository = f"{org.name}/{rng.choice(REPOSITORIES)}"
        session: dict[str, Any] = {
            "id": f"cm{hashlib.sha1(f'{self.seed}{org.name}{index}'.encode()).hexdigest()[:10]}",  # noqa: S324
            "title": rng.choice(TASKS),
            "status": status,
            "createdAt": _iso(created),
            "updatedAt": _iso(created + min(age, work) // 7 * 7),
            "model": rng.choice(org.models),
            "author": {
                "id": f"user_{PEOPLE.index(person) + 1}",
                "name": person,
                "imageUrl": f"https://avatars.example.com/{PEOPLE.index(person) + 1}.png",
            },
            "metadata": {"repository": repository, "branch": f"agent/task-{index}"},
            "messageCount": 1 + int(min(age, work) // 7),
            "firstMessagePreview": "Please take care of this task...",
            "lastMessagePreview": "Working on it..." if status == "active" else "Done.",
        }
        pr_status = self._pr_status(plan, age, work, review)
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
    def _stats(org: _Organization, sessions: list[dict[str, Any]]) -> dict[str, int]:
        authors = {s["author"]["id"] for s in sessions}
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


class DemoApiServer:
    """Serves a `SimulatedMagnet` over HTTP from a background thread."""

    def __init__(self, magnet: SimulatedMagnet, host: str = "127.0.0.1", port: int = 0) -> None:
        self.magnet = magnet
        self.fault: Fault | None = None
        self.requests = 0
        self.last_headers: dict[str, str] = {}
        self.last_query: dict[str, list[str]] = {}
        self._http = ThreadingHTTPServer((host, port), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.1}, name="demo-api"
        )

    @property
    def url(self) -> str:
        """Base URL of the simulated API."""
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DemoApiServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=1)

    def serve_forever(self) -> None:
        """Serve in the calling thread until `stop` is called from another one."""
        self._http.serve_forever(poll_interval=0.1)


def _handler_for(api: DemoApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "magnet-demo-api"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path.rstrip("/") != "/api/sessions":
                self._send(404, {"error": "Not Found"})
                return
            api.requests += 1
            api.last_headers = dict(self.headers.items())
            api.last_query = parse_qs(url.query)
            if api.fault is not None:
                self._send_fault(api.fault)
            elif not self.headers.get("x-api-key", "").strip():
                self._send(401, {"error": "Unauthorized"})
            else:
                organization = api.last_query.get("organizationId", [DEFAULT_ORGANIZATION])[0]
                self._send(200, api.magnet.sessions_response(organization))

        def _send(self, status: int, document: dict[str, Any]) -> None:
            self._send_fault(Fault(status, json.dumps(document).encode()))

        def _send_fault(self, fault: Fault) -> None:
            time.sleep(fault.delay)
            try:
                self.send_response(fault.status)
                self.send_header("Content-Type", fault.content_type)
                self.send_header("Content-Length", str(len(fault.body)))
                for name, value in fault.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(fault.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a timeout test); nothing to tell it

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format % args)

    return Handler
