"""The search-efficiency benchmark's yardsticks: best so far, trials to reach a reference's
best (paired by seed), final best with its standard error, paired comparisons, transfer
speed-ups, and the best-so-far plot. Pure functions of the runs, so `--report` recomputes them
from the results file alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np


def _best_so_far(rewards: list[float]) -> np.ndarray:
    return np.maximum.accumulate(np.asarray(rewards, dtype=float))


def _first_reach(curve: np.ndarray, target: float) -> int | None:
    """The trial (1-based) at which a best-so-far curve first reaches `target`, or None."""
    hit = np.nonzero(curve >= target)[0]
    return int(hit[0]) + 1 if len(hit) else None


def _median_reach(reach: list[int | None]) -> float | None:
    if not reach:
        return None
    med = float(np.median([np.inf if t is None else t for t in reach]))
    return None if np.isinf(med) else med


def _mean_se(xs: list[float]) -> tuple[float, float, float]:
    """(mean, sample standard deviation (ddof=1), standard error of the mean); the spread is 0
    for a single value."""
    a = np.asarray(xs, dtype=float)
    sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return float(a.mean()), sd, sd / float(np.sqrt(len(a)))


# The trial counts the best-so-far is reported at (those beyond a run's length are left out).
CHECKPOINTS = (25, 50, 100, 150, 200)


def reference_method(by: dict[str, dict[int, dict]]) -> str | None:
    """The method others are measured against: plain random search."""
    return next((m for m in ("random", "random-default") if m in by), None)


def summarise(runs: list[dict[str, Any]], trials: int, *,
              default_trials: int | None = None) -> dict[str, Any]:
    """Per method: final best (mean, sample std with ddof=1, standard error), best so far at
    the `CHECKPOINTS`, trials to reach random's best (paired by seed, listed in seed order,
    median), suggest time (median, p95); and the issues' targets where computable.
    `default_trials`: the trial count a config gets, where `bo-default` is compared with
    random search too."""
    by: dict[str, dict[int, dict]] = {}
    for r in runs:
        if len(r["rewards"]) >= trials:
            by.setdefault(r["method"], {})[r["seed"]] = r
    ref = reference_method(by)
    random_best = {s: max(r["rewards"][:trials]) for s, r in by.get(ref, {}).items()}
    out: dict[str, Any] = {"trials": trials, "reference": ref, "methods": {}}
    for method, seeds in by.items():
        out["methods"][method] = _method_summary(seeds, trials, random_best)
    out["targets"] = _targets(by, out["methods"], trials, ref, default_trials)
    for method in by:  # each transfer method against the same agent without transfer
        plain = re.sub(r"-transfer(-budget|-explore)?", "", method)
        if plain != method and plain in by:
            out.setdefault("transfer", {})[method] = transfer_speedup(by[plain], by[method],
                                                                      trials)
    if out.get("transfer"):
        out["targets"]["transfer_episodes_to_99pct_ge_1_5x_fewer"] = {
            m: t["speedup"] is not None and t["speedup"] >= 1.5
            for m, t in out["transfer"].items()}
    return out


def _method_summary(seeds: dict[int, dict], trials: int,
                    random_best: dict[int, float]) -> dict[str, Any]:
    order = sorted(seeds)
    finals = [max(seeds[s]["rewards"][:trials]) for s in order]
    paired = [s for s in order if s in random_best]
    reach = [_first_reach(_best_so_far(seeds[s]["rewards"][:trials]), random_best[s])
             for s in paired]
    times = np.concatenate([np.asarray(seeds[s]["suggest_s"][:trials]) for s in order])
    cpu = np.concatenate([np.asarray(seeds[s].get("suggest_cpu_s", [])[:trials])
                          for s in order])
    reached = [t for t in reach if t is not None]
    mean, sd, se = _mean_se(finals)
    best_at = {}
    for n in (c for c in CHECKPOINTS if c <= trials):
        m, _, e = _mean_se([max(seeds[s]["rewards"][:n]) for s in order])
        best_at[str(n)] = {"mean": m, "se": e}
    return {
        "seeds": order, "final_best": finals, "final_best_mean": mean,
        "final_best_std_ddof1": sd, "final_best_se": se, "best_at": best_at,
        # in the order of `trials_to_random_best_seeds` (the seeds random ran too)
        "trials_to_random_best": reach, "trials_to_random_best_seeds": paired,
        # null when the median seed never reached it
        "trials_to_random_best_median": _median_reach(reach),
        "reached_random_best": f"{len(reached)}/{len(reach)}",
        "suggest_s_median": float(np.median(times)),
        "suggest_s_p95": float(np.percentile(times, 95)),
        "suggest_s_max": float(np.max(times)),
        "suggest_cpu_s_median": float(np.median(cpu)) if len(cpu) else None,
        "suggest_cpu_s_p95": float(np.percentile(cpu, 95)) if len(cpu) else None,
        "max_dim": max(max(seeds[s]["dim"]) for s in order),
        "flops_ratio_median": _median_flops(seeds, order, trials),
    }


def _median_flops(seeds: dict[int, dict], order: list[int], trials: int) -> float | None:
    """The median FLOPs ratio of the policies a method tried (where the run recorded them)."""
    ratios = [f for s in order for f in seeds[s].get("flops_ratio", [])[:trials]]
    return float(np.median(ratios)) if ratios else None


def _targets(by: dict[str, dict[int, dict]], ms: dict[str, Any], trials: int, ref: str | None,
             default_trials: int | None) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    if "bo-rollback" in ms and ref:
        med = ms["bo-rollback"]["trials_to_random_best_median"]
        targets["rollback_reaches_random_best_within_70_median"] = bool(med is not None
                                                                       and med <= 70)
    if "bo-rollback" in ms and "bo-full" in ms:
        targets["rollback_vs_bo_full"] = compare_paired(by["bo-rollback"], by["bo-full"],
                                                        trials)
    for name, other in (("bo_default_vs_bo_rollback", "bo-rollback"),
                        ("bo_default_vs_random", ref)):
        if "bo-default" in by and other in by:
            targets[name] = compare_paired(by["bo-default"], by[other], trials)
            if default_trials and default_trials < trials and other == ref:
                targets[f"{name}_at_default_trials"] = {
                    "trials": default_trials,
                    **compare_paired(by["bo-default"], by[other], default_trials)}
    bo = [m for m in ms if m.startswith("bo-")]
    if bo:
        times = np.concatenate([np.asarray(r["suggest_s"][:trials]) for m in bo
                                for r in by[m].values()])
        targets["bo_suggest_s_median"] = float(np.median(times))
        targets["bo_suggest_s_p95"] = float(np.percentile(times, 95))
        targets["bo_suggest_median_le_1s"] = bool(np.median(times) <= 1.0)
        targets["bo_suggest_p95_le_5s"] = bool(np.percentile(times, 95) <= 5.0)
        cpu = np.concatenate([np.asarray(r.get("suggest_cpu_s", [])[:trials]) for m in bo
                              for r in by[m].values()])
        if len(cpu):
            targets["bo_suggest_cpu_s_median"] = float(np.median(cpu))
            targets["bo_suggest_cpu_s_p95"] = float(np.percentile(cpu, 95))
    return targets


def compare_paired(a: dict[int, dict], b: dict[int, dict], trials: int) -> dict[str, Any]:
    """Final best of method a minus method b, paired by seed: the mean difference, its
    standard error, and the verdict "higher" / "lower", or "not distinguishable" when the
    difference lies within one standard error of zero."""
    seeds = sorted(set(a) & set(b))
    diffs = [max(a[s]["rewards"][:trials]) - max(b[s]["rewards"][:trials]) for s in seeds]
    if not diffs:
        return {"seeds": [], "verdict": None}
    mean, _, se = _mean_se(diffs)
    verdict = ("not distinguishable" if abs(mean) <= se
               else "higher" if mean > 0 else "lower")
    return {"seeds": seeds, "difference_mean": mean, "difference_se": se, "verdict": verdict}


def transfer_speedup(plain: dict[int, dict], transfer: dict[int, dict],
                     trials: int) -> dict[str, Any]:
    """Episodes to reach 99% of plain RL's best reward (its own, same seed), without and with
    transfer; a run that never reaches it counts `trials`. Speedup: ratio of the means. This
    is the yardstick the target is judged on, the strictest one: a transferred search that
    settles below the plain search's best seed never reaches it.

    Two looser readings of "episodes to 99% of the best reward" are reported beside it:
    `mean_curve` (the seed-mean best-so-far curves, against 99% of plain RL's mean final best)
    and `own_best` (each run against 99% of its own final best; this one also rewards a
    search that stops improving early)."""
    def reach(curve: np.ndarray, target: float) -> int:
        return _first_reach(curve, target) or trials

    seeds = sorted(set(plain) & set(transfer))
    if not seeds:
        return {"seeds": [], "speedup": None}
    curves = {name: {seed: _best_so_far(runs[seed]["rewards"][:trials]) for seed in seeds}
              for name, runs in (("rl", plain), ("transfer", transfer))}
    rows = []
    for seed in seeds:
        target = 0.99 * curves["rl"][seed][-1]
        rows.append({"seed": seed, "target": float(target),
                     "rl": reach(curves["rl"][seed], target),
                     "transfer": reach(curves["transfer"][seed], target)})
    rl, tr = np.mean([r["rl"] for r in rows]), np.mean([r["transfer"] for r in rows])
    mean = {name: np.mean([c[seed] for seed in seeds], axis=0) for name, c in curves.items()}
    target = 0.99 * mean["rl"][-1]
    own = {name: float(np.mean([reach(c[seed], 0.99 * c[seed][-1]) for seed in seeds]))
           for name, c in curves.items()}
    return {"seeds": rows, "rl_mean": float(rl), "transfer_mean": float(tr),
            "speedup": float(rl / tr),
            "mean_curve": {"target": float(target), "rl": reach(mean["rl"], target),
                           "transfer": reach(mean["transfer"], target),
                           "speedup": reach(mean["rl"], target)
                           / reach(mean["transfer"], target)},
            "own_best": {**own, "speedup": own["rl"] / own["transfer"]},
            "final_best_mean": {name: float(mean[name][-1]) for name in mean}}


def plot(runs: list[dict[str, Any]], trials: int, objective: dict[str, Any], path: Path,
         methods: list[str], main: set[str]) -> None:
    """Best so far, mean over seeds, per method in `methods` order; the `main` ones solid
    with a min-max band, the others (earlier schedules and variants, kept) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5.2))
    colours = plt.get_cmap("tab20").colors
    for i, method in enumerate(methods):
        curves = [_best_so_far(r["rewards"][:trials]) for r in runs
                  if r["method"] == method and len(r["rewards"]) >= trials]
        if not curves:
            continue
        c = np.vstack(curves)
        x = np.arange(1, trials + 1)
        colour = colours[(2 * i) % 20 + (2 * i) // 20 % 2]
        ax.plot(x, c.mean(0), color=colour, ls="-" if method in main else "--",
                label=f"{method} ({len(curves)} seeds)")
        if method in main:
            ax.fill_between(x, c.min(0), c.max(0), color=colour, alpha=0.10)
    if trials >= 70:  # the target: reach random's 200-trial best within 70 trials
        ax.axvline(70, color="grey", lw=0.8, ls=":")
    ax.axhline(objective["dense_val_accuracy"], color="black", lw=0.8, ls="--",
               label="dense model")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy so far (no fine-tuning)")
    ax.set_title(f"{objective['model']} on {objective['dataset']}, channel pruning at "
                 f"{objective['budget']['keep']:.0%} FLOPs (mean; min-max band for the solid "
                 "lines)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


