"""The latency table: measured per-layer latencies keyed by what determines them.

A key is (device name, op, layer shape, scheme, block, density bucket, dtype, batch). Entries are
JSON, written atomically (`prunetune.files.atomic_write`, under an exclusive `filelock` on
`<path>.lock`), and `save` merges with what is already on disk, so every trial of a
search can add to one shared table file without losing another trial's entries.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from prunetune.errors import KernelError
from prunetune.files import atomic_write

__all__ = ["DENSITY_BUCKET", "OPS", "SCHEMES", "LatencyKey", "LatencyTable", "bucket_density"]

# Densities are bucketed to 1/20: finer buckets would multiply measurements without changing
# predictions by more than the timing noise.
DENSITY_BUCKET = 0.05
OPS = ("linear", "conv2d", "residual")
SCHEMES = ("dense", "bsr", "nm")
_FORMAT_VERSION = 1


def bucket_density(density: float) -> float:
    """Round to the nearest `DENSITY_BUCKET`; a nonzero density never rounds to 0."""
    if not 0.0 <= density <= 1.0 + 1e-6:
        raise KernelError(f"density must lie in [0, 1], got {density}")
    bucket = round(density / DENSITY_BUCKET) * DENSITY_BUCKET
    if density > 0.0:
        bucket = max(bucket, DENSITY_BUCKET)
    return round(min(bucket, 1.0), 4)


@dataclass(frozen=True)
class LatencyKey:
    """What one table entry is about.

    shape: for `linear` (in, out, bias, rows per sample); for `conv2d` (ci, co, kh, kw, sh, sw,
    ph, pw, dh, dw, groups, bias, H, W) with ph = pw = -1 for 'same' padding; for `residual` a
    fingerprint of the model and its input (see `prunetune.kernels.predict`).
    density: stored fraction of the weight, bucketed on construction.
    """

    device: str
    op: str
    shape: tuple[int, ...]
    scheme: str = "dense"
    block: tuple[int, int] | None = None
    density: float = 1.0
    dtype: str = "float32"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise KernelError(f"op must be one of {OPS}, got {self.op!r}")
        if self.scheme not in SCHEMES:
            raise KernelError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.batch < 1:
            raise KernelError(f"batch must be >= 1, got {self.batch}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.block is not None:
            object.__setattr__(self, "block", (int(self.block[0]), int(self.block[1])))
        object.__setattr__(self, "density", bucket_density(float(self.density)))
        object.__setattr__(self, "dtype", str(self.dtype).replace("torch.", ""))

    def to_str(self) -> str:
        """The JSON object key: readable and unique."""
        block = "x".join(map(str, self.block)) if self.block else "-"
        shape = "x".join(map(str, self.shape))
        return (f"{self.device}|{self.op}|{shape}|{self.scheme}|{block}|{self.density:.2f}|"
                f"{self.dtype}|b{self.batch}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["block"] = list(self.shape), list(self.block) if self.block else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyKey:
        block = d.get("block")
        return cls(device=d["device"], op=d["op"], shape=tuple(d["shape"]),
                   scheme=d.get("scheme", "dense"), block=tuple(block) if block else None,
                   density=d.get("density", 1.0), dtype=d.get("dtype", "float32"),
                   batch=d.get("batch", 1))

    def with_device(self, device: str) -> LatencyKey:
        return LatencyKey(device, self.op, self.shape, self.scheme, self.block, self.density,
                          self.dtype, self.batch)


@dataclass
class LatencyTable:
    """Entries `key string -> {"key": ..., "ms": median, "repeats": n, ...}` (JSON-able)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: LatencyKey) -> bool:
        return key.to_str() in self.entries

    def __iter__(self) -> Iterator[LatencyKey]:
        """The keys of all entries."""
        return (LatencyKey.from_dict(e["key"]) for e in list(self.entries.values()))

    def entry(self, key: LatencyKey) -> dict[str, Any] | None:
        return self.entries.get(key.to_str())

    def get(self, key: LatencyKey) -> float | None:
        """The median latency in ms, or None when the key was never measured."""
        e = self.entries.get(key.to_str())
        return None if e is None else float(e["ms"])

    def put(self, key: LatencyKey, ms: float, *, repeats: int = 1, **extra: Any) -> None:
        """Record (or replace) an entry; `extra` holds further JSON-able numbers. Only a residual
        (a difference of measurements, an intercept) may be negative."""
        if not math.isfinite(ms) or (ms < 0 and key.op != "residual"):
            raise KernelError(f"a {key.op} latency must be a finite number >= 0 ms, got {ms}")
        self.entries[key.to_str()] = {"key": key.to_dict(), "ms": float(ms),
                                      "repeats": int(repeats), "measured_at": time.time(),
                                      **extra}

    def merge(self, other: LatencyTable) -> LatencyTable:
        """Add `other`'s entries; where both hold a key, the one with more repeats wins (ties keep
        this table's). Returns self."""
        for k, e in other.entries.items():
            mine = self.entries.get(k)
            if mine is None or int(e.get("repeats", 1)) > int(mine.get("repeats", 1)):
                self.entries[k] = dict(e)
        return self

    def to_json(self) -> str:
        return json.dumps({"format": "prunetune-latency-table", "version": _FORMAT_VERSION,
                           "entries": self.entries}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        data = json.loads(text)
        if data.get("format") != "prunetune-latency-table":
            raise KernelError("not a prunetune latency table (missing format marker); expected "
                              "a file written by LatencyTable.save")
        if data.get("version") != _FORMAT_VERSION:
            raise KernelError(f"latency table version {data.get('version')} is not supported "
                              f"(this code reads version {_FORMAT_VERSION}); re-measure")
        return cls(entries=dict(data["entries"]))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = True) -> LatencyTable:
        """Read a table; a missing file gives an empty table unless `missing_ok=False`."""
        path = Path(path)
        if not path.exists():
            if missing_ok:
                return cls()
            raise FileNotFoundError(f"latency table {path} does not exist")
        with _file_lock(path):
            return cls.from_json(path.read_text())

    def save(self, path: str | os.PathLike[str], *, merge: bool = True) -> None:
        """Write atomically; with `merge`, entries already in the file are kept (and added to
        this table) so concurrent writers do not lose each other's measurements."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            if merge and path.exists():
                self.merge(LatencyTable.from_json(path.read_text()))
            atomic_write(path, self.to_json())


def _file_lock(path: Path) -> FileLock:
    """Exclusive lock on `<path>.lock` (a sibling, so the data file itself can be replaced)."""
    return FileLock(path.with_name(path.name + ".lock"))
