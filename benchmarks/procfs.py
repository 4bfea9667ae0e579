"""Resident memory of processes and the machine's description, read from /proc (Linux)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

PROC = Path("/proc")


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...) in bytes; 0 when the line is absent."""
    # Zombies and kernel threads have no memory lines.
    return (_kib(PROC / str(pid) / "status", field) or 0) * 1024


def reset_peak() -> None:
    """Make VmHWM start again from the current resident size."""
    # "5" resets the peak resident set size (proc(5), /proc/pid/clear_refs).
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _parents() -> dict[int, int]:
    """Parent pid of every process visible now."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        # The command name may hold spaces and parentheses: the fields start after the last ")".
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Children of `pid`, their children, and so on."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, summed."""
    total = 0
    for member in (pid, *descendants(pid)):
        try:
            total += status_bytes("VmRSS", member)
        except OSError:
            continue  # ended while we looked
    return total


def pss_bytes(pid: int) -> int:
    """Proportional set size of `pid`: its own pages, and its share of the pages it shares."""
    return (_kib(PROC / str(pid) / "smaps_rollup", "Pss") or 0) * 1024


def tree_pss(pid: int) -> int:
    """Proportional set size of `pid` and all its descendants, summed.

    Unlike the sum of their resident sizes, each page shared by several of them (the
    interpreter, the libraries: about 15 MB between the exporter and a worker) counts once,
    as the memory of a container counts it.
    """
    total = 0
    for member in (pid, *descendants(pid)):
        try:
            total += pss_bytes(member)
        except OSError:
            continue  # ended while we looked
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (every thread), and of their reaped children.

    Live threads are read from their schedstat, in nanoseconds: the clock ticks of `stat`
    (10 ms) are too coarse for a poll that takes a few milliseconds.
    """
    seconds = 0.0
    for member in (pid, *descendants(pid)):
        try:
            for task in (PROC / str(member) / "task").iterdir():
                seconds += int((task / "schedstat").read_text().split()[0]) / 1e9
            stat = (PROC / str(member) / "stat").read_text()
        except OSError:
            continue  # ended while we looked (its time is then its parent's cutime)
        # cutime and cstime, fields 16 and 17 of proc(5): children that ended and were reaped.
        reaped = stat.rpartition(")")[2].split()[13:15]
        seconds += sum(int(ticks) for ticks in reaped) / os.sysconf("SC_CLK_TCK")
    return seconds


def machine() -> str:
    """CPU model, cores, RAM and Python version of this machine."""
    model = "unknown CPU"
    for line in (PROC / "cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    ram = (_kib(PROC / "meminfo", "MemTotal") or 0) / 2**20
    return (
        f"{model}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, "
        f"Python {platform.python_version()}, Linux {platform.release()}"
    )


def _kib(path: Path, field: str) -> int | None:
    """The value of a `Name:  123 kB` line of a /proc file, in KiB."""
    for line in path.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    return None
