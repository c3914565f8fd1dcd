"""The search-efficiency benchmark's yardsticks: best so far, trials to reach a reference's
best (paired by seed), final best with its standard error, paired comparisons, transfer
speed-ups, and the best-so-far plot. Pure functions of the runs, so `--report` recomputes them
from the results file alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np


def best_so_far(rewards: list[float]) -> np.ndarray:
    return np.maximum.accumulate(np.asarray(rewards, dtype=float))


def first_reach(curve: np.ndarray, target: float) -> int | None:
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
    reach = [first_reach(best_so_far(seeds[s]["rewards"][:trials]), random_best[s])
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
    # "random_default": random search as `searcher: random` runs it (its own defaults, budget
    # fill included), the choice a user makes instead of `bo`.
    for name, other in (("bo_default_vs_bo_rollback", "bo-rollback"),
                        ("bo_default_vs_random", ref),
                        ("bo_default_vs_random_default", "random-default")):
        if "bo-default" in by and other in by:
            targets[name] = compare_paired(by["bo-default"], by[other], trials)
            if default_trials and default_trials < trials and other != "bo-rollback":
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
        return first_reach(curve, target) or trials

    seeds = sorted(set(plain) & set(transfer))
    if not seeds:
        return {"seeds": [], "speedup": None}
    curves = {name: {seed: best_so_far(runs[seed]["rewards"][:trials]) for seed in seeds}
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
        curves = [best_so_far(r["rewards"][:trials]) for r in runs
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
    _dress(ax, objective, "trial", " (mean; min-max band for the solid lines)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)




# ------------------------------------------------------------------------------------------
# Side by side with other tools (benchmarks/peers.py): runs whose trials may have no result
# (a policy over the budget: reward None), and a tool with one result for every seed (FastNAS:
# seed None).

PEER_CHECKPOINTS = (25, 50, 100, 200)


def _dress(ax: Any, objective: dict[str, Any], xlabel: str, title_tail: str) -> None:
    """The dense model's line, the axis labels, the objective as the title, the legend."""
    ax.axhline(objective["dense_val_accuracy"], color="black", lw=0.8, ls="--",
               label="dense model")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best validation accuracy so far (no fine-tuning)")
    ax.set_title(f"{objective['model']} on {objective['dataset']}, channel pruning at "
                 f"{objective['budget']['keep']:.0%} FLOPs{title_tail}",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def gap_curve(rewards: list[float | None]) -> np.ndarray:
    """Best so far, a trial without a result counting as -inf."""
    return best_so_far([-np.inf if r is None else r for r in rewards])


def single_result_run(method: str, evaluations: int, reward: float,
                      violation: bool) -> dict[str, Any]:
    """A tool with one result for every seed (FastNAS), as a run: no result before its last
    evaluation; a result over the budget counts as a violation but stays its result (the
    tool met the budget by its own count)."""
    return {"method": method, "seed": None, "rewards": [None] * (evaluations - 1) + [reward],
            "violations": int(violation)}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _peer_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [_finite(gap_curve(r["rewards"])[-1]) for r in runs]
    have = [f for f in finals if f is not None]
    mean, _, se = _mean_se(have) if have else (None, None, None)
    best_at = {}
    for n in PEER_CHECKPOINTS:
        ok = [float(a) for a in (gap_curve(r["rewards"])[:n][-1] for r in runs)
              if np.isfinite(a)]
        m, _, e = _mean_se(ok) if ok else (None, None, None)
        # over the seeds with a result by then (FastNAS has none before its last call)
        best_at[str(n)] = {"mean": m, "se": e, "seeds_with_result": len(ok)}
    violations = sum(r.get("violations", sum(x is None for x in r["rewards"])) for r in runs)
    return {"seeds": [r["seed"] for r in runs], "n_seeds": len(runs),
            "evaluations": max(len(r["rewards"]) for r in runs),
            "final_best": finals, "final_best_mean": mean, "final_best_se": se,
            "best_at": best_at, "budget_violations": violations}


def _peer_reach(runs: list[dict[str, Any]], peer: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluations each run needs to reach the peer's final best of the same seed (or the
    peer's one result, when it has no seeds), and their median over seeds."""
    targets = {r["seed"]: float(gap_curve(r["rewards"])[-1]) for r in peer}
    if None in targets:  # a peer without seeds: its one result is every seed's target
        pairs = [(r, targets[None]) for r in runs]
    elif len(runs) == 1 and runs[0]["seed"] is None:  # a run without seeds: every peer seed
        pairs = [({**runs[0], "seed": s}, t) for s, t in sorted(targets.items())]
    else:
        pairs = [(r, targets[r["seed"]]) for r in runs if r["seed"] in targets]
    per_seed = []
    for r, target in sorted(pairs, key=lambda p: p[0]["seed"] or 0):
        if not np.isfinite(target):
            continue
        per_seed.append({"seed": r["seed"], "target": target,
                         "evaluations": first_reach(gap_curve(r["rewards"]), target)})
    return {"per_seed": per_seed,
            "median": _median_reach([p["evaluations"] for p in per_seed]),
            "reached": f"{sum(p['evaluations'] is not None for p in per_seed)}/{len(per_seed)}"}


def peer_summary(runs: list[dict[str, Any]], peers: list[str],
                 reference: str = "bo-default") -> dict[str, Any]:
    """Per method: final best (mean, standard error), best so far at `PEER_CHECKPOINTS`, budget
    violations; per method and peer: evaluations to reach the peer's final best (paired by
    seed, median); per peer the target: `reference` reaches the peer's final best within half
    the peer's evaluations (median over seeds) and ends at or above it (mean over seeds)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    out: dict[str, Any] = {"reference": reference, "methods": {}, "reach": {}, "targets": {}}
    for method, rs in by.items():
        out["methods"][method] = _peer_row(sorted(rs, key=lambda r: r["seed"] or 0))
    present = [p for p in peers if p in by]
    for method in by:  # a peer against itself: the evaluations it took to its own best
        out["reach"][method] = {p: _peer_reach(by[method], by[p]) for p in present}
    if reference in by:
        for p in present:
            out["targets"][p] = _peer_target(by, out, p, reference)
    return out


def _peer_target(by: dict[str, list], out: dict[str, Any], peer: str,
                 reference: str) -> dict[str, Any]:
    ref, row = out["methods"][reference], out["methods"][peer]
    reach = out["reach"][reference][peer]
    half = row["evaluations"] / 2
    faster = reach["median"] is not None and reach["median"] <= half
    res = {"peer_evaluations": row["evaluations"], "half": half,
           "median_evaluations_to_peer_best": reach["median"], "reaches_in_half": faster,
           "final_mean": ref["final_best_mean"], "peer_final_mean": row["final_best_mean"]}
    if by[peer][0]["seed"] is None:  # one result for every seed
        higher = (ref["final_best_mean"] is not None and row["final_best_mean"] is not None
                  and ref["final_best_mean"] >= row["final_best_mean"])
    else:  # on the seeds both ran, paired, as the search-efficiency summary compares
        def runs_of(m: str) -> dict[int, dict]:
            return {r["seed"]: {**r, "rewards": list(gap_curve(r["rewards"]))} for r in by[m]}

        n = min(len(r["rewards"]) for r in by[peer] + by[reference])
        res["paired_final"] = paired = compare_paired(runs_of(reference), runs_of(peer), n)
        higher = bool(paired["seeds"]) and paired["difference_mean"] >= 0
    return {**res, "ends_at_or_above": bool(higher), "met": bool(faster and higher)}


def _fmt3(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def peer_table(summary: dict[str, Any], order: list[str], peers: list[str]) -> str:
    """`peer_summary` as a markdown table: one row per method, in `order`."""
    peers = [p for p in peers if p in summary["methods"]]
    head = ["method", "seeds", "evaluations", "final best (mean ± SE)",
            *[f"best at {n}" for n in (25, 50, 100, 200)],
            *[f"evals to {p}'s best (median)" for p in peers], "budget violations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in (m for m in order if m in summary["methods"]):
        row = summary["methods"][m]
        reach = summary["reach"].get(m, {})
        cells = [m, str(row["n_seeds"]), str(row["evaluations"]),
                 f"{_fmt3(row['final_best_mean'])} ± {_fmt3(row['final_best_se'])}",
                 *[_fmt3(row["best_at"][str(n)]["mean"]) for n in (25, 50, 100, 200)],
                 *[("-" if p not in reach else
                    f"{_fmt3(reach[p]['median'], 0) if reach[p]['median'] is not None else 'never'}"
                    f" ({reach[p]['reached']})") for p in peers],
                 str(row["budget_violations"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_peers(runs: list[dict[str, Any]], objective: dict[str, Any], path: Path,
               order: list[str]) -> None:
    """Best so far against evaluations, mean over seeds from where every seed has a result;
    a tool with one result (FastNAS) as a point at its evaluation count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    colours = plt.get_cmap("tab10").colors
    for i, method in enumerate(m for m in order if any(r["method"] == m for r in runs)):
        rs = [r for r in runs if r["method"] == method]
        colour = colours[i % 10]
        if len(rs) == 1 and rs[0]["seed"] is None:
            n, acc = len(rs[0]["rewards"]), rs[0]["rewards"][-1]
            if acc is not None:
                ax.plot([n], [acc], "*", ms=12, color=colour, label=f"{method} (1 run)")
            continue
        n = min(len(r["rewards"]) for r in rs)
        c = np.vstack([gap_curve(r["rewards"][:n]) for r in rs])
        ok = np.isfinite(c).all(0)
        x = np.arange(1, n + 1)
        ax.plot(x[ok], c[:, ok].mean(0), color=colour, label=f"{method} ({len(rs)} seeds)")
    _dress(ax, objective, "evaluations", ": prunetune, Optuna (Ray Tune), FastNAS")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
