"""The end-to-end claim: what a user's proxy-first BO search finds, against uniform pruning.

    python benchmarks/end_to_end.py [--seeds 0 1 2] [--threads 2]

1. `prunetune search examples/proxy-bo.yaml` (`run_search`, the product's path: ResNet-56 on
   Fashion-MNIST, 50% FLOPs, 100 BO proxy trials scored after BatchNorm calibration, then the
   8 best fine-tuned for 2 epochs). An interrupted search is resumed, a finished one reused.
2. `prunetune promote`: the best finalist re-applied to the dense model, fine-tuned as the
   finalist was, scored on the test split, registered.
3. The promoted policy and the uniform-ratio channel policy at the same FLOPs budget (one
   layer group: every unit at the same position of its ratio range, decoded onto the budget),
   each fine-tuned with the finalists' recipe under `--seeds`, scored on the test split.

Target: the searched policy's mean test accuracy beats the uniform one's by more than the
seed-to-seed sample standard deviation (the larger of the two). Writes
benchmarks/results/end_to_end.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.config import PrunetuneConfig, load_config
from prunetune.orchestrator.driver import run_search
from prunetune.orchestrator.registry import promote
from prunetune.orchestrator.results import SearchNotFoundError, find_search, search_trials
from prunetune.search_spaces import Budget, Policy, PruningSpace, analyze
from prunetune.trainers import default_cache_dir, load_data, pretrain_dense, prune_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "proxy-bo.yaml"
OUT = ROOT / "benchmarks" / "results" / "end_to_end.json"
MODEL_NAME = "proxy-bo-resnet56"


def run_or_resume(cfg: PrunetuneConfig) -> float | None:
    """Run the config's search, resume it when interrupted, or reuse it when it finished;
    the wall time it took now (None: reused)."""
    client = MlflowClient(cfg.tracking_uri())
    try:
        status = find_search(client, cfg.tracking.experiment, cfg.name).info.status
    except (SearchNotFoundError, Exception):  # no store yet either
        status = None
    if status == "FINISHED":
        return None
    t0 = time.perf_counter()
    run_search(cfg, resume=status is not None)
    return time.perf_counter() - t0


def searched(cfg: PrunetuneConfig) -> dict[str, Any]:
    """Run the search (or resume / reuse it); its finalists and timing, from MLflow."""
    client = MlflowClient(cfg.tracking_uri())
    wall = run_or_resume(cfg)
    parent = find_search(client, cfg.tracking.experiment, cfg.name)
    trials = search_trials(client, parent)
    rows = [{"trial": t.name, "stage": t.stage, "status": t.status, **t.metrics}
            for t in trials]
    finalists = sorted((r for r in rows if r["stage"] == "finalist"),
                       key=lambda r: -r["accuracy"])
    proxies = [r for r in rows if r["stage"] == "proxy" and r["status"] == "finished"]
    return {"name": cfg.name, "parent_run_id": parent.info.run_id, "wall_s": wall,
            "proxy_trials": len(proxies),
            "best_proxy_accuracy": max(r["accuracy"] for r in proxies),
            "finalists": finalists}


def uniform_policy(dense: torch.nn.Module, example: torch.Tensor, keep: float) -> Policy:
    """Every prunable unit at one position of its ratio range, decoded onto the budget."""
    space = PruningSpace(None, budget=Budget(kind="flops", keep=keep), n_groups=1,
                         analysis=analyze(dense, example))
    return space.decode(np.zeros(1))


def fine_tuned(cfg: PrunetuneConfig, policy: Policy, seeds: list[int]) -> list[dict[str, float]]:
    """The policy fine-tuned with the finalists' recipe under each seed, scored on test."""
    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir)
    data = load_data(cfg.data)
    recipe = cfg.finetune.model_copy(update={"epochs": cfg.search.finalists.epochs})
    out = []
    for seed in seeds:
        t0 = time.perf_counter()
        result = prune_and_evaluate(dense.model, policy, data, recipe, seed=seed,
                                    splits=("test",), progress=True, desc=f"seed {seed}")
        out.append({"seed": seed, "test_accuracy": result.scores["test"].accuracy,
                    **result.cost_metrics(), "wall_s": time.perf_counter() - t0})
        print(f"  seed {seed}: test accuracy {out[-1]['test_accuracy']:.4f}", flush=True)
    return out


def _stats(runs: list[dict[str, float]]) -> dict[str, float]:
    acc = np.array([r["test_accuracy"] for r in runs])
    return {"mean": float(acc.mean()), "std_ddof1": float(acc.std(ddof=1)) if len(acc) > 1
            else 0.0, "flops_ratio": float(runs[0]["flops_ratio"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads while fine-tuning")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "end_to_end",
                        help="the search's workdir (MLflow store, Tune state)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(CONFIG, {"workdir": str(args.work)})
    search = searched(cfg)
    done = promote(cfg.name, MODEL_NAME, tracking_uri=cfg.tracking_uri(),
                   experiment=cfg.tracking.experiment)
    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir)
    example = load_data(cfg.data).example_input(1)
    policy = run_policy(cfg, done.run_id)
    uniform = uniform_policy(dense.model, example, cfg.space.budget.keep)
    print("searched policy, fine-tuned per seed:", flush=True)
    ours = fine_tuned(cfg, policy, args.seeds)
    print("uniform policy, fine-tuned per seed:", flush=True)
    base = fine_tuned(cfg, uniform, args.seeds)
    s, u = _stats(ours), _stats(base)
    margin = max(s["std_ddof1"], u["std_ddof1"])
    result = {
        "config": str(CONFIG.relative_to(ROOT)), "search": search,
        "promoted": {"trial": done.trial_id, "version": done.version, **done.metrics},
        "recipe": {"epochs": cfg.search.finalists.epochs, "lr": cfg.finetune.lr,
                   "seeds": args.seeds},
        "searched": {"runs": ours, **s, "policy": policy.to_dict()},
        "uniform": {"runs": base, **u, "policy": uniform.to_dict(),
                    "ratios": sorted({round(p.ratio, 4) for p in uniform.units.values()})},
        "difference": s["mean"] - u["mean"], "seed_std": margin,
        "target_met": bool(s["mean"] - u["mean"] > margin),
        "machine": machine_info(),
    }
    write_result(OUT, result, show={k: result[k] for k in ("difference", "seed_std",
                                                           "target_met")})


def run_policy(cfg: PrunetuneConfig, run_id: str) -> Policy:
    """The policy a run logged (its `policy.json`): a trial's, or the one a promotion
    registered."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = MlflowClient(cfg.tracking_uri()).download_artifacts(run_id, "policy.json", tmp)
        return Policy.load(path)


if __name__ == "__main__":
    main()
