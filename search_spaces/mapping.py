"""Scheme mapping: per unit, the scheme and its block size / N:M / pattern that a search
starts from (and, without `scheme_search`, keeps).

`method="rules"`: from the unit's layer type, shape and the target device.
`method="measured"`: from a `SchemeScan`, the measurements of pruning each unit alone with each
candidate at a few ratios (latency saved on the target device, proxy accuracy lost; made by
`prunetune.trainers.scan_schemes`, cached by `prunetune map`): each unit takes the candidate
with the most latency saved per point of accuracy lost, and channel pruning where no sparse
candidate saves measurable time. This package measures nothing itself.

The rules encode what each device can turn into speed: GPUs run block-sparse and 2:4 GEMMs
(1x1 convolutions and linear layers are plain GEMMs, so they take block sparsity sized to their
shape), while 3x3 convolutions and anything depthwise only get faster by really losing channels;
CPUs (and mobile runtimes, PatDNN's target) gain from 3x3 kernel patterns and channel pruning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .analysis import ModelAnalysis, PrunableUnit
from .policy import PolicyError, UnitPolicy
from .schemes import SCHEMES, choose_block, fitting_blocks, get_scheme

__all__ = ["DEVICES", "MAPPING_METHODS", "SCAN_RATIOS", "SchemeProbe", "SchemeScan",
           "choose_block", "fitting_blocks", "map_schemes", "measured_scores", "scan_candidates",
           "scan_templates", "unit_template"]

DEVICES = ("gpu", "cpu")
MAPPING_METHODS = ("rules", "measured")
# Ratios each candidate is measured at: light, middle and heavy pruning, the range a search's
# policies live in (clipped to what the scheme allows).
SCAN_RATIOS = (0.25, 0.5, 0.75)
# A candidate pays only if pruning its unit saves more than this fraction of the dense model's
# latency at some ratio: below it, table timings of the same layer differ by noise alone.
_MIN_SAVED_FRACTION = 0.005
# Accuracy drops under half a point are not told apart by a proxy on a few thousand images;
# flooring them keeps a candidate with an unmeasurably small drop from an infinite score.
_DROP_FLOOR = 0.005


def unit_template(unit: PrunableUnit, scheme: str, ratio: float = 0.0) -> UnitPolicy:
    """A UnitPolicy of `scheme` for `unit` with shape-derived parameters
    (`PruningScheme.template_options`: the largest fitting block, N:M's m, `patdnn`)."""
    return UnitPolicy(scheme, ratio, **get_scheme(scheme).template_options(unit))


def scan_candidates(unit: PrunableUnit, schemes: Sequence[str] = SCHEMES) -> list[UnitPolicy]:
    """The templates (ratio 0) a measured mapping compares for `unit`: per scheme of `schemes`
    that applies, its `PruningScheme.scan_options` (for `block` the two largest block shapes
    that fit: large blocks run faster, small ones keep more accuracy)."""
    return [UnitPolicy(scheme, 0.0, **options)
            for scheme in schemes if scheme in unit.schemes
            for options in get_scheme(scheme).scan_options(unit)]


def _template_key(up: UnitPolicy) -> tuple[Any, ...]:
    return (up.scheme, up.block, up.m, up.pattern)


@dataclass(frozen=True)
class SchemeProbe:
    """One unit pruned alone with one candidate at one ratio, measured against the dense model.

    saved_ms: dense latency minus the pruned model's on the scan's device (may be <= 0: the
    scheme did not pay there); drop: dense proxy accuracy minus the pruned one (fraction).
    """

    unit: str
    template: UnitPolicy
    ratio: float
    saved_ms: float
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "template": self.template.to_dict(), "ratio": self.ratio,
                "saved_ms": self.saved_ms, "drop": self.drop}


@dataclass
class SchemeScan:
    """Every probe of a sensitivity scan of one dense model on one device."""

    device: str  # the latency measurer's name (e.g. `cpu:AMD EPYC ...:1t:thread`)
    dense_ms: float
    dense_accuracy: float
    probes: list[SchemeProbe] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # what was scanned, for the cache key

    def of_unit(self, unit: str) -> list[SchemeProbe]:
        return [p for p in self.probes if p.unit == unit]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "dense_ms": self.dense_ms,
                "dense_accuracy": self.dense_accuracy, "meta": self.meta,
                "probes": [p.to_dict() for p in self.probes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SchemeScan:
        try:
            probes = [SchemeProbe(p["unit"], UnitPolicy.from_dict(p["template"]),
                                  float(p["ratio"]), float(p["saved_ms"]), float(p["drop"]))
                      for p in d["probes"]]
            return cls(str(d["device"]), float(d["dense_ms"]), float(d["dense_accuracy"]),
                       probes, dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise PolicyError(f"not a scheme scan ({type(err).__name__}: {err}); scan again "
                              "with `prunetune map CONFIG`") from err


def measured_scores(scan: SchemeScan, unit: str) -> list[dict[str, Any]]:
    """Per candidate of `unit`: its template, saved ms and drop per ratio, whether it pays and
    its score (mean over ratios of saved ms per accuracy point lost; 0 when it does not pay)."""
    by_template: dict[tuple[Any, ...], list[SchemeProbe]] = {}
    for probe in scan.of_unit(unit):
        by_template.setdefault(_template_key(probe.template), []).append(probe)
    rows = []
    for probes in by_template.values():
        probes.sort(key=lambda p: p.ratio)
        pays = max(p.saved_ms for p in probes) > _MIN_SAVED_FRACTION * scan.dense_ms
        score = (sum(max(p.saved_ms, 0.0) / (100 * max(p.drop, _DROP_FLOOR)) for p in probes)
                 / len(probes)) if pays else 0.0
        rows.append({"template": probes[0].template, "ratios": [p.ratio for p in probes],
                     "saved_ms": [p.saved_ms for p in probes],
                     "drop": [p.drop for p in probes], "pays": pays, "score": score})
    return rows


def _measured_choice(unit: PrunableUnit, usable: Sequence[str], scan: SchemeScan,
                     device: str) -> UnitPolicy:
    rows = [r for r in measured_scores(scan, unit.name) if r["template"].scheme in usable]
    paying = [r for r in rows if r["pays"]]
    if paying:
        return max(paying, key=lambda r: r["score"])["template"]
    # Nothing measured pays: removing channels is the one scheme that removes work everywhere.
    structural = [s for s in usable if get_scheme(s).structural]
    if structural:
        return unit_template(unit, structural[0])
    return _rules_choice(unit, usable, device)


def _rules_choice(unit: PrunableUnit, usable: Sequence[str], device: str) -> UnitPolicy:
    """The usable scheme the device's rules rank first (`PruningScheme.rule_rank`); the first
    usable one where the rules rank none."""
    kind, depthwise = unit.features.get("type", ""), bool(unit.features.get("depthwise"))
    ranks = {s: get_scheme(s).rule_rank(device, kind, depthwise) for s in usable}
    ranked = sorted((s for s in usable if ranks[s] is not None), key=ranks.__getitem__)
    return unit_template(unit, (ranked or list(usable))[0])


def map_schemes(analysis: ModelAnalysis, device: str = "gpu",
                schemes: Sequence[str] = SCHEMES, *, method: str = "rules",
                scan: SchemeScan | None = None) -> dict[str, UnitPolicy]:
    """Scheme per unit (ratio 0 templates), restricted to `schemes`.

    method: "rules" (layer type and `device`) or "measured" (from `scan`; units it has no
    probe of fall back to the rules). Units that none of `schemes` applies to are left out
    (they stay dense).
    """
    if device not in DEVICES:
        raise PolicyError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    bad = [s for s in schemes if s not in SCHEMES]
    if bad:
        raise PolicyError(f"unknown scheme(s) {bad}; use any of {', '.join(SCHEMES)} or "
                          "'package.module:attr'")
    if method not in MAPPING_METHODS:
        raise PolicyError(f"mapping method must be one of {', '.join(MAPPING_METHODS)}, got "
                          f"{method!r}")
    if method == "measured" and not isinstance(scan, SchemeScan):
        raise PolicyError("the measured mapping needs a SchemeScan (scan=): make one with "
                          "`prunetune map CONFIG` or prunetune.trainers.scan_schemes")
    out: dict[str, UnitPolicy] = {}
    for unit in analysis.units:
        usable = [s for s in schemes if s in unit.schemes]
        if not usable:
            continue
        if method == "measured" and scan.of_unit(unit.name):
            out[unit.name] = _measured_choice(unit, usable, scan, device)
        else:
            out[unit.name] = _rules_choice(unit, usable, device)
    return out


def scan_templates(analysis: ModelAnalysis, scan: SchemeScan,
                   schemes: Sequence[str] = SCHEMES) -> dict[str, UnitPolicy]:
    """The measured mapping of `scan`; units it did not probe take the rules of the scan's
    device (`meta["device_type"]`: a CUDA scan takes the GPU rules, else the CPU rules)."""
    device = "gpu" if scan.meta.get("device_type") == "cuda" else "cpu"
    return map_schemes(analysis, device, schemes, method="measured", scan=scan)
