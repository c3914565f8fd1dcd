"""`prunetune baselines CONFIG`: the free baseline policies at the config's budget.

Loads the config, pretrains (or loads) the dense model and builds the search space as
`analyze` / `apply` do, then writes one policy JSON per method (`search_spaces.baselines`),
the format `prunetune apply --policy` reads, and prints a table of their costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunetune.errors import CLIError

__all__ = ["add_baselines_command", "cmd_baselines"]

def _methods(text: str) -> list[str]:
    from prunetune.search_spaces.baselines import BASELINE_METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in BASELINE_METHODS]
    if bad or not methods:
        raise CLIError(f"--methods must be a comma-separated subset of "
                       f"{','.join(BASELINE_METHODS)}, got {text!r}")
    return methods


def cmd_baselines(args: argparse.Namespace) -> int:
    """Write and print the baseline policies of the config's space and budget."""
    from .cli_engine import _setup
    from .config import load_config

    methods = _methods(args.methods)
    cfg = load_config(args.config, {"cache_dir": args.cache_dir})
    if cfg.space.budget is None:
        raise CLIError("the baselines meet a budget and the config has none; set "
                       "space.budget (e.g. {kind: flops, keep: 0.5})")
    args.quiet = args.quiet or args.json
    cfg, data, model, example = _setup(args)
    from prunetune.search_spaces.baselines import baseline_policies, taylor_batch

    from .spaces import build_space

    space = build_space(cfg, model, example)
    batch = taylor_batch(data.loader("train")) if "tp-taylor" in methods else None
    results = baseline_policies(space, model, example, methods, batch=batch)
    out = Path(args.out or cfg.workdir_path() / f"{cfg.name or cfg.model.name}-baselines")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for b in results:
        path = b.policy.save(out / f"{b.method}.json")
        rows.append({"method": b.method, "flops_ratio": b.flops_share,
                     "params_ratio": b.params_share, "units_pruned": b.units_pruned,
                     "units": len(b.policy.units), "seconds": b.seconds, "policy": str(path)})
    budget = {"kind": cfg.space.budget.kind, "keep": cfg.space.budget.keep}
    if args.json:
        print(json.dumps({"model": cfg.model.name, "budget": budget, "baselines": rows},
                         indent=2))
        return 0
    print(f"{'method':14s}{'flops':>8s}{'params':>8s}{'pruned':>9s}{'seconds':>9s}  policy")
    for r in rows:
        print(f"{r['method']:14s}{r['flops_ratio']:8.3f}{r['params_ratio']:8.3f}"
              f"{r['units_pruned']:>5d}/{r['units']:<3d}{r['seconds']:9.2f}  {r['policy']}")
    print(f"\nbudget: keep {budget['keep']:g} of the dense {budget['kind']}; apply one with "
          f"`prunetune apply {args.config} --policy {out}/METHOD.json`")
    return 0


def add_baselines_command(subparsers: Any) -> None:
    """Add `baselines` to the `prunetune` sub-command parsers."""
    p = subparsers.add_parser("baselines", help="the free baseline policies (uniform, "
                              "Torch-Pruning global) at the config's budget")
    p.add_argument("config", help="YAML config (see examples/); space.budget is the budget")
    p.add_argument("--methods", default="uniform,tp-magnitude,tp-bn-scale,tp-taylor",
                   help="comma-separated subset of uniform,tp-magnitude,tp-bn-scale,tp-taylor")
    p.add_argument("--out", help="folder of the policy JSON files (default: "
                   "<workdir>/<name>-baselines)")
    p.add_argument("--cache-dir", help="override cache_dir")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no pretraining progress output")
    p.set_defaults(func=cmd_baselines)
