"""One driver per search: a lock the driver holds for the whole search.

Two drivers of one search (same name, same storage folder) would both run every trial and write
every child run twice, so the second is refused, in seconds, naming the first. The lock is an
OS file lock (`filelock`, `flock` on Unix): the kernel releases it when its holder's process
ends, however it ends, so `--resume` after a killed driver takes it over. Beside the lock file
the holder writes who it is (pid, host, start time, command), for the refusal to name.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from prunetune.errors import SearchError
from prunetune.files import atomic_write_json

__all__ = ["hold_search_lock", "lock_paths"]


def lock_paths(storage: Path, name: str) -> tuple[Path, Path]:
    """The lock file of search `name` in its storage folder, and its holder's description."""
    return storage / f"{name}.lock", storage / f"{name}.lock.holder.json"


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _holder_soon(path: Path, wait_s: float = 3.0) -> dict[str, Any] | None:
    """The holder's description, waiting a moment for it: a driver that took the lock an
    instant ago writes it just after (two drivers started together meet in that window)."""
    deadline = time.monotonic() + wait_s
    while (holder := _holder(path)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return holder


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "a driver that has not written its details yet"
    return (f"driver pid {holder.get('pid')} on host {holder.get('host')}, since "
            f"{holder.get('since')}")


@contextmanager
def hold_search_lock(storage: Path, name: str, progress: bool = True) -> Iterator[None]:
    """Hold search `name`'s lock while the body runs; SearchError at once when another
    driver holds it. A holder's file left by a driver that died is reported and replaced."""
    lock_file, holder_file = lock_paths(storage, name)
    # No fallback to a lock file that merely exists: one left by a killed driver would block
    # every resume; where the file system has no OS locks, say so instead.
    lock = FileLock(lock_file, fallback_to_soft=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SearchError(
            f"search {name!r} is already running ({_describe(_holder_soon(holder_file))}; lock "
            f"{lock_file}): two drivers of one search would run every trial twice. Wait for "
            f"it to end, or stop it (Ctrl-C; --resume continues it), or choose another name "
            f"(--name)") from None
    except OSError as err:
        raise SearchError(f"cannot lock search {name!r} ({lock_file}): {err}. Put the "
                          "workdir (or storage_path) on a file system with file locks") from err
    try:
        previous = _holder(holder_file)
        if previous is not None and progress:
            print(f"[search] {name}: its last driver (pid {previous.get('pid')} on host "
                  f"{previous.get('host')}, since {previous.get('since')}) ended without "
                  "releasing the search; this driver takes it over", flush=True)
        atomic_write_json(holder_file, {"pid": os.getpid(), "host": socket.gethostname(),
                                        "since": datetime.now().astimezone().isoformat(
                                            timespec="seconds"),
                                        "command": " ".join(sys.argv)})
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()
