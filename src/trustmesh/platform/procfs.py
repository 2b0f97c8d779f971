"""Facts about a process from ``/proc`` (Linux): when it started, and whether a pid still
names the process it named. PIDs are reused; ``(pid, start time)`` is unique per boot."""

from __future__ import annotations

__all__ = ["process_alive", "start_time_of"]


def start_time_of(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    # comm (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall: starttime


def process_alive(pid: int, start_time: int) -> bool:
    """True if ``pid`` is still the process that started at ``start_time``."""
    try:
        return start_time_of(pid) == start_time
    except (OSError, ValueError, IndexError):
        return False
