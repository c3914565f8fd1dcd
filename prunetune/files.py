"""Writing state files atomically: the one helper every part of prunetune saves through.

A reader (another trial, a resumed search, a crash) sees either the old file or the new one,
never half of one: the data goes to a temporary file in the same folder, is flushed and
fsync'd, then renamed over the target (`os.replace` is atomic on POSIX), and the folder is
fsync'd so the rename itself survives a power loss.

This module imports only the standard library (and `prunetune.errors`), so every part of
prunetune can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from prunetune.errors import ConfigError

__all__ = ["atomic_write", "atomic_write_json", "atomic_writer", "check_writable"]


def _fsync_dir(folder: Path) -> None:
    # Some file systems do not allow opening a folder; the rename is still atomic there.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """A file object to write `path` through (`mode` "w" or "wb"); the file appears, whole, only
    when the block ends without an exception (then nothing at `path` changes)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write text or bytes to `path` atomically; returns the path."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **dump: Any) -> Path:
    """`json.dump` of `obj` to `path` atomically (`dump`: json.dump's keyword arguments)."""
    with atomic_writer(path) as handle:
        json.dump(obj, handle, **dump)
    return Path(path)


def check_writable(folder: str | os.PathLike[str], field: str) -> None:
    """`folder` can be created (if absent) and written to; tried with a temporary file in the
    nearest folder that exists, so nothing is left behind (a read-only filesystem or missing
    permission is found even for root, which `os.access` would not tell)."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{field} {folder} cannot be created: {existing} is a file, not a "
                          f"folder; choose another {field}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"{field} {folder} is not writable ({existing}: {err.strerror}); "
                          f"choose a folder you can write to (set {field} in the config or "
                          "pass its flag)") from None
