"""Explicit checkpoint dicts, written atomically and read with `weights_only=True`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune.errors import CheckpointError
from prunetune.files import atomic_writer

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "content_hash", "save_checkpoint",
           "load_checkpoint", "model_from_checkpoint"]

CHECKPOINT_FORMAT = "prunetune-dense/1"


def content_hash(obj: Any, length: int = 16) -> str:
    """Hex SHA-256 of the canonical JSON of `obj` (sorted keys); stable across processes."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` to `path` atomically (`prunetune.files.atomic_writer`)."""
    with atomic_writer(path, "wb") as handle:
        torch.save(checkpoint, handle)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a prunetune checkpoint with `torch.load(..., weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupted file, pickle with code in it, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"checkpoint {path} could not be read safely (torch.load with "
                              f"weights_only=True: {first}); give a checkpoint written by "
                              "`prunetune pretrain` (in the cache_dir's checkpoints/)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a prunetune checkpoint (expected format "
                              f"{CHECKPOINT_FORMAT!r}, got {found!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the dense model a checkpoint describes and load its weights."""
    from .models import build_model

    spec = ckpt["model"]
    model = build_model(spec["name"], num_classes=spec["num_classes"],
                        in_channels=spec["in_channels"], **spec.get("kwargs", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
