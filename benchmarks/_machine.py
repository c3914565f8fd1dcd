"""Shared by the benchmark scripts: the machine a result ran on, writing the result, and the
committed dense models."""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from prunetune.files import atomic_write, atomic_writer

# Dense references trained to their plateau take hours on a 2-core CPU (ResNet-56 1.4 h,
# MobileNetV2 3.9 h), and a benchmark machine may start with an empty cache: the finished
# checkpoints are committed here, under the product's own content-addressed names.
DENSE_STORE = Path(__file__).resolve().parent / "dense"


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def write_result(path: Path, result: dict[str, Any], *, show: Any = None) -> None:
    """Write `result` as JSON to `path` atomically, then print `show` (default: all of it)."""
    atomic_write(path, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result if show is None else show, indent=1))


def restore_dense_models(cache_dir: Path | None = None, store: Path = DENSE_STORE) -> list[Path]:
    """Copy each committed dense checkpoint (in `store`) the product's cache lacks into it
    (`cache_dir`: default, the product's default cache), so `pretrain_dense` finds it instead
    of training it again (a partial one, `<stem>.partial.pt`, resumes where it stopped);
    returns the paths copied."""
    from prunetune.trainers.pretrain import default_cache_dir

    target = (cache_dir or default_cache_dir()) / "checkpoints"
    copied = []
    for stored in sorted(store.glob("*.pt")):
        path = target / stored.name
        if not path.exists():
            _copy_whole(stored, path)
            copied.append(path)
    if copied:
        print(f"[dense] {len(copied)} committed dense model(s) copied into {target}", flush=True)
    return copied


def keep_dense_model(checkpoint: Path, store: Path = DENSE_STORE) -> Path:
    """A finished dense checkpoint's copy in `store` (same name), to be committed; kept as it
    is when there already."""
    stored = store / Path(checkpoint).name
    if not stored.exists():
        _copy_whole(Path(checkpoint), stored)
    return stored


def _copy_whole(source: Path, path: Path) -> None:
    """`source` to `path` (its folder made), atomically: never a half-copied checkpoint."""
    with source.open("rb") as src, atomic_writer(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
