"""Resumable dense pretraining: the partial checkpoint written after each completed epoch.

`<cached checkpoint>.partial.pt` (same folder, same cache key) is an explicit dict, written
atomically and read with `torch.load(..., weights_only=True)`: the model's and the optimiser's
state, the epoch, the training curve so far, the elapsed training time, every RNG a training
epoch draws from (torch CPU and CUDA, NumPy, Python, and the training loader's generator: its
shuffling order and its workers' seeds) and a fingerprint of what it was trained for. A rerun
of the same config restores all of it and continues after that epoch, so the finished weights
are those of an uninterrupted run (bit for bit on CPU with the same threads: the epochs after
the resume see the same batches, augmentations and learning rates, in the same order). A
partial checkpoint for anything else (another fingerprint, an unreadable file) is ignored with
a message, never mixed in.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import save_checkpoint

__all__ = ["PARTIAL_FORMAT", "Partial", "load_partial", "partial_path", "restore_rng",
           "rng_state", "run_fingerprint", "save_partial"]

PARTIAL_FORMAT = "prunetune-dense-partial/1"
Partial = dict[str, Any]


def partial_path(final: Path) -> Path:
    """Where the partial checkpoint of the cached checkpoint `final` goes: `<stem>.partial.pt`."""
    return final.with_name(f"{final.stem}.partial.pt")


def run_fingerprint(cache_key: str, train_samples: int, batches_per_epoch: int) -> dict[str, Any]:
    """What a partial checkpoint must have been trained for to be resumed: the cache key
    (model, data and training config), and the training split's size and batches per epoch
    (the same config over a dataset whose files changed is another training)."""
    return {"format": PARTIAL_FORMAT, "cache_key": cache_key, "train_samples": train_samples,
            "batches_per_epoch": batches_per_epoch}


def rng_state(generator: torch.Generator | None, device: torch.device) -> dict[str, Any]:
    """Every RNG state a training epoch draws from, as tensors, lists and numbers (what
    `weights_only=True` loads): NumPy's and Python's state tuples become lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(mt), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None) -> None:
    """Put back what `rng_state` saved (the loader's generator into `generator`)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np.array(np_state["keys"], dtype=np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def save_partial(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 epoch: int, curve: dict[str, list[float]], elapsed_s: float,
                 fingerprint: dict[str, Any], rng: dict[str, Any], run: dict[str, Any]) -> None:
    """Write the partial checkpoint of `epoch` atomically (`save_checkpoint`); `fingerprint` is
    `run_fingerprint`'s, `rng` the states taken by `rng_state` at the epoch's end, `run` the device
    and threads it ran on (a resume elsewhere is told it will not be bit-identical)."""
    save_checkpoint(path, {
        "format": PARTIAL_FORMAT,
        "fingerprint": fingerprint,
        "epoch": epoch,
        # CPU copies: the file loads anywhere; the optimiser's buffers are cast back to the
        # parameters' device when it is loaded
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "curve": {k: list(v) for k, v in curve.items()},
        "elapsed_s": float(elapsed_s),
        "rng": rng,
        "run": run,
    })


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_partial(path: Path, expected: dict[str, Any], epochs: int) -> Partial | None:
    """The partial checkpoint at `path` when there is one trained for `expected` (the
    fingerprint) that completed 1 to `epochs` epochs; None when there is none. One that cannot
    be read or was trained for something else is ignored with a line on stderr (the training
    starts over and replaces it)."""
    if not path.is_file():
        return None
    try:
        partial = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated by a full disk, written by something else, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return _ignored(path, f"it cannot be read safely (torch.load with weights_only=True: "
                              f"{first})")
    found = partial.get("fingerprint") if isinstance(partial, dict) else None
    if not isinstance(found, dict) or partial.get("format") != PARTIAL_FORMAT:
        return _ignored(path, f"it is not a partial checkpoint of format {PARTIAL_FORMAT!r}")
    differs = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    if differs:
        shown = ", ".join(f"{k} {found.get(k)!r} (now {expected.get(k)!r})" for k in differs)
        return _ignored(path, f"it was trained for another run: {shown}")
    epoch = partial.get("epoch")
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        return _ignored(path, f"its epoch {epoch!r} is not one of the {epochs} this run trains")
    return partial


def _ignored(path: Path, why: str) -> None:
    print(f"[pretrain] ignoring the partial checkpoint {path}: {why}; training from epoch 0 "
          "(it will be replaced)", file=sys.stderr, flush=True)
    return None

