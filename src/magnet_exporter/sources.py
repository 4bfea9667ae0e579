"""Where a poll's snapshot comes from: one request and its parsing, here or in a worker process.

A served exporter polls an organization in its own process while the organization's answers
are small, and in a worker process once one was large (`WORKER_THRESHOLD_BYTES`): decoding a
large body holds the interpreter lock for tens of milliseconds, and reading it over HTTP
competes for the lock in small slices, both of which would stall the threads that answer
scrapes. A small body costs a millisecond or two here, less than a second interpreter would
cost in memory. Workers are a small pool shared by every organization, started on demand and
stopped once unused for `WORKER_IDLE_SECONDS`; they run at a lower CPU priority, so that on a
busy machine scrapes come first. Only the snapshot, a few kilobytes, comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Protocol

from magnet_exporter.client import MagnetClient, Outcome, PollError, Secret, api_http_client
from magnet_exporter.model import IdleListing, Snapshot, SnapshotParser

log = logging.getLogger("magnet_exporter.sources")

WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**22)}
"""glibc's allocator, fixed to give every block of 1 MiB or more its own mapping, and to keep
up to 4 MiB free at the top of its heap.

By default the mapping threshold rises to the size of the largest block freed, so that after
the first poll each body lands on the heap, which keeps its high-water mark for good. Fixing
it fixes the trim threshold too, at 128 kB: the heap then shrank and grew back for each of
the blocks a gzip body is decoded in (about 500 kB each), which cost 100 ms of page faults in
a 100,000-session poll of 550 ms.
"""
WORKER_NICENESS = 10
"""How much lower than the exporter's the worker's CPU priority is (see `os.nice`)."""
REPLY_GRACE_SECONDS = 5.0
"""How long past a request's deadline a worker may take to answer before it is replaced."""
MAX_WORKERS = 4
"""Worker processes at most, however many organizations: polls at the same moment share them."""
WORKER_THRESHOLD_BYTES = 2 * 2**20
"""An answer at least this large sends the organization's next polls to a worker.

About 2,500 sessions. Below it, decoding in this process holds the interpreter lock for a few
milliseconds per poll (3 ms per MB here), about one scrape's time; above it, it grows past
what a scrape should wait (P4 of the benchmarks: 10,000 sessions, 8.4 MB)."""
WORKER_IDLE_SECONDS = 600.0
"""A worker unused this long is stopped: its memory (about 30 MB) goes back to the system."""


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A good answer: its HTTP status code, the snapshot parsed from its body, the body's size."""

    status_code: int
    snapshot: Snapshot
    body_bytes: int = 0
    """The decoded body's size."""
    received_bytes: int = 0
    """The body's size as it came over the network (compressed, if it was)."""


class SnapshotSource(Protocol):
    """Sends one request for the sessions and parses the answer."""

    def fetch(self, deadline: float) -> Fetched:
        """Return the parsed answer, or raise `PollError`; give up at `deadline` (monotonic)."""
        ...


class InProcessSource:
    """Requests and parses in the calling thread."""

    def __init__(
        self,
        client: MagnetClient,
        label_names: Sequence[str],
        clock: Callable[[], float] = time.time,
        idle_listing: IdleListing | None = None,
    ) -> None:
        self._client = client
        self._parser = SnapshotParser(label_names, idle_listing)
        self._clock = clock

    def fetch(self, deadline: float, discard: list[object] | None = None) -> Fetched:
        """Request, then parse as of the answer's end; a parse failure keeps the status code.

        With `discard`, the body and the decoded sessions go there, for the caller to free
        once the answer is on its way.
        """
        answer = self._client.fetch(deadline)
        if discard is not None:
            discard.append(answer.body)
        now = self._clock()  # a worker asks the exporter, which may be gone: not a parse error
        try:
            snapshot = self._parser.parse(answer.body, now, discard)
            return Fetched(answer.status_code, snapshot, len(answer.body), answer.received_bytes)
        except PollError as error:
            error.status_code = answer.status_code
            error.received_bytes = answer.received_bytes
            raise
        except Exception as exc:  # a body we did not foresee must not stop the exporter
            log.exception("unexpected error while parsing the response")
            reason = f"invalid response: {exc!r}"[:300]
            raise PollError(
                Outcome.INVALID_RESPONSE,
                reason,
                answer.status_code,
                received_bytes=answer.received_bytes,
            ) from None


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to build its own client and parser (no secret in here)."""

    api_url: str
    label_names: tuple[str, ...]
    timeout: float
    max_response_bytes: int
    idle_listing: IdleListing = dataclasses.field(default_factory=IdleListing)


@dataclasses.dataclass(frozen=True)
class _Request:
    organization_id: str | None
    key: str
    seconds_left: float


class _WhatTime:
    """A worker's question for the exporter's clock, once its request has ended."""


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A `PollError` on its way from a worker (exceptions do not travel well)."""

    outcome: Outcome
    reason: str
    status_code: int | None
    transient: bool
    retry_after: str | None
    sent: bool = True
    received_bytes: int = 0

    @classmethod
    def of(cls, error: PollError) -> _Failure:
        """Pack an error."""
        return cls(
            error.outcome,
            error.reason,
            error.status_code,
            error.transient,
            error.retry_after,
            error.sent,
            error.received_bytes,
        )

    @classmethod
    def unsent(cls, reason: str) -> _Failure:
        """Fail a poll the worker could not serve: nothing is known to have reached the API."""
        return cls(Outcome.INVALID_RESPONSE, reason, None, False, None, sent=False)

    def error(self) -> PollError:
        """Unpack the error."""
        return PollError(
            self.outcome,
            self.reason,
            self.status_code,
            transient=self.transient,
            retry_after=self.retry_after,
            sent=self.sent,
            received_bytes=self.received_bytes,
        )


class _Worker:
    """One worker process, started on first use, serving one request at a time.

    A worker that died while idle is replaced before the next request is sent. One that dies
    or stops answering while serving a request fails that poll only (`invalid_response`, with
    no request counted: whether it reached the API is not known) and is replaced by the next.
    """

    def __init__(
        self, config: WorkerConfig, reply_grace: float, idle_clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._reply_grace = reply_grace
        self._idle_clock = idle_clock
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._last_used = idle_clock()

    @property
    def pid(self) -> int | None:
        """The process id, while the worker runs."""
        return self._process.pid if self._process is not None else None

    def exchange(self, request: _Request, now: Callable[[], float]) -> Fetched | _Failure:
        """Send a request and wait for its reply, up to its deadline and the grace.

        Between the two the worker asks once what time it is (`now`, the exporter's clock) at
        the end of its request: the windows of the snapshot are as of then.
        """
        with self._lock:
            try:
                connection = self._running()
            except OSError as exc:  # the poller logs the failed poll with this reason: one line
                return _Failure.unsent(f"no poll worker could be started: {exc.strerror or exc}")
            wait_until = time.monotonic() + max(0.0, request.seconds_left) + self._reply_grace
            try:
                try:
                    connection.send(request)
                except OSError:  # died in the instant since the check: nothing was sent
                    self._stop()
                    return _Failure.unsent("the poll worker exited before the request was sent")
                while True:
                    if not connection.poll(max(0.0, wait_until - time.monotonic())):
                        raise TimeoutError
                    reply: Fetched | _Failure | _WhatTime = connection.recv()
                    if not isinstance(reply, _WhatTime):
                        break
                    connection.send(now())
            except (OSError, EOFError) as exc:
                self._stop()
                what = "did not answer in time" if isinstance(exc, TimeoutError) else "exited"
                reason = f"the poll worker {what}; a new one serves the next poll"
                return _Failure.unsent(reason)
            finally:
                self._last_used = self._idle_clock()  # idle from the end of its latest request
            return reply

    def start(self) -> None:
        """Start the process ahead of a request, unless it runs already or is serving one."""
        if not self._lock.acquire(blocking=False):
            return  # serving a request: it runs
        try:
            self._running()
            self._last_used = self._idle_clock()  # idle from now, not from long ago
        except OSError as exc:  # the next request tries again, and fails its poll if not
            log.warning("no poll worker could be started: %s", exc.strerror or exc)
        finally:
            self._lock.release()

    def _running(self) -> Connection:
        """Return the connection to a live process, started if need be; OSError if it cannot be."""
        self._replace_if_dead()
        if self._connection is not None:
            return self._connection
        try:
            return self._start()
        except OSError:
            self._stop()
            raise

    def _replace_if_dead(self) -> None:
        """Clear a process that exited since its last request (killed, out of memory)."""
        if self._process is None or self._process.poll() is None:
            return
        pid, code = self._process.pid, self._process.returncode
        self._stop()
        log.warning(
            "poll worker exited while idle; a new one serves this poll",
            extra={"pid": pid, "returncode": code},
        )

    def _start(self) -> Connection:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "magnet_exporter.sources", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env={**WORKER_MALLOC, **os.environ},  # the operator's own tuning wins
            )
            self._connection = Connection(os.dup(ours.fileno()))
        self._connection.send(self._config)
        log.debug("poll worker started", extra={"pid": self._process.pid})
        return self._connection

    def _stop(self) -> None:
        if self._connection is not None:
            self._connection.close()  # the worker reads the end of its input and exits
            self._connection = None
        if self._process is not None:
            try:
                self._process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._process.kill()  # stuck in a request: nothing of it is worth keeping
                self._process.wait()
            self._process = None

    def stop_if_idle(self, idle_seconds: float) -> None:
        """Stop the process if it served nothing for `idle_seconds`."""
        if not self._lock.acquire(blocking=False):
            return  # serving a request: not idle
        try:
            idle = self._idle_clock() - self._last_used
            if self._process is not None and idle >= idle_seconds:
                pid = self._process.pid
                self._stop()
                log.debug("idle poll worker stopped", extra={"pid": pid})
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the process; a request in progress fails."""
        process = self._process
        if process is not None:
            process.kill()  # ends a request in progress at once, which frees the lock
        with self._lock:
            self._stop()


class WorkerPool:
    """Worker processes shared by every organization's polls: at most `size`, made on demand.

    The most recently used idle worker takes the next request, so polls spread over the
    interval keep one process busy and the others are never started.
    """

    def __init__(
        self,
        config: WorkerConfig,
        size: int,
        *,
        reply_grace: float = REPLY_GRACE_SECONDS,
        idle_seconds: float = WORKER_IDLE_SECONDS,
        idle_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`idle_clock` measures idle time only; deadlines are always `time.monotonic()`."""
        self._idle_seconds = idle_seconds
        self._workers = [_Worker(config, reply_grace, idle_clock) for _ in range(size)]
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        for worker in reversed(self._workers):
            self._idle.put(worker)

    @property
    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [pid for worker in self._workers if (pid := worker.pid) is not None]

    def fetch(
        self, organization_id: str | None, key: str, deadline: float, now: Callable[[], float]
    ) -> Fetched:
        """Have an idle worker request and parse as of `now`; failures come as `PollError`."""
        self.stop_idle()  # also when no organization polls in process to do it
        try:
            worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            reason = "timed out: every poll worker was busy"
            raise PollError(Outcome.TIMEOUT, reason, sent=False) from None
        try:
            reply = worker.exchange(
                _Request(organization_id, key, deadline - time.monotonic()), now
            )
        finally:
            self._idle.put(worker)
        if isinstance(reply, _Failure):
            raise reply.error()
        return reply

    def start_next(self) -> None:
        """Start the worker that the next request will take, if it is not running.

        Its start-up (an interpreter and its imports, about 0.2 s) then happens between two
        polls instead of inside the next one.
        """
        with self._idle.mutex:
            worker = self._idle.queue[-1] if self._idle.queue else None
        if worker is not None:
            worker.start()

    def stop_idle(self) -> None:
        """Stop the workers that served nothing for the idle time."""
        for worker in self._workers:
            worker.stop_if_idle(self._idle_seconds)

    def close(self) -> None:
        """Stop every worker; polls in progress fail."""
        for worker in self._workers:
            worker.close()


class WorkerSource:
    """One organization's requests, made by a worker of a shared pool."""

    def __init__(
        self,
        pool: WorkerPool,
        organization_id: str | None,
        key: Callable[[], Secret],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._organization_id = organization_id
        self._key = key
        self._clock = clock

    def fetch(self, deadline: float) -> Fetched:
        """Request and parse in a worker process."""
        key = self._key().get_secret_value()
        return self._pool.fetch(self._organization_id, key, deadline, self._clock)


class AdaptiveSource:
    """One organization's polls: here while its answers are small, in a worker once one was large.

    The size of the last good answer decides where the next poll runs, so an organization
    that grows moves to a worker after one large poll here, and one that shrinks comes back.
    """

    def __init__(
        self,
        here: InProcessSource,
        there: WorkerSource,
        pool: WorkerPool,
        threshold: int = WORKER_THRESHOLD_BYTES,
    ) -> None:
        self._here = here
        self._there = there
        self._pool = pool
        self._threshold = threshold
        self._large = threshold == 0  # 0: every poll in a worker, the first one too

    @property
    def in_worker(self) -> bool:
        """True while this organization's polls run in a worker."""
        return self._large

    def fetch(self, deadline: float) -> Fetched:
        """Request and parse where the last answer's size says."""
        if self._large:
            fetched = self._there.fetch(deadline)
        else:
            self._pool.stop_idle()  # workers that nobody needs any more
            fetched = self._here.fetch(deadline)
        was_large, self._large = self._large, fetched.body_bytes >= self._threshold
        if self._large and not was_large:
            self._pool.start_next()  # ready for the next poll, which it will serve
        return fetched


class _CurrentKey:
    """The key of the request being served: each request brings the exporter's latest."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = ""

    def set(self, value: str) -> None:
        """Hold the key of the next request."""
        self._value = value

    def get_secret_value(self) -> str:
        """Return the key itself."""
        return self._value

    def __call__(self) -> _CurrentKey:
        return self

    def __repr__(self) -> str:
        return "_CurrentKey('**********')"  # never the key, as SecretStr


class _ExporterGoneError(Exception):
    """The exporter closed the connection while its request was being served."""


class _ExporterClock:
    """The exporter's clock, asked over the connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def __call__(self) -> float:
        try:
            self._connection.send(_WhatTime())
            now: float = self._connection.recv()
        except (EOFError, OSError):  # killed, or stopped waiting: nobody wants the answer
            raise _ExporterGoneError from None
        return now


def _serve(connection: Connection) -> None:
    """Answer requests until the exporter closes the connection."""
    config: WorkerConfig = connection.recv()
    key = _CurrentKey()
    clock = _ExporterClock(connection)
    sources: dict[str | None, InProcessSource] = {}
    with api_http_client(config.timeout) as http:
        while True:
            try:
                request: _Request = connection.recv()
            except (EOFError, OSError):  # the exporter is gone or done with us
                return
            key.set(request.key)
            source = sources.get(request.organization_id)
            if source is None:
                client = MagnetClient(
                    http,
                    config.api_url,
                    key,
                    request.organization_id,
                    max_response_bytes=config.max_response_bytes,
                )
                source = sources[request.organization_id] = InProcessSource(
                    client, config.label_names, clock, config.idle_listing
                )
            garbage: list[object] = []
            try:
                reply: Fetched | _Failure = source.fetch(
                    time.monotonic() + request.seconds_left, garbage
                )
            except PollError as error:
                reply = _Failure.of(error)
            except _ExporterGoneError:
                return
            try:
                connection.send(reply)
            except OSError:  # the exporter stopped waiting (it replaces a slow worker)
                return
            # Freed while the exporter takes the snapshot in, not before it has it.
            garbage.clear()


def main(argv: Sequence[str]) -> None:
    """Run a worker on the connection whose file descriptor is `argv[0]`."""
    # Ctrl-C reaches the whole process group: the exporter decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(WORKER_NICENESS)
    with Connection(int(argv[0])) as connection:
        _serve(connection)


if __name__ == "__main__":
    # Run with -m, this file is `__main__`: replies must name the classes of the real module.
    from magnet_exporter.sources import main as worker_main

    worker_main(sys.argv[1:])
