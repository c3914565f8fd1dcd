"""The measured scheme mapping of a config: its sensitivity scan (cached per dense model and
device), the per-unit choice and the table `prunetune map` prints.

A search with `space.mapping: measured` and `prunetune map CONFIG` share the scan through the
cache, so mapping first and searching after measures once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunetune
from prunetune.errors import SearchError
from prunetune.files import atomic_writer
from prunetune.search_spaces import (
    SCAN_RATIOS,
    ModelAnalysis,
    PolicyError,
    SchemeScan,
    UnitPolicy,
    measured_scores,
)

from .config import PrunetuneConfig
from .spaces import latency_table_file

__all__ = ["SCAN_DEVICES", "SCAN_FORMAT", "check_scan_device", "format_mapping", "mapping_rows",
           "measured_scan", "scan_cache_file"]

SCAN_FORMAT = "prunetune-scheme-scan/1"
SCAN_DEVICES = ("cpu", "cuda")


def _scan_key(cfg: PrunetuneConfig, dense: nn.Module, device_name: str,
              ratios: tuple[float, ...]) -> str:
    """What a scan depends on: the dense weights, the validation data, the proxy, the device,
    the schemes, the ratios and the code that masks and measures (prunetune's version)."""
    h = hashlib.sha256()
    for name, t in sorted(dense.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({"prunetune": prunetune.__version__,
                         "data": cfg.data.model_dump(mode="json"), "device": device_name,
                         "schemes": list(cfg.space.schemes), "ratios": list(ratios),
                         "bn": cfg.finetune.bn_calibration, "seed": cfg.seed},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def check_scan_device(device: str) -> None:
    """Raise SearchError unless a scan can run on `device` here ("cpu", or "cuda" with a GPU)."""
    if device not in SCAN_DEVICES:
        raise SearchError(f"the measured mapping's device must be one of "
                          f"{', '.join(SCAN_DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SearchError("the measured mapping was asked for on cuda, but no CUDA GPU is "
                          "visible here; map on --device cpu, or run on a machine with one "
                          "(benchmarks/gpu_suite.sh)")


def scan_cache_file(cfg: PrunetuneConfig, key: str) -> Path:
    from prunetune.trainers import default_cache_dir

    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return root / "scheme_scans" / f"{cfg.model.name.replace('/', '-')}-{key}.json"


def measured_scan(cfg: PrunetuneConfig, dense: nn.Module, *, device: str,
                  workdir: Path | None = None, ratios: tuple[float, ...] = SCAN_RATIOS,
                  progress: bool = True, rescan: bool = False) -> tuple[SchemeScan, Path]:
    """The config's scan on `device` ("cpu" or "cuda"), its latencies timed by the config's
    latency backend: from the cache, else measured now (layer latencies go into the search's
    latency table) and cached. Returns it and its file."""
    from prunetune.kernels.service import LatencyService
    from prunetune.search_spaces import analyze
    from prunetune.trainers import load_data
    from prunetune.trainers.sensitivity import scan_schemes

    check_scan_device(device)
    table = latency_table_file(cfg, workdir)
    table.parent.mkdir(parents=True, exist_ok=True)
    service = LatencyService(str(table), device=device, repeats=cfg.search.latency_repeats,
                             backend=cfg.latency.backend, threads=cfg.latency.threads)
    path = scan_cache_file(cfg, _scan_key(cfg, dense, service.clock, ratios))
    if path.exists() and not rescan:
        try:
            return SchemeScan.from_dict(json.loads(path.read_text())["scan"]), path
        except (OSError, ValueError, KeyError, PolicyError):
            pass  # a damaged cache file is measured again
    data = load_data(cfg.data)
    example = data.example_input(1)
    analysis = analyze(dense, example)
    say = (lambda line: print(line, flush=True)) if progress else None
    if say:
        say(f"[map] scanning {len(analysis.units)} units x schemes {list(cfg.space.schemes)} "
            f"x ratios {list(ratios)} on {service.clock}")
    proxy = cfg.finetune.model_copy(update={"device": device})
    scan = scan_schemes(dense, data, analysis, service, device_name=service.clock,
                        schemes=cfg.space.schemes, ratios=ratios, proxy=proxy, seed=cfg.seed,
                        progress=say)
    scan.meta["device_type"] = device
    service.save()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "w") as handle:
        json.dump({"format": SCAN_FORMAT, "model": cfg.model.name, "scan": scan.to_dict()},
                  handle, indent=1)
    return scan, path


def _fmt(values: list[float], scale: float = 1.0) -> str:
    return "/".join(f"{scale * v:.3f}" for v in values)


def mapping_rows(analysis: ModelAnalysis, scan: SchemeScan,
                 templates: dict[str, UnitPolicy]) -> list[dict[str, Any]]:
    """One row per unit and candidate: saved ms and proxy drop (points) per ratio, the score
    (ms saved per point lost), and whether it is the unit's choice."""
    rows = []
    for unit in analysis.units:
        chosen = templates.get(unit.name)
        for r in measured_scores(scan, unit.name):
            t = r["template"]
            rows.append({"unit": unit.name, "candidate": t.spec.label(t), "ratios": r["ratios"],
                         "saved_ms": r["saved_ms"], "drop_points": [100 * d for d in r["drop"]],
                         "pays": r["pays"], "score": r["score"],
                         "chosen": chosen is not None and chosen.scheme == t.scheme
                         and chosen.block == t.block and chosen.m == t.m})
    return rows


def format_mapping(rows: list[dict[str, Any]]) -> str:
    """`mapping_rows` as a fixed-width table (ms and points per scan ratio)."""
    head = ["unit", "candidate", "ratios", "saved ms", "proxy drop (pt)", "ms/pt", "choice"]
    cells = [head] + [[r["unit"], r["candidate"], _fmt(r["ratios"]), _fmt(r["saved_ms"]),
                       _fmt(r["drop_points"]), f"{r['score']:.3f}" if r["pays"] else "no gain",
                       "<==" if r["chosen"] else ""] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip()
                     for c in cells)
