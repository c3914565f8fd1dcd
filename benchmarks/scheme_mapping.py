"""Which scheme mapping wins on this CPU: channel only, the measured mapping, or BO that searches
schemes, at equal measured latency.

    python benchmarks/scheme_mapping.py [--trials 40] [--seeds 0]

Three `prunetune search` runs (`run_search`, the product's path) on ResNet-20 / Fashion-MNIST
(the demo's dense model) under a latency budget of `--keep` of the dense latency, fitted from
the latency table, BO proxy trials, `search.latency: table` (each trial's latency_ms is the
table's prediction of its deployed model: block-sparse layers run as sparse modules where that
pays, other masks leave dense work):
  channel    `space.schemes: [channel]`;
  measured   all five schemes, `space.mapping: measured` (`prunetune map`'s scan on this CPU),
             ratios searched;
  scheme-bo  all five schemes, `space.scheme_search: true` (BO picks each group's scheme).
Compared at equal measured latency: only trials whose latency_ms is within the budget (times
1 + `--tolerance`, 10%: the table's accuracy band) count. Per variant: the best such proxy
accuracy, then that policy fine-tuned with the finalists' recipe (1 epoch) under `--seeds`
and scored on the test split. Writes
benchmarks/results/scheme_mapping-cpu.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result
from end_to_end import fine_tuned, run_or_resume, run_policy
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.config import PrunetuneConfig, load_config
from prunetune.orchestrator.results import find_search, search_trials
from prunetune.trainers import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scheme_mapping-cpu.json"
ALL = ["channel", "block", "nm", "unstructured", "pattern"]
VARIANTS = {
    "channel": {"schemes": ["channel"]},
    "measured": {"schemes": ALL, "mapping": "measured"},
    "scheme-bo": {"schemes": ALL, "scheme_search": True},
}


def config(name: str, space: dict[str, Any], args: argparse.Namespace) -> PrunetuneConfig:
    """The demo's model and data, a latency budget, `space`, BO proxy trials only."""
    raw = {
        "name": f"scheme-mapping-{name}", "workdir": str(args.work),
        "model": {"name": "resnet20"},
        "data": {"name": "fashion-mnist", "train_subset": 12000, "val_subset": 1000,
                 "test_subset": 2000, "batch_size": 128},
        "pretrain": {"epochs": 4, "lr": 0.1, "warmup_epochs": 0.2, "label_smoothing": 0.1},
        "space": {**space, "budget": {"kind": "latency", "keep": args.keep}},
        "search": {"searcher": "bo", "trials": args.trials, "max_concurrent": 2,
                   "cpus_per_trial": 1, "latency": "table", "latency_repeats": 10,
                   "latency_table": str(args.work / "latency_table.json"),
                   "finalists": {"count": 0, "epochs": 1}},
        "finetune": {"epochs": 0, "lr": 0.01, "threads": 1},
    }
    path = args.work / f"{raw['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def searched(cfg: PrunetuneConfig) -> tuple[list[dict[str, Any]], float | None]:
    """Run the search (resumed when interrupted, reused when done); its trials from MLflow."""
    wall = run_or_resume(cfg)
    client = MlflowClient(cfg.tracking_uri())
    trials = search_trials(client, find_search(client, cfg.tracking.experiment, cfg.name))
    rows = [{"trial": t.name, "run_id": t.run_id, **t.metrics} for t in trials
            if t.status == "finished"]
    return rows, wall


def summary(rows: list[dict[str, Any]], keep: float, tolerance: float) -> dict[str, Any]:
    """The best proxy accuracy among trials whose table latency meets the budget within
    `tolerance` (the budget's linear model and the table's per-trial predictions differ by a
    few percent on a loaded machine; the table's own accuracy target is +-10%)."""
    dense_ms = float(np.median([r["latency_ms"] * r["speedup"] for r in rows]))
    budget_ms = keep * dense_ms
    strict = [r for r in rows if r["latency_ms"] <= budget_ms * (1 + 1e-6)]
    within = [r for r in rows if r["latency_ms"] <= budget_ms * (1 + tolerance)]
    best = max(within, key=lambda r: r["accuracy"]) if within else None
    return {"trials": len(rows), "dense_ms": dense_ms, "budget_ms": budget_ms,
            "within_budget": len(strict), "within_tolerance": len(within),
            "latency_over_budget": {q: float(np.quantile([r["latency_ms"] / budget_ms
                                                           for r in rows], p))
                                    for q, p in (("min", 0.0), ("median", 0.5), ("max", 1.0))},
            "best_overall_accuracy": max(r["accuracy"] for r in rows),
            "best": None if best is None else {k: best[k] for k in (
                "trial", "run_id", "accuracy", "latency_ms", "speedup", "flops_ratio")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--keep", type=float, default=0.6, help="latency budget (of dense)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="a trial counts when its table latency is within the budget x "
                             "(1 + tolerance)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads while fine-tuning")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "scheme_mapping40")
    args = parser.parse_args()
    variants: dict[str, Any] = {}
    for name in args.variants:
        cfg = config(name, VARIANTS[name], args)
        print(f"== {name}: {cfg.space.schemes} mapping {cfg.space.mapping} scheme_search "
              f"{cfg.space.scheme_search}", flush=True)
        rows, wall = searched(cfg)
        variants[name] = {"space": VARIANTS[name], "wall_s": wall,
                          **summary(rows, args.keep, args.tolerance)}
    torch.set_num_threads(args.threads)
    for name, v in variants.items():
        if v["best"] is None:
            continue
        cfg = config(name, VARIANTS[name], args)
        policy = run_policy(cfg, v["best"]["run_id"])
        print(f"== {name}: fine-tuning its best in-budget policy", flush=True)
        runs = fine_tuned(cfg, policy, args.seeds)
        v["fine_tuned"] = {"runs": runs, "mean_test_accuracy": float(np.mean(
            [r["test_accuracy"] for r in runs]))}
        v["best"]["schemes"] = sorted({u.scheme for u in policy.units.values() if u.ratio > 0})
    ranked = sorted(variants, key=lambda n: -(variants[n]["best"] or {}).get("accuracy", 0.0))
    result = {"model": "resnet20", "data": "fashion-mnist", "keep": args.keep,
              "tolerance": args.tolerance,
              "trials": args.trials, "seeds": args.seeds, "variants": variants,
              "best_by_proxy": ranked[0], "machine": machine_info()}
    write_result(OUT, result, show={n: {"within_tolerance": v["within_tolerance"],
                                         "best_proxy": (v["best"] or {}).get("accuracy"),
                                         "fine_tuned": v.get("fine_tuned", {}).get(
                                             "mean_test_accuracy")}
                                     for n, v in variants.items()})


if __name__ == "__main__":
    main()
