"""Rule-based scheme mapping: from a unit's layer type, shape and the target device, propose a
scheme and its block size / N:M / pattern.

The rules encode what each device can turn into speed: GPUs run block-sparse and 2:4 GEMMs
(1x1 convolutions and linear layers are plain GEMMs, so they take block sparsity sized to their
shape), while 3x3 convolutions and anything depthwise only get faster by really losing channels;
CPUs (and mobile runtimes, PatDNN's target) gain from 3x3 kernel patterns and channel pruning.
"""

from __future__ import annotations

from collections.abc import Sequence

from .analysis import ModelAnalysis, PrunableUnit
from .policy import PolicyError, UnitPolicy
from .schemes import BLOCK_SHAPES, SCHEMES

__all__ = ["DEVICES", "choose_block", "map_schemes", "unit_template"]

DEVICES = ("gpu", "cpu")


def choose_block(unit: PrunableUnit) -> tuple[int, int]:
    """The largest block shape that divides every block-prunable layer's GEMM view and leaves
    at least 4 blocks along each side (so ranking has a choice); (4, 4) when none does."""
    shapes = [unit.shapes[n] for n in unit.sparse_layers.get("block", ()) if n in unit.shapes]
    for bo, bi in sorted(BLOCK_SHAPES, key=lambda b: -b[0] * b[1]):
        if shapes and all(o % bo == 0 and k % bi == 0 and o >= 4 * bo and k >= 4 * bi
                          for o, k in shapes):
            return (bo, bi)
    return (4, 4)


def unit_template(unit: PrunableUnit, scheme: str, ratio: float = 0.0) -> UnitPolicy:
    """A UnitPolicy of `scheme` for `unit` with shape-derived parameters."""
    if scheme == "block":
        return UnitPolicy("block", ratio, block=choose_block(unit))
    if scheme == "nm":
        m = 4 if unit.sparse_layers.get("nm4") else 8
        return UnitPolicy("nm", ratio, m=m)
    if scheme == "pattern":
        return UnitPolicy("pattern", ratio, pattern="patdnn")
    return UnitPolicy(scheme, ratio)


def _preferences(unit: PrunableUnit, device: str) -> list[str]:
    kind = unit.features.get("type", "")
    if unit.features.get("depthwise"):
        return ["channel"]
    if device == "cpu":
        if kind == "conv3x3":
            return ["pattern", "channel", "unstructured"]
        return ["channel", "unstructured"]
    if kind in ("linear", "conv1x1"):
        return ["block", "nm", "channel", "unstructured"]
    if kind == "conv3x3":
        return ["channel", "pattern", "block", "unstructured"]
    return ["channel", "block", "unstructured"]


def map_schemes(analysis: ModelAnalysis, device: str = "gpu",
                schemes: Sequence[str] = SCHEMES) -> dict[str, UnitPolicy]:
    """Rule-based scheme per unit (ratio 0 templates), restricted to `schemes`.

    Units that none of `schemes` applies to are left out (they stay dense).
    """
    if device not in DEVICES:
        raise PolicyError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    bad = [s for s in schemes if s not in SCHEMES]
    if bad:
        raise PolicyError(f"unknown scheme(s) {bad}; use any of {', '.join(SCHEMES)}")
    out: dict[str, UnitPolicy] = {}
    for unit in analysis.units:
        usable = [s for s in schemes if s in unit.schemes]
        if not usable:
            continue
        preferred = [s for s in _preferences(unit, device) if s in usable]
        out[unit.name] = unit_template(unit, (preferred or usable)[0])
    return out
