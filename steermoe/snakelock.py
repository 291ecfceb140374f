"""Snakemake's directory lock after a crash: a Snakemake killed by SIGKILL, the OOM killer or a power loss leaves
its lock behind, and the next run would stop with "Directory cannot be locked ... --unlock". Each Snakemake run of
this workflow records who it is (host, pid, process start time); a lock is removed only when every recorded run is
from this host and provably gone, so a run that is still active (here or on another host) keeps its lock.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

OWNERS = "steermoe-owners"  # under .snakemake/: one JSON per Snakemake process that may hold the lock


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: dict) -> bool:
    start = _start_time(owner["pid"])
    return start is not None and start == owner["start"]


def register(meta: Path = Path(".snakemake")) -> Path | None:
    """Record this process as a possible lock holder; returns the record (None where /proc is missing)."""
    start = _start_time(os.getpid())
    if start is None:
        return None
    record = meta / OWNERS / f"{socket.gethostname()}-{os.getpid()}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": start}))
    return record


def unregister(meta: Path = Path(".snakemake")) -> None:
    (meta / OWNERS / f"{socket.gethostname()}-{os.getpid()}.json").unlink(missing_ok=True)


def clear_stale_lock(meta: Path = Path(".snakemake"), log=lambda text: print(text, file=sys.stderr)) -> bool:
    """Remove the lock if every run that could hold it has died on this host; True if a lock was removed."""
    locks = sorted((meta / "locks").glob("*.lock"))
    records = sorted((meta / OWNERS).glob("*.json"))
    owners = []
    for record in records:
        try:
            owners.append(json.loads(record.read_text()))
        except (OSError, ValueError):
            return False  # a record being written: a run is starting
    if any(o["host"] != socket.gethostname() or _alive(o) for o in owners):
        return False
    for record in records:
        record.unlink(missing_ok=True)
    if not locks or not owners:
        return False  # no lock, or a lock of unknown origin (Snakemake's own message says what to do)
    for lock in locks:
        lock.unlink(missing_ok=True)
    pids = ", ".join(str(o["pid"]) for o in owners)
    log(f"steermoe: removed the lock left by a Snakemake run that is no longer running (pid {pids} on this host, "
        f"killed or lost power); its finished jobs are kept and interrupted training resumes from its checkpoints")
    return True
