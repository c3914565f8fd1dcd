"""The search-efficiency benchmark's two side checks (`--suggest-cost`, `--pareto`): what BO's
`suggest` costs at the largest size, and the multi-objective front against uniform pruning.
Both run on a `search_efficiency.Objective` (`obj`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info

from prunetune.files import atomic_write_json
from prunetune.orchestrator.searchers import make_searcher

PARETO_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7)


def suggest_cost_check(obj: Any, trials: int, seed: int, out: Path) -> dict[str, Any]:
    """The searcher's cost at the issue's largest size: plain BO over one ratio and one scheme
    dimension per unit (channel or block: d = 2 x 30 = 60) for `trials` (300) trials of the
    real objective, `suggest` timed as in the main benchmark (wall and process CPU time)."""
    space = obj.space("full", scheme_search=True)
    searcher = make_searcher("bo", space=space, metric="accuracy", mode="max", seed=seed,
                             options={"rollback": False})
    wall, cpu, rewards = [], [], []
    for i in range(trials):
        t0, c0 = time.perf_counter(), time.process_time()
        cfg = searcher.suggest(f"cost-{i}")
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        reward = obj(cfg["policy"])
        searcher.on_trial_complete(f"cost-{i}", {"accuracy": reward, "final": True})
        rewards.append(reward)
        if (i + 1) % 10 == 0:
            print(f"  suggest cost {i + 1}/{trials}: d {cfg['dim']} suggest {wall[-1]:.2f}s "
                  f"best {max(rewards):.4f}", flush=True)

    def stats(xs: list[float]) -> dict[str, float]:
        return {"median": float(np.median(xs)), "p95": float(np.percentile(xs, 95)),
                "max": float(np.max(xs))}

    late = slice(max(0, trials - 100), trials)
    result = {"dim": space.dim, "trials": trials, "seed": seed, "machine": machine_info(),
              "suggest_s": stats(wall), "suggest_cpu_s": stats(cpu),
              "last_100": {"suggest_s": stats(wall[late]), "suggest_cpu_s": stats(cpu[late])},
              "targets": {"median_le_1s": bool(np.median(wall) <= 1.0),
                          "p95_le_5s": bool(np.percentile(wall, 95) <= 5.0)},
              "rewards": rewards, "suggest_s_all": wall, "suggest_cpu_s_all": cpu}
    atomic_write_json(out, result, indent=1)
    return result


def pareto_check(obj: Any, trials: int, seed: int, out: Path, *, rollback: dict[str, Any],
                 groups: int) -> dict[str, Any]:
    """Multi-objective BOCR (accuracy, flops_ratio) without a budget, against uniform ratios.

    At each FLOPs budget b of `PARETO_BUDGETS`, the front's best accuracy among policies with
    FLOPs <= b is compared with the uniform-ratio curve's accuracy at b (linear interpolation
    between the measured uniform policies)."""
    full = obj.space("full", budget=None)
    uniform = []
    for r in np.linspace(0.0, 0.8, 17):  # every unit pruned by the same ratio r
        acc, flops = obj.evaluate(full.decode(np.full(full.dim, r / 0.8)).to_json())
        uniform.append({"ratio": float(r), "accuracy": acc, "flops_ratio": flops})
    searcher = make_searcher("bo", space=obj.space("clustered", budget=None),
                             metric="accuracy", mode="max", seed=seed,
                             options={"objectives": ["accuracy", "flops_ratio"],
                                      "rollback": rollback})
    trials_out, suggest_s = [], []
    for i in range(trials):
        t0 = time.perf_counter()
        cfg = searcher.suggest(f"mo-{i}")
        suggest_s.append(time.perf_counter() - t0)
        acc, flops = obj.evaluate(cfg["policy"])
        searcher.on_trial_complete(f"mo-{i}", {"accuracy": acc, "flops_ratio": flops,
                                               "final": True})
        trials_out.append({"accuracy": acc, "flops_ratio": flops, "dim": cfg["dim"]})
        if (i + 1) % 10 == 0:
            print(f"  pareto {i + 1}/{trials}: front {len(searcher.pareto())} points, "
                  f"suggest {suggest_s[-1]:.2f}s", flush=True)
    front = sorted(searcher.pareto(), key=lambda p: p["flops_ratio"])
    u = sorted(uniform, key=lambda p: p["flops_ratio"])
    uf, ua = [p["flops_ratio"] for p in u], [p["accuracy"] for p in u]
    at = []
    for b in PARETO_BUDGETS:
        ok = [p["accuracy"] for p in front if p["flops_ratio"] <= b]
        ref = float(np.interp(b, uf, ua)) if uf[0] <= b else None
        at.append({"flops_budget": b, "front_accuracy": max(ok) if ok else None,
                   "uniform_accuracy": ref,
                   "dominates": bool(ok and ref is not None and max(ok) > ref)})
    result = {"objective": "accuracy (no fine-tuning) vs flops_ratio, no budget",
              "trials": trials, "seed": seed, "groups": groups, "rollback": rollback,
              "bn_calib": obj.bn_calib,
              "val_subset": obj.val_subset, "uniform": uniform, "front": front,
              "runs": trials_out, "suggest_s": suggest_s, "budgets": at,
              "dominated_budget_points": sum(a["dominates"] for a in at),
              "target_met": sum(a["dominates"] for a in at) >= 3}
    atomic_write_json(out, result, indent=1)
    _plot_pareto(result, out.with_suffix(".png"))
    return result


def _plot_pareto(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    runs = result["runs"]
    ax.scatter([r["flops_ratio"] for r in runs], [r["accuracy"] for r in runs], s=8,
               color="lightgrey", label="BO trials")
    u = sorted(result["uniform"], key=lambda p: p["flops_ratio"])
    ax.plot([p["flops_ratio"] for p in u], [p["accuracy"] for p in u], "s--", ms=3,
            label="uniform ratio")
    f = result["front"]
    ax.step([p["flops_ratio"] for p in f], [p["accuracy"] for p in f], "o-", where="post",
            ms=4, label="BO Pareto front")
    for b in result["budgets"]:
        ax.axvline(b["flops_budget"], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("FLOPs / dense FLOPs")
    ax.set_ylabel("validation accuracy (no fine-tuning)")
    ax.set_title("multi-objective BOCR vs uniform-ratio pruning", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
