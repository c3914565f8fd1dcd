"""Shared by the benchmark scripts: the machine a result ran on, and writing the result."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from prunetune.files import atomic_write


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
