"""Can the proxy tell finalists apart? Rank correlation between what a search scores its
policies by and their accuracy after fine-tuning (issue 25, Build point 5).

    python benchmarks/proxy_correlation.py [--cell resnet56-flops50] [--policies 30]
    python benchmarks/proxy_correlation.py --report
    python benchmarks/proxy_correlation.py --smoke

The policies are those of one search: the end-to-end benchmark's `prunetune` search of the cell
(`end_to_end.py`: prunetune's defaults on a dense model trained to its plateau; run here if the
end-to-end run has not made it yet). Of its proxy trials, the best `TOP` by proxy score and the
rest evenly spaced by rank, `--policies` in all. Each is scored by:

- `proxy`: the search's own proxy score (BatchNorm re-estimated on `finetune.bn_calibration`
  training images, no fine-tuning; validation accuracy), read back from MLflow;
- `proxy_bn2048`: the same with 2048 calibration images;
- `finalist`: the finalist stage's fidelity (`search.finalists.epochs` of fine-tuning, the
  config's recipe), validation accuracy;
- `fine_tuned` (the truth): the end-to-end recipe (`end_to_end.RECIPE`), test accuracy, seed 0;
  the top policies also under seed 1, which measures the truth's own noise.

Reported: Kendall's tau and Spearman's rho of each score against the truth, over all policies
and over the top ones; and what a finalist stage of each shape would pick (the best k by proxy,
then the best of those by the finalist fidelity) against the best truth. Resumable (finished
pieces in `<work>/proxy_partial.json`). Writes benchmarks/results/proxy_correlation.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import end_to_end as e2e
from _machine import machine_info, write_result
from _pieces import (
    Pieces,
    benchmark_args,
    code_version,
    print_report,
    run_or_resume,
    trial_policy,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "proxy_correlation.json"
TOP = 12  # finalist stages choose among the best few: judge the ranking there too
SCORES = ("proxy", "proxy_bn2048", "finalist")


def proxy_trials(cfg: Any) -> list[dict[str, Any]]:
    """The search's finished proxy trials, best proxy score first, with their policies."""
    from mlflow.tracking import MlflowClient

    from prunetune.orchestrator.results import search_trials

    parent, _ = run_or_resume(cfg)
    rows = [t for t in search_trials(MlflowClient(cfg.tracking_uri()), parent)
            if t.stage == "proxy" and t.status == "finished" and "accuracy" in t.metrics]
    rows.sort(key=lambda t: -t.metrics["accuracy"])
    return [{"trial": t.name, "proxy": t.metrics["accuracy"],
             "policy": trial_policy(cfg, t.run_id).to_dict()} for t in rows]


def chosen(trials: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The best TOP by proxy score, then the rest evenly spaced by rank: n in all."""
    top, rest = trials[:TOP], trials[TOP:]
    k = max(0, min(n - len(top), len(rest)))
    picks = np.linspace(0, len(rest) - 1, k).round().astype(int) if k else []
    return top + [rest[i] for i in sorted(set(int(i) for i in picks))]


def scored(args: argparse.Namespace, cell: Any, trial: dict[str, Any], rank: int
           ) -> dict[str, Any]:
    """One policy under every score (the proxy's own comes from the search)."""
    from prunetune.search_spaces import Policy
    from prunetune.trainers import prune_and_evaluate

    policy, ft = Policy.from_dict(trial["policy"]), cell.cfg.finetune
    calib = ft.model_copy(update={"epochs": 0, "bn_calibration": 256 if args.smoke else 2048})
    bn = prune_and_evaluate(cell.dense.model, policy, cell.data, calib, seed=0)
    fin_cfg = ft.model_copy(update={"epochs": cell.cfg.search.finalists.epochs})
    fin = prune_and_evaluate(cell.dense.model, policy, cell.data, fin_cfg, seed=0,
                             progress=True, desc=f"finalist fidelity #{rank}")
    truth = [e2e.fine_tuned(args, cell, trial, seed) for seed in
             ((0, 1) if rank < TOP and not args.smoke else (0,))]
    return {"trial": trial["trial"], "rank": rank, "proxy": trial["proxy"],
            "proxy_bn2048": bn.scores["val"].accuracy, "finalist": fin.scores["val"].accuracy,
            "fine_tuned": truth[0]["test_accuracy"],
            "fine_tuned_seeds": [t["test_accuracy"] for t in truth],
            "flops_ratio": truth[0].get("flops_ratio")}


def correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    truth = [r["fine_tuned"] for r in rows]
    out = {}
    for s in SCORES:
        x = [r[s] for r in rows]
        tau, rho = stats.kendalltau(x, truth), stats.spearmanr(x, truth)
        out[s] = {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
                  "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue),
                  "n": len(rows)}
    return out


def finalist_stages(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What "best k by proxy, then the best of those by the finalist fidelity" picks, for each
    k, against the best truth among the scored policies."""
    best = max(r["fine_tuned"] for r in rows)
    by_proxy = sorted(rows, key=lambda r: -r["proxy"])
    out = {}
    for k in (1, 2, 4, 8, TOP):
        pick = max(by_proxy[:k], key=lambda r: r["finalist"])
        out[str(k)] = {"picked": pick["trial"], "fine_tuned": pick["fine_tuned"],
                       "regret": best - pick["fine_tuned"]}
    return out


def truth_noise(rows: list[dict[str, Any]]) -> float | None:
    """Standard deviation of a policy's truth between two seeds (the top policies')."""
    pairs = [r["fine_tuned_seeds"] for r in rows if len(r["fine_tuned_seeds"]) == 2]
    return float(np.std([a - b for a, b in pairs], ddof=1) / np.sqrt(2)) if len(pairs) > 1 \
        else None


def report(result: dict[str, Any]) -> str:
    lines = ["| score | Kendall tau (all) | Spearman (all) | Kendall tau (top) | "
             "Spearman (top) |", "|---|---|---|---|---|"]
    for s in SCORES:
        a, t = result["all"][s], result["top"][s]
        lines.append(f"| {s} | {a['kendall_tau']:.2f} | {a['spearman_rho']:.2f} | "
                     f"{t['kendall_tau']:.2f} | {t['spearman_rho']:.2f} |")
    lines += ["", "| finalists (best k by proxy, then by finalist fidelity) | picked truth | "
              "regret |", "|---|---|---|"]
    for k, f in result["finalist_stages"].items():
        lines.append(f"| k = {k} | {f['fine_tuned']:.4f} | {f['regret']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def own(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cell", default="resnet56-flops50", choices=e2e.CELLS)
        parser.add_argument("--policies", type=int, default=30)

    args = benchmark_args(__doc__, argv, e2e.default_cache_dir() / "end_to_end", own)
    if args.report:
        return print_report(OUT, report)
    if args.smoke:
        args.policies = 4
    torch.set_num_threads(e2e.RECIPE["threads"])
    cell = e2e.Cell(args, args.cell)
    cfg = e2e.cell_config(args, args.cell, "prunetune")
    pieces = Pieces(args.work / "proxy_partial.json", {"cell": args.cell, "smoke": args.smoke,
                                                       "recipe": e2e.RECIPE})
    trials = pieces.get(f"trials/{cfg.name}", lambda: {"rows": proxy_trials(cfg)})["rows"]
    rows = [pieces.get(f"scored/{t['trial']}", lambda t=t, i=i: scored(args, cell, t, i))
            for i, t in enumerate(chosen(trials, args.policies))]
    top = [r for r in rows if r["rank"] < TOP]
    result = {"cell": args.cell, "search": cfg.name, "proxy_trials": len(trials),
              "scored": len(rows), "all": correlations(rows),
              "top": correlations(top) if len(top) > 2 else {},
              "finalist_stages": finalist_stages(rows), "truth_seed_sd": truth_noise(rows),
              "recipe": e2e.RECIPE, "finalists": cfg.search.finalists.model_dump(),
              "rows": rows, "machine": machine_info(), "code": code_version()}
    write_result(args.work / "proxy_correlation.json" if args.smoke else OUT, result,
                 show={k: result[k] for k in ("all", "top", "finalist_stages")})
    return result


if __name__ == "__main__":
    main()
