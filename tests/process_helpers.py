"""Finding the processes a test's search started, by reading /proc (shared by the search tests
and the reliability suite)."""

from __future__ import annotations

from pathlib import Path


def trial_pids(driver_pgid: int) -> list[int]:
    """Trial actor processes of this driver's Ray: `ray::ImplicitFunc` children of its raylet."""
    stats = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="ignore")
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(proc.name)] = (cmd, int(fields[1]), int(fields[2]))  # cmdline, ppid, pgid
    return [pid for pid, (cmd, ppid, _) in stats.items()
            if cmd.startswith("ray::ImplicitFunc") and stats.get(ppid, ("", 0, 0))[2] == driver_pgid]
