"""Pruned-model files (`prunetune apply --out`): weights, policy and what rebuilds the model.

A file holds no code: a dict of plain values and tensors that `torch.load(path,
weights_only=True)` reads, so loading a file from someone else runs nothing of theirs::

    {"format": "prunetune-pruned/2",
     "spec": JSON text: {"model": {"name", "num_classes", "in_channels", "kwargs"},
                         "input_shape": [C, H, W], "policy": <policy JSON>, "result": {...}},
     "state_dict": the pruned model's state dict (weights, masks, BatchNorm statistics)}

`load_pruned(path)` rebuilds the architecture the way the pruned model was made: the dense
model is built fresh from the zoo and the policy applied to it (the policy alone fixes every
pruned shape and mask buffer), then the saved state dict replaces all of its weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune.errors import CheckpointError
from prunetune.files import atomic_writer

__all__ = ["PRUNED_FORMAT", "load_pruned", "load_pruned_with_spec", "save_pruned"]

PRUNED_FORMAT = "prunetune-pruned/2"


def save_pruned(path: str | os.PathLike, model: nn.Module, policy: Any, *, model_name: str,
                num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                kwargs: dict[str, Any] | None = None,
                result: dict[str, Any] | None = None) -> Path:
    """Write `model` (pruned by `policy` from zoo model `model_name`) to `path`, atomically.
    `input_shape` is one example's `(C, H, W)`; `result` any JSON-able summary."""
    spec = {"model": {"name": model_name, "num_classes": int(num_classes),
                      "in_channels": int(in_channels), "kwargs": dict(kwargs or {})},
            "input_shape": [int(v) for v in input_shape], "policy": policy.to_dict(),
            "result": result or {}}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_writer(path, "wb") as handle:
        torch.save({"format": PRUNED_FORMAT, "spec": json.dumps(spec), "state_dict": state},
                   handle)
    return Path(path)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"pruned model file {path} does not exist; write one with "
                              "`prunetune apply CONFIG --policy P.json --out FILE`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with objects in it (format 1), a damaged file, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(
            f"{path} is not a file torch.load(weights_only=True) reads ({first}); files of "
            f"`prunetune apply --out` before {PRUNED_FORMAT} were pickles of the model object "
            "and are not loaded: run `prunetune apply ... --out` again") from None
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a prunetune pruned model (expected format "
                              f"{PRUNED_FORMAT!r}, got {found!r}); write one with `prunetune "
                              "apply CONFIG --policy P.json --out FILE`")
    return payload


def load_pruned_with_spec(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """`load_pruned`, also returning the file's spec (model, input shape, policy, result)."""
    from prunetune.search_spaces import Policy, apply_policy

    from .models import build_model

    path = Path(path)
    payload = _read(path)
    spec = json.loads(payload["spec"])
    m = spec["model"]
    dense = build_model(m["name"], num_classes=m["num_classes"], in_channels=m["in_channels"],
                        **m.get("kwargs", {}))
    example = torch.zeros(1, *spec["input_shape"])
    # The policy fixes every pruned shape; the weights (and masks) then come from the file.
    model = apply_policy(dense.eval(), Policy.from_dict(spec["policy"]), example)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:300]
        raise CheckpointError(f"the weights in {path} do not fit the model its policy "
                              f"rebuilds ({first}); was it written by another prunetune "
                              "version? Run `prunetune apply ... --out` again") from None
    return model.eval(), spec


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """The pruned model saved at `path` by `prunetune apply --out` (or `save_pruned`), in eval
    mode on the CPU, read with `torch.load(..., weights_only=True)`."""
    return load_pruned_with_spec(path)[0]
