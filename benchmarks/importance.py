"""Which channels to remove (issue 25, Build point 3): does a within-layer importance criterion
other than the default (`magnitude`, group L2 norm) give better pruned models, and does the
best criterion change from policy to policy (what a per-group searched dimension would need)?

    python benchmarks/importance.py [--config examples/e2e-resnet56.yaml] [--policies 8]
    python benchmarks/importance.py --report
    python benchmarks/importance.py --smoke       # plumbing: ResNet-20, tiny data

The policies are those `proxy_candidates.py` draws (the free baselines at the config's budget
and random points of a one-dimension-per-unit space filled onto the budget), from the config's
dense model trained to its plateau. Each policy keeps its per-unit ratios under every criterion
of `space.importance` (so the same channel counts, FLOPs and latency); only which channels go
changes. Each (policy, criterion) is scored through the product's prune path
(`prune_and_evaluate`, seed 0, BatchNorm re-estimated on `finetune.bn_calibration` images,
validation accuracy on the whole val split) at two fidelities:

- `proxy`: no fine-tuning (what a search's first stage scores);
- `ft100`: 100 steps of the config's fine-tuning recipe (the short fidelity whose ranking
  followed the fine-tuned one best in `proxy_candidates.py`: Spearman 0.81).

Reported per criterion: mean accuracy, the paired difference from `magnitude` over the policies
with its standard error (a difference under 2 standard errors is a tie), and on how many
policies it was the best (a tie counts for the first listed, `magnitude` first); and the per-
policy best criterion's lead over `magnitude` (an optimistic bound of what choosing the
criterion per policy could buy: the maximum of noisy scores). Resumable (finished pieces in
`<work>/importance_partial.json`). Writes benchmarks/results/importance.json.
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
from _pieces import Pieces, benchmark_args, code_version, print_report
from proxy_candidates import Setting, make_policies

from prunetune.search_spaces.graph import IMPORTANCES
from prunetune.trainers import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "importance.json"
DEFAULT = "magnitude"
FIDELITIES = {"proxy": 0, "ft100": 100}  # fine-tuning steps before scoring
# --smoke: a small CIFAR-style ResNet on a little data (plumbing only)
RESNET_SMOKE = {"model.name": "resnet20", "pretrain.epochs": 1, "pretrain.warmup_epochs": 0.0,
                "data.train_subset": 512, "data.val_subset": 128, "data.test_subset": 128,
                "finetune.bn_calibration": 64}


def score(s: Setting, policy_dict: dict[str, Any], criterion: str, steps: int
          ) -> dict[str, Any]:
    """Validation accuracy of the policy with `criterion` choosing the channels, after
    `steps` fine-tuning steps; the policy's FLOPs ratio (the same under every criterion)."""
    from prunetune.search_spaces import Policy
    from prunetune.trainers import prune_and_evaluate

    policy = Policy.from_dict({**policy_dict, "importance": criterion})
    t0 = time.perf_counter()
    ft = s.finetune(steps / s.steps_per_epoch, bn_calibration=s.cfg.finetune.bn_calibration)
    r = prune_and_evaluate(s.dense, policy, s.data, ft, seed=0)
    return {"accuracy": r.scores["val"].accuracy, "seconds": time.perf_counter() - t0,
            "flops_ratio": r.cost_metrics()["flops_ratio"]}


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per fidelity and criterion: mean accuracy, paired difference from the default with its
    standard error, wins; and the per-policy best criterion's lead over the default."""
    out: dict[str, Any] = {}
    for fid in FIDELITIES:
        have = [r["scores"][fid] for r in rows.values()
                if all(c in r["scores"].get(fid, {}) for c in IMPORTANCES)]
        if len(have) < 2:
            out[fid] = {"policies": len(have)}
            continue
        acc = {c: np.array([h[c]["accuracy"] for h in have]) for c in IMPORTANCES}
        best = [max(IMPORTANCES, key=lambda c, h=h: h[c]["accuracy"]) for h in have]
        lead = np.max(np.stack(list(acc.values())), axis=0) - acc[DEFAULT]
        per: dict[str, Any] = {}
        for c in IMPORTANCES:
            d = acc[c] - acc[DEFAULT]
            se = float(np.std(d, ddof=1) / np.sqrt(len(d)))
            per[c] = {"mean": float(acc[c].mean()), "difference": float(d.mean()),
                      "se": se, "wins": best.count(c),
                      "verdict": "tie" if abs(d.mean()) <= 2 * se else
                      ("better" if d.mean() > 0 else "worse")}
        out[fid] = {"policies": len(have), "criteria": per,
                    "best_per_policy_lead": {"mean": float(lead.mean()),
                                             "se": float(np.std(lead, ddof=1)
                                                         / np.sqrt(len(lead)))}}
    return out


def report(result: dict[str, Any]) -> str:
    lines = []
    for fid, row in result["summary"].items():
        if "criteria" not in row:
            lines.append(f"{fid}: {row['policies']} policies scored so far")
            continue
        lines += [f"\n{fid} ({row['policies']} policies; val accuracy, "
                  f"{result['val_images']} images)",
                  "| criterion | mean | minus magnitude (paired ± SE) | best on | verdict |",
                  "|---|---|---|---|---|"]
        for c, v in row["criteria"].items():
            lines.append(f"| {c} | {v['mean']:.4f} | {v['difference']:+.4f} ± {v['se']:.4f} | "
                         f"{v['wins']} | {v['verdict']} |")
        lead = row["best_per_policy_lead"]
        lines.append(f"per-policy best criterion over magnitude: {lead['mean']:+.4f} ± "
                     f"{lead['se']:.4f} (optimistic: the maximum of noisy scores)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def own(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", default="examples/e2e-resnet56.yaml")
        parser.add_argument("--policies", type=int, default=8)
        parser.add_argument("--threads", type=int, default=1)

    args = benchmark_args(__doc__, argv, default_cache_dir() / "importance", own)
    if args.report:
        return print_report(OUT, report)
    if args.smoke:
        args.policies = 4
    torch.set_num_threads(args.threads)
    s = Setting(args, smoke=RESNET_SMOKE)
    steps = {fid: (max(1, k // 25) if args.smoke else k) for fid, k in FIDELITIES.items()}
    pieces = Pieces(args.work / "importance_partial.json",
                    {"config": args.config, "smoke": args.smoke, "policies": args.policies,
                     "steps": steps, "criteria": list(IMPORTANCES)})
    policies = pieces.get("policies", lambda: make_policies(s, args.policies, seed=0))
    rows: dict[str, Any] = {label: {"policy": p, "scores": {f: {} for f in FIDELITIES}}
                            for label, p in policies.items()}

    def result(complete: bool) -> dict[str, Any]:
        out = {"config": args.config, "model": s.cfg.model.model_dump(),
               "budget": s.cfg.space.budget.model_dump(), "policies": len(rows),
               "val_images": len(s.data.loader("val").dataset), "fine_tune_steps": steps,
               "finetune": s.finetune(0, bn_calibration=s.cfg.finetune.bn_calibration
                                      ).model_dump(),
               "complete": complete, "summary": summary(rows), "rows": rows,
               "machine": machine_info(), "code": code_version()}
        write_result(args.work / "importance.json" if args.smoke else OUT, out,
                     show={"summary": out["summary"]})
        return out

    for fid in FIDELITIES:  # the proxy of every policy first: the cheap half comes early
        for label, row in rows.items():
            fresh = len(pieces.done)
            for c in IMPORTANCES:
                row["scores"][fid][c] = pieces.get(
                    f"score/{label}/{c}/{fid}",
                    lambda c=c, p=row["policy"], k=steps[fid]: score(s, p, c, k))
            if len(pieces.done) > fresh:
                result(False)
    return result(True)


if __name__ == "__main__":
    main()
