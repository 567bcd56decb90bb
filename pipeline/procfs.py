"""Linux /proc readings of a process: CPU seconds, page faults, state, resident memory and
children. The one parser of /proc/<pid>/stat and /proc/<pid>/status for the dev stack, the
benchmarks, the soak and the tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

Pid = int | str  # a process id, or "self"


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat that are read here."""

    state: str  # R, S, D, Z, ...
    minor_faults: int
    user_s: float
    system_s: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def _parse_stat(text: str) -> Stat:
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return Stat(
        state=fields[0],
        minor_faults=int(fields[7]),
        user_s=int(fields[11]) / hz,
        system_s=int(fields[12]) / hz,
    )


def stat(pid: Pid = "self") -> Stat:
    """The process's /proc/<pid>/stat; OSError once it is gone."""
    return _parse_stat(Path(f"/proc/{pid}/stat").read_text())


def cpu_seconds(pid: Pid = "self") -> float:
    """User + system CPU seconds of a process so far; OSError once it is gone."""
    return stat(pid).cpu_s


def cpu_and_faults(pids: list[int]) -> tuple[float, int]:
    """CPU seconds and minor page faults of ``pids``, summed; a process gone counts 0."""
    cpu, faults = 0.0, 0
    for pid in pids:
        try:
            found = stat(pid)
        except (OSError, IndexError):
            continue
        cpu += found.cpu_s
        faults += found.minor_faults
    return cpu, faults


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread, by "comm/tid" (the main thread is "main")."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "main" if task.name == str(pid) else f"{(task / 'comm').read_text().strip()}/{task.name}"
            cpu = _parse_stat((task / "stat").read_text()).cpu_s
        except OSError:
            continue  # the thread ended meanwhile
        out[name] = out.get(name, 0.0) + cpu
    return out


def children(pid: int) -> list[int]:
    """The direct children of a process (of its main thread); [] once it is gone."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _status_mb(pid: Pid, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        return None
    return None  # a zombie has no memory lines


def rss_mb(pid: Pid = "self") -> float | None:
    """Resident memory now in MB (VmRSS); None once the process is gone."""
    return _status_mb(pid, "VmRSS:")


def peak_rss_mb(pid: Pid = "self") -> float | None:
    """Peak resident memory in MB (VmHWM: unlike getrusage's maxrss, not inherited from the
    parent that started the process); None once it is gone."""
    return _status_mb(pid, "VmHWM:")
