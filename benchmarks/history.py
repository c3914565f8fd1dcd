"""Learning from earlier searches (issue 27, Build point 4): does `search.warm_start` make a
second search reach a from-scratch search's best in fewer trials, and does a warm start from an
unrelated search do no harm?

    python benchmarks/history.py [--seeds 0 1 2 3 4] [--searchers bo rl] [--trials 100]
    python benchmarks/history.py --report
    python benchmarks/history.py --smoke            # plumbing: small models on digits, minutes

Every search runs through the product's own path (`run_search`: Ray Tune trials, the MLflow
store, the searcher's defaults), one stage (`search.finalists.count: 0`, the first stage's
proxy score is what is compared), one trial at a time on one core. The target problem is
`examples/e2e-resnet56.yaml`'s dense model (trained to its plateau) at 40% of its FLOPs, the
reward on 3000 validation images. Per searcher and seed, these searches share one store:

- `scratch`: the target from scratch;
- `budget`: the target warm-started from `source-budget`, the same model at 50% FLOPs;
- `depth`: the target warm-started from `source-depth`, a ResNet-20 trained the same way (to
  its plateau on the same data), at 40%: another depth of the same family;
- `unrelated`: the target warm-started from `source-unrelated`, a ResNet-56 on scikit-learn's
  digits at 50%: the same unit names, another dataset (the no-harm check).

Reported per searcher and scenario, over seeds: the trials a warm search takes to reach the
from-scratch `bo` search's best over all its trials (the issue's yardstick, for `bo` and `rl`
alike) as a share of the trial count (target: at most 0.4), the same against the same
searcher's scratch search, and the paired difference of final bests against that scratch
search with its standard error. Resumable: finished searches are found in the store by name
and reused, an interrupted one resumes. Writes benchmarks/results/history.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _efficiency_report import best_so_far, first_reach
from _machine import keep_dense_model, machine_info, write_result
from _pieces import benchmark_args, code_version, print_report, run_or_resume

from prunetune.trainers import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "history.json"
TARGET_KEEP, SOURCE_KEEP = 0.4, 0.5
RATIO_TARGET = 0.4  # the issue's: a warm search reaches scratch's best in <= 0.4x the trials
VAL_IMAGES = 3000  # the converged search-efficiency objectives' reward (a SE near 0.6 points)
# scenario -> its source search (None: from scratch)
SCENARIOS = {"scratch": None, "budget": "source-budget", "depth": "source-depth",
             "unrelated": "source-unrelated"}


class Problems:
    """The configs of every search: the target problem and the three sources."""

    def __init__(self, args: argparse.Namespace) -> None:
        from prunetune.orchestrator.config import load_config

        self.args = args
        if args.smoke:  # ResNet-32 on digits; ResNet-20 the other depth; Fashion-MNIST unrelated
            self.base = load_config(ROOT / "examples/digits-smoke.yaml",
                                    {"model.name": "resnet32", "pretrain.epochs": 2})
            self.depth_model, self.val = "resnet20", None
            self.unrelated = {"data": {"name": "fashion-mnist", "train_subset": 512,
                                       "val_subset": 128, "test_subset": 128, "batch_size": 64}}
        else:
            self.base = load_config(ROOT / "examples/e2e-resnet56.yaml")
            self.depth_model, self.val = "resnet20", VAL_IMAGES
            self.unrelated = {"data": {"name": "digits", "batch_size": 64},
                              "pretrain": {"epochs": 20, "lr": 0.05, "warmup_epochs": 0.3}}

        self._checkpoints: dict[str, str] = {}

    def checkpoint(self, model: str | None = None, **sections: dict[str, Any]) -> str:
        """The dense model's checkpoint (pretrained once, cached): the base config's model (or
        `model`), data and recipe, with `sections` in place of the base's."""
        from prunetune.trainers import pretrain_dense

        key = json.dumps([model, sections], sort_keys=True)
        if key not in self._checkpoints:
            cfg = self.base.model_copy(deep=True)
            if model:
                cfg.model.name = model
            for field, value in sections.items():
                setattr(cfg, field, type(getattr(cfg, field)).model_validate(value))
            path = pretrain_dense(cfg.model, cfg.data, cfg.pretrain,
                                  cache_dir=cfg.cache_dir).checkpoint_path
            if not self.args.smoke:  # the sources' dense models: committed, as the target's
                keep_dense_model(path)
            self._checkpoints[key] = str(path)
        return self._checkpoints[key]

    def config(self, name: str, searcher: str, seed: int, warm_start: str | None) -> Any:
        """The config of search `name` (a scenario or a source) for `searcher` and `seed`."""
        from prunetune.orchestrator.config import PrunetuneConfig

        a = self.args
        keep = SOURCE_KEEP if name in ("source-budget", "source-unrelated") else TARGET_KEEP
        raw = self.base.model_dump(exclude_none=True)
        raw.update(name=f"history-{searcher}-s{seed}-{name}", workdir=str(a.work), seed=seed)
        raw["space"]["budget"] = {"kind": "flops", "keep": keep}
        raw["search"] = {"searcher": searcher, "trials": a.trials, "max_concurrent": 1,
                         "finalists": {"count": 0},
                         "warm_start": [f"history-{searcher}-s{seed}-{warm_start}"]
                         if warm_start else []}
        raw["ray"] = {"num_cpus": 1}
        raw["finetune"] = {**raw.get("finetune", {}), "epochs": 0}
        if name == "source-unrelated":
            raw.update(self.unrelated)
            raw["model"]["checkpoint"] = self.checkpoint(**self.unrelated)
        else:
            if self.val:
                raw["data"]["val_subset"] = self.val
            model = self.depth_model if name == "source-depth" else None
            raw["model"]["checkpoint"] = self.checkpoint(model)
            if model:
                raw["model"]["name"] = model
        return PrunetuneConfig.model_validate(raw)


def trial_rewards(cfg: Any) -> list[float]:
    """The search's finished first-stage trials' accuracies, in the order they were
    suggested (by trial number)."""
    from mlflow.tracking import MlflowClient

    from prunetune.orchestrator.results import search_trials

    parent, _ = run_or_resume(cfg)
    rows = [t for t in search_trials(MlflowClient(cfg.tracking_uri()), parent)
            if t.status == "finished" and "accuracy" in t.metrics]
    rows.sort(key=lambda t: int(re.findall(r"\d+", t.name)[-1]))
    return [t.metrics["accuracy"] for t in rows]


def trials_to_reach(rewards: list[float], target: float) -> int | None:
    """The first trial (1-based) whose running best reaches `target`; None if none does."""
    return first_reach(best_so_far(rewards), target - 1e-12)


# -- the report --------------------------------------------------------------------------------

def summary(rows: dict[str, dict[str, Any]], trials: int) -> dict[str, Any]:
    """Per searcher and warm scenario, over the seeds with that search and both scratch
    searches finished: trials to reach the bo scratch best and the own scratch best (as a
    share of `trials`; a search that never reaches it counts as more than all its trials,
    `None`), and the final best's paired difference from the own scratch search."""
    out: dict[str, Any] = {}
    for key, row in rows.items():
        searcher, scenario = key.split("/")
        if scenario == "scratch":
            continue
        reach_bo, reach_own, diffs = [], [], []
        for seed, rewards in row.items():
            bo, own = (rows.get(f"{s}/scratch", {}).get(seed) for s in ("bo", searcher))
            if bo is None or own is None:
                continue
            for reach, scratch in ((reach_bo, bo), (reach_own, own)):
                n = trials_to_reach(rewards, max(scratch))
                reach.append(None if n is None else n / trials)
            diffs.append(max(rewards) - max(own))
        if not diffs:
            continue
        d = np.array(diffs)
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out[key] = {"seeds": len(d), "share_to_bo_scratch_best": reach_bo,
                    "share_to_own_scratch_best": reach_own,
                    "met": sum(r is not None and r <= RATIO_TARGET for r in reach_bo),
                    "final_minus_scratch": float(d.mean()), "se": se,
                    "verdict": "tie" if not abs(d.mean()) > 2 * se else
                    ("better" if d.mean() > 0 else "worse")}
    return out


def _shares(values: list[float | None]) -> str:
    return " ".join("never" if v is None else f"{v:.2f}" for v in values)


def report(result: dict[str, Any]) -> str:
    lines = ["| searcher / warm start from | trials to bo-scratch best (share, per seed) | "
             f"<= {RATIO_TARGET} on | to own scratch best | final best minus scratch | "
             "verdict |", "|---|---|---|---|---|---|"]
    for key, v in result["summary"].items():
        lines.append(f"| {key} | {_shares(v['share_to_bo_scratch_best'])} | "
                     f"{v['met']}/{v['seeds']} | {_shares(v['share_to_own_scratch_best'])} | "
                     f"{v['final_minus_scratch']:+.4f} ± {v['se']:.4f} | {v['verdict']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def own(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
        parser.add_argument("--searchers", nargs="+", default=["bo", "rl"],
                            choices=["bo", "rl"])
        parser.add_argument("--trials", type=int, default=100)

    args = benchmark_args(__doc__, argv, default_cache_dir() / "history", own)
    if args.report:
        return print_report(OUT, report)
    if args.smoke:
        args.seeds, args.trials = args.seeds[:1], 5
    problems = Problems(args)
    rows: dict[str, dict[int, list[float]]] = {}

    def result(complete: bool) -> dict[str, Any]:
        out = {"target": {"config": "examples/e2e-resnet56.yaml", "keep": TARGET_KEEP,
                          "val_images": problems.val},
               "sources": {"budget": SOURCE_KEEP, "depth": problems.depth_model,
                           "unrelated": problems.unrelated},
               "trials": args.trials, "seeds": args.seeds, "complete": complete,
               "summary": summary(rows, args.trials),
               "rewards": {k: {str(s): r for s, r in v.items()} for k, v in rows.items()},
               "machine": machine_info(), "code": code_version()}
        write_result(args.work / "history.json" if args.smoke else OUT, out,
                     show={"summary": out["summary"]})
        return out

    # seed-major, bo first: an interrupted run has whole seeds, each with its yardstick
    for seed in args.seeds:
        for searcher in args.searchers:
            for scenario, source in SCENARIOS.items():
                if source is not None:
                    trial_rewards(problems.config(source, searcher, seed, None))
                cfg = problems.config(scenario, searcher, seed, source)
                rows.setdefault(f"{searcher}/{scenario}", {})[seed] = trial_rewards(cfg)
                result(False)
    return result(True)


if __name__ == "__main__":
    main()
