"""Snapshot sources: in this process, and in a worker process that must behave the same."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    SECRET_KEY,
    FakeClock,
    background_process,
    exporter_env,
    free_port,
    wait_until,
)
from pydantic import SecretStr

from magnet_exporter import __version__, sources
from magnet_exporter.client import MagnetClient, Outcome, PollError
from magnet_exporter.demo import DEFAULT_ORGANIZATION, LISTED_SESSIONS, DemoApiServer, Fault
from magnet_exporter.keys import StaticKey
from magnet_exporter.sources import (
    WORKER_NICENESS,
    AdaptiveSource,
    Fetched,
    InProcessSource,
    WorkerConfig,
    WorkerPool,
    WorkerSource,
)

LABELS = ("status", "pr_status", "model")
USER_AGENT = f"magnet-exporter/{__version__}"


class RotatingKey:
    """A key the test can change between polls, as a rotated key file would."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __call__(self) -> SecretStr:
        return SecretStr(self.value)


def config(url: str, max_bytes: int = 2**20) -> WorkerConfig:
    return WorkerConfig(
        api_url=url,
        label_names=LABELS,
        timeout=5.0,
        max_response_bytes=max_bytes,
    )


@pytest.fixture
def key() -> RotatingKey:
    return RotatingKey(SECRET_KEY)


@pytest.fixture
def pool(simulator: DemoApiServer) -> Iterator[WorkerPool]:
    workers = WorkerPool(config(simulator.url), 2, reply_grace=0.5)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def worker(pool: WorkerPool, key: RotatingKey, sim_clock: FakeClock) -> WorkerSource:
    return WorkerSource(pool, None, key, sim_clock)


def the_pid(pool: WorkerPool) -> int:
    (pid,) = pool.pids
    return pid


def soon() -> float:
    return time.monotonic() + 5.0


def failure(source: WorkerSource | InProcessSource) -> PollError:
    with pytest.raises(PollError) as caught:
        source.fetch(soon())
    return caught.value


def test_worker_gives_the_same_snapshot_as_this_process(
    worker: WorkerSource, simulator: DemoApiServer, sim_clock: FakeClock
) -> None:
    with httpx.Client() as http:
        client = MagnetClient(http, simulator.url, StaticKey(SecretStr(SECRET_KEY)))
        here = InProcessSource(client, LABELS, sim_clock).fetch(soon())
    there = worker.fetch(soon())
    assert isinstance(there, Fetched)
    # The simulator's clock stands still, and the worker parses as of the exporter's clock
    # (this test's): the same answer twice, windows and idle times included.
    assert there == here
    assert sum(group.count for group in there.snapshot.sessions.values()) == LISTED_SESSIONS
    assert sum(g.created_past_day for g in there.snapshot.sessions.values()) > 0
    assert there.snapshot.idle
    assert simulator.last_headers["User-Agent"] == USER_AGENT


def test_worker_sends_the_key_of_the_moment(
    worker: WorkerSource, simulator: DemoApiServer, key: RotatingKey
) -> None:
    worker.fetch(soon())
    assert simulator.last_headers["x-api-key"] == SECRET_KEY
    key.value = "rotated-key"
    worker.fetch(soon())
    assert simulator.last_headers["x-api-key"] == "rotated-key"


def test_failures_come_back_whole(worker: WorkerSource, simulator: DemoApiServer) -> None:
    simulator.push(Fault(429, headers=(("Retry-After", "30"),)), Fault(401))
    limited = failure(worker)
    assert limited.outcome is Outcome.RATE_LIMITED
    assert (limited.status_code, limited.retry_after, limited.transient) == (429, "30", True)
    unauthorized = failure(worker)
    assert unauthorized.outcome is Outcome.UNAUTHORIZED
    assert unauthorized.reason == "401 Unauthorized: check MAGNET_API_KEY"
    assert not unauthorized.transient


def test_an_unparsable_answer_keeps_its_status_code(
    worker: WorkerSource, simulator: DemoApiServer
) -> None:
    simulator.push(Fault(200, b"<html>maintenance</html>", "text/html"))
    error = failure(worker)
    assert error.outcome is Outcome.INVALID_RESPONSE
    assert error.code == "200"  # counted in requests_total as the 200 it was


def test_a_worker_killed_between_polls_is_replaced_before_the_next_one(
    worker: WorkerSource, pool: WorkerPool, simulator: DemoApiServer
) -> None:
    worker.fetch(soon())
    first = the_pid(pool)
    os.kill(first, signal.SIGKILL)  # as the OOM killer would, while it waits for work
    assert gone(first, within=5.0)
    assert worker.fetch(soon()).status_code == 200  # this poll is served, by a new worker
    assert the_pid(pool) != first
    assert simulator.requests == 2


def test_a_worker_that_dies_while_serving_fails_that_poll_only(
    worker: WorkerSource, pool: WorkerPool, simulator: DemoApiServer
) -> None:
    worker.fetch(soon())
    first = the_pid(pool)
    simulator.push(Fault(200, b'{"sessions": []}', delay=30.0))
    errors: list[PollError] = []
    serving = threading.Thread(target=lambda: errors.append(failure(worker)))
    serving.start()
    wait_until(lambda: simulator.requests == 2, "the worker's request reached the API")
    os.kill(first, signal.SIGKILL)
    serving.join(timeout=30)
    (error,) = errors
    assert error.outcome is Outcome.INVALID_RESPONSE
    assert "exited" in error.reason
    assert not error.sent  # its result is unknown: not counted as a request of any code
    assert worker.fetch(soon()).status_code == 200
    assert the_pid(pool) != first


def test_a_worker_that_cannot_start_fails_the_poll_and_the_next_one_starts(
    worker: WorkerSource,
    pool: WorkerPool,
    simulator: DemoApiServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(sources.sys, "executable", str(tmp_path / "no-such-python"))
    error = failure(worker)
    assert error.outcome is Outcome.INVALID_RESPONSE
    assert error.reason == "no poll worker could be started: No such file or directory"
    assert not error.sent
    assert simulator.requests == 0
    assert pool.pids == []
    monkeypatch.undo()
    assert worker.fetch(soon()).status_code == 200


def test_the_bytes_received_come_back_from_the_worker(
    worker: WorkerSource, simulator: DemoApiServer
) -> None:
    fetched = worker.fetch(soon())
    body = simulator.sessions_body(DEFAULT_ORGANIZATION)
    assert fetched.body_bytes == len(body)
    assert fetched.received_bytes == len(simulator.gzipped(body))
    simulator.push(Fault(200, b"<html>maintenance</html>", "text/html"))
    assert failure(worker).received_bytes == len(b"<html>maintenance</html>")


def test_a_stuck_worker_is_replaced_after_the_deadline(
    worker: WorkerSource, pool: WorkerPool
) -> None:
    worker.fetch(soon())
    stuck = the_pid(pool)
    os.kill(stuck, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(PollError) as caught:
        worker.fetch(time.monotonic() + 0.5)
    assert "did not answer in time" in caught.value.reason
    assert time.monotonic() - started < 3.0  # the deadline, the grace, then a kill
    assert not Path(f"/proc/{stuck}").exists()
    assert worker.fetch(soon()).status_code == 200


def test_worker_runs_at_a_lower_priority_and_without_the_key_in_its_command_line(
    worker: WorkerSource, pool: WorkerPool
) -> None:
    worker.fetch(soon())
    pid = the_pid(pool)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[16]) == os.nice(0) + WORKER_NICENESS  # field 19 of proc(5): nice
    command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert SECRET_KEY.encode() not in command_line


def test_organizations_share_workers_and_each_gets_its_own_answer(
    pool: WorkerPool, simulator: DemoApiServer
) -> None:
    acme = WorkerSource(pool, "acme", RotatingKey("acme-key"))
    globex = WorkerSource(pool, "globex", RotatingKey("globex-key"))
    for source, organization in ((acme, "acme"), (globex, "globex"), (acme, "acme")):
        source.fetch(soon())
        assert simulator.last_query["organizationId"] == [organization]
        assert simulator.last_headers["x-api-key"] == f"{organization}-key"
    assert acme.fetch(soon()) != globex.fetch(soon())  # the simulator's orgs differ
    assert len(pool.pids) == 1  # one poll at a time needs one worker


def test_polls_at_the_same_moment_use_more_workers_up_to_the_size(
    pool: WorkerPool, simulator: DemoApiServer
) -> None:
    simulator.fault = Fault(200, b'{"sessions": []}', delay=0.5)
    sources = [WorkerSource(pool, f"org-{n}", RotatingKey("k")) for n in range(3)]
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(s.fetch(soon()).status_code))
        for s in sources
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200, 200, 200]  # the third waited for a worker to come free
    assert len(pool.pids) == 2


def test_a_poll_waiting_past_its_deadline_for_a_worker_times_out(
    simulator: DemoApiServer,
) -> None:
    one = WorkerPool(config(simulator.url), 1)
    try:
        simulator.fault = Fault(200, b'{"sessions": []}', delay=1.0)
        busy = threading.Thread(
            target=WorkerSource(one, None, RotatingKey("k")).fetch, args=(soon(),)
        )
        busy.start()
        time.sleep(0.2)
        with pytest.raises(PollError) as caught:
            WorkerSource(one, None, RotatingKey("k")).fetch(time.monotonic() + 0.2)
        assert caught.value.outcome is Outcome.TIMEOUT
        busy.join()
    finally:
        one.close()


def test_close_stops_every_worker(worker: WorkerSource, pool: WorkerPool) -> None:
    worker.fetch(soon())
    pid = the_pid(pool)
    pool.close()
    assert pool.pids == []
    assert not Path(f"/proc/{pid}").exists()  # reaped, not left a zombie


def children(pid: int) -> list[int]:
    """The child processes of `pid`, whichever of its threads started them."""
    tasks = Path(f"/proc/{pid}/task").glob("*/children")
    return [int(child) for task in tasks for child in task.read_text().split()]


def gone(pid: int, within: float) -> bool:
    """True once `pid` has exited (a zombie counts: only its parent could reap it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_workers_do_not_outlive_a_killed_exporter(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "magnet_exporter", "--demo", f"--listen-address={address}"]
    command.append("--worker-threshold-bytes=0")  # the demo's answers are small: a worker always
    log = tmp_path / "exporter.log"
    with background_process(command, log, f"http://{address}/-/ready", exporter_env()) as run:
        deadline = time.monotonic() + 10.0
        while not children(run.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (worker_pid,) = children(run.pid)
        run.kill()  # as the OOM killer would: no chance to stop the worker
        run.wait()
        assert gone(worker_pid, within=5.0)
    assert "Traceback" not in log.read_text()


def test_a_worker_whose_exporter_dies_during_a_poll_exits_without_a_word(
    simulator: DemoApiServer, tmp_path: Path
) -> None:
    body = simulator.sessions_body(DEFAULT_ORGANIZATION)
    simulator.fault = Fault(200, body, delay=1.0)  # the worker waits for the answer
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "magnet_exporter", f"--api-url={simulator.url}"]
    command += [f"--listen-address={address}", "--worker-threshold-bytes=0"]
    log = tmp_path / "exporter.log"
    env = exporter_env(MAGNET_API_KEY=SECRET_KEY)
    with background_process(command, log, f"http://{address}/-/healthy", env) as run:
        wait_until(lambda: simulator.requests >= 1, "the worker has sent its request")
        (worker_pid,) = children(run.pid)
        run.kill()  # while the worker waits for the answer
        run.wait()
        assert gone(worker_pid, within=10.0)  # the answer came, and nobody to give it to
    assert "Traceback" not in log.read_text()
    assert "unexpected error" not in log.read_text()


# --- where a poll runs: here while answers are small, in a worker once one was large ----------


def adaptive(
    simulator: DemoApiServer, pool: WorkerPool, sim_clock: FakeClock, threshold: int
) -> tuple[AdaptiveSource, httpx.Client]:
    http = httpx.Client()
    client = MagnetClient(http, simulator.url, StaticKey(SecretStr(SECRET_KEY)))
    here = InProcessSource(client, LABELS, sim_clock)
    there = WorkerSource(pool, None, RotatingKey(SECRET_KEY), sim_clock)
    return AdaptiveSource(here, there, pool, threshold), http


def test_small_answers_are_parsed_here_and_start_no_worker(
    simulator: DemoApiServer, pool: WorkerPool, sim_clock: FakeClock
) -> None:
    source, http = adaptive(simulator, pool, sim_clock, threshold=10 * 2**20)
    with http:
        for _ in range(3):
            fetched = source.fetch(soon())
            assert 0 < fetched.body_bytes < 10 * 2**20
            assert not source.in_worker
    assert pool.pids == []


def test_a_large_answer_sends_the_next_polls_to_a_worker_and_a_small_one_back(
    simulator: DemoApiServer, pool: WorkerPool, sim_clock: FakeClock
) -> None:
    body = len(simulator.sessions_body(DEFAULT_ORGANIZATION))
    source, http = adaptive(simulator, pool, sim_clock, threshold=body)
    with http:
        here = source.fetch(soon())  # the first poll: here, and the answer is "large"
        # The worker of the next poll is started now, so that its start-up is in no poll.
        (started,) = pool.pids
        assert source.in_worker
        there = source.fetch(soon())
        assert pool.pids == [started]
        assert there == here  # the same answer, parsed as of the same clock
        simulator.fault = Fault(200, b'{"sessions": []}')  # the organization shrinks
        source.fetch(soon())  # still in the worker: the last answer was large
        assert not source.in_worker
        source.fetch(soon())
    assert len(pool.pids) == 1  # kept until it has been idle long enough


def test_an_idle_worker_is_stopped_and_started_again_when_needed(
    simulator: DemoApiServer, sim_clock: FakeClock
) -> None:
    pool = WorkerPool(config(simulator.url), 1, idle_seconds=0.2)
    try:
        large, http = adaptive(simulator, pool, sim_clock, threshold=0)
        small, other_http = adaptive(simulator, pool, sim_clock, threshold=2**40)
        with http, other_http:
            large.fetch(soon())
            (first,) = pool.pids
            small.fetch(soon())
            assert pool.pids == [first]  # not idle long enough yet
            time.sleep(0.3)
            small.fetch(soon())  # a poll here stops the worker that nobody used since
            assert pool.pids == []
            assert gone(first, within=5.0)
            large.fetch(soon())  # and the next large poll starts one again
            assert len(pool.pids) == 1
    finally:
        pool.close()


def test_idle_workers_stop_when_every_poll_runs_in_a_worker(simulator: DemoApiServer) -> None:
    """No organization polls in process, so only the workers' own polls can stop the idle one."""
    idle_clock = FakeClock(0.0)
    pool = WorkerPool(config(simulator.url), 2, idle_seconds=600, idle_clock=idle_clock)
    try:
        simulator.fault = Fault(200, b'{"sessions": []}', delay=0.5)
        sources_ = [WorkerSource(pool, f"org-{n}", RotatingKey("k")) for n in range(2)]
        threads = [threading.Thread(target=s.fetch, args=(soon(),)) for s in sources_]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        before = set(pool.pids)
        assert len(before) == 2  # two polls at once: two workers
        simulator.fault = None
        idle_clock.advance(599)
        sources_[0].fetch(soon())  # the most recently used worker serves it
        assert set(pool.pids) == before  # the other has been idle 599 s: kept
        idle_clock.advance(2)
        sources_[0].fetch(soon())
        (left,) = pool.pids  # the other, idle 601 s, was stopped by a poll in a worker
        assert left in before
        (stopped,) = before - {left}
        assert gone(stopped, within=5.0)
    finally:
        pool.close()
