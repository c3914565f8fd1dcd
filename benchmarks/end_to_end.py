"""End to end against what a practitioner gets for free (issue 25): at the same budget, after
the same fine-tuning, is the policy prunetune's default search finds better than the free ones?

    python benchmarks/end_to_end.py [--cells resnet56-flops50 ...] [--seeds 0 1 2]
    python benchmarks/end_to_end.py --report        # the README table of the result file
    python benchmarks/end_to_end.py --smoke         # plumbing: ResNet-20, tiny data, minutes
    python benchmarks/end_to_end.py --transformer [--smoke]   # the ViT cells (issue 29)

Cells: ResNet-56 and MobileNetV2 on Fashion-MNIST (`examples/e2e-*.yaml`: the demo's 12k
training images, 6k validation, the full 10k test split; dense models trained to their plateau,
see `dense_references.py`), each under two budgets: 50% of the dense FLOPs, and 60% of the
dense latency at batch 1 on this CPU (`space.budget.kind: latency`, the search's latency table,
eager PyTorch on one thread). Methods, each a policy at the cell's budget:

- `uniform`, `tp-magnitude`, `tp-taylor`: the free baselines (`search_spaces.baselines`, what
  `prunetune baselines` writes), bisected onto the budget;
- `fastnas`: NVIDIA ModelOpt FastNAS (channel divisor 4, FLOPs constraint; for the latency
  budget, the FLOPs share of the uniform policy there), its kept widths taken as a prunetune
  policy and projected onto the budget by a per-unit space's decode, its slack then given
  back unit by unit (`Cell.onto_budget`: within a channel of the budget, never above; the
  channels kept are chosen by prunetune's magnitude importance);
- `rl`: `run_search` of the cell's config with `search.searcher: rl`, everything else default;
- `prunetune`: `run_search` of the cell's config as it is (no `search` section: the product's
  defaults); its policy is the trial `promote` takes (`registry.choose_trial`).

Every policy is fine-tuned with one recipe (`RECIPE`) under each seed (data order paired across
methods by the seed), scored on the full test split; its val curve per epoch is kept to show
the recipe levelled off. Latency: the dense model and every method's pruned model timed in turn
in one process (`measured_models_ms`, one thread) at batch 1 and 64, in `--timing-rounds`
rounds of fresh models in a new order; speedups are compared round by round. Cost: wall
seconds of obtaining each policy and CPU-minutes (wall x the cores it held).

`--transformer`: the same two budgets on `examples/e2e-vit.yaml` (a small timm ViT trained with
AdamW, no BatchNorm), methods uniform, tp-magnitude, tp-taylor, prunetune and prunetune-flops;
writes benchmarks/results/transformer_end_to_end.json, its work under `transformer_end_to_end`.

Resumable: every finished piece (a policy, a fine-tune, a timing) is kept in
`benchmarks/progress/end_to_end.json` (committed between sessions: a machine may start with an
empty cache); searches live in `<work>` (MLflow store, Tune state), a finished one is reused and
an interrupted one resumed. Writes benchmarks/results/end_to_end.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, restore_dense_models, write_result
from _pieces import PROGRESS, Pieces, code_version, run_or_resume

from prunetune.trainers import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "end_to_end.json"
MODELS = {"resnet56": "examples/e2e-resnet56.yaml", "mobilenetv2": "examples/e2e-mobilenetv2.yaml"}
# issue 29's transformer end to end (`--transformer`): a small timm ViT, its own result file
TRANSFORMERS = {"vit": "examples/e2e-vit.yaml"}
TRANSFORMER_OUT = ROOT / "benchmarks" / "results" / "transformer_end_to_end.json"
BUDGETS = {"flops50": {"kind": "flops", "keep": 0.5}, "latency60": {"kind": "latency", "keep": 0.6},
           "latency80": {"kind": "latency", "keep": 0.8}}
CNN_CELLS = tuple(f"{m}-{b}" for m in MODELS for b in ("flops50", "latency60"))
# The small ViT's batch-1 CPU latency is mostly per-operator overhead: pruning every unit to
# its largest ratio leaves 0.64 of it (the smoke's table), so its latency cell asks for 0.8.
TRANSFORMER_CELLS = tuple(f"{m}-{b}" for m in TRANSFORMERS for b in ("flops50", "latency80"))
CELLS = CNN_CELLS + TRANSFORMER_CELLS
FREE = ("uniform", "tp-magnitude", "tp-taylor", "fastnas")
# `prunetune-flops` (latency cells only): the default search under the FLOPs budget that the
# uniform policy at the latency budget has, timed and fine-tuned beside the latency-budgeted
# one: what a measured-latency budget buys at about the same latency (Build point 4).
METHODS = (*FREE, "rl", "prunetune", "prunetune-flops")
# What the transformer cells compare (the ask): FastNAS has no timm ViT support.
TRANSFORMER_METHODS = ("uniform", "tp-magnitude", "tp-taylor", "prunetune", "prunetune-flops")
# One fine-tuning recipe for every policy: SGD from the pruned dense weights, cosine to zero,
# BatchNorm re-estimated on 512 training images before scoring. Five epochs: the val curves
# kept in the result show whether accuracy had levelled off. A model trained with AdamW (the
# ViT) is fine-tuned with AdamW at its config's `finetune.lr` instead of `lr`.
RECIPE = {"epochs": 5, "lr": 0.01, "schedule": "cosine", "warmup_epochs": 0.0,
          "bn_calibration": 512, "threads": 2}
CORES = os.cpu_count() or 1  # a search's trials and a fine-tune's threads hold every core
FASTNAS_DIVISOR = 4


def cell_config(args: argparse.Namespace, cell: str, method: str,
                flops_keep: float | None = None) -> Any:
    """The cell's config (the model's example file, the cell's budget) as `method` runs it;
    `prunetune-flops` searches under a FLOPs budget of `flops_keep` instead."""
    from prunetune.orchestrator.config import load_config

    model, budget = cell.rsplit("-", 1)
    overrides: dict[str, Any] = {"name": f"e2e-{cell}-{method}", "workdir": str(args.work),
                                 "space.budget": BUDGETS[budget]}
    if method == "rl":
        overrides["search.searcher"] = "rl"
    if method == "prunetune-flops":
        overrides["space.budget"] = {"kind": "flops", "keep": round(flops_keep, 4)}
    if args.smoke:
        if model not in TRANSFORMERS:  # the ViT is small enough as it is
            overrides["model.name"] = "resnet20"
        overrides.update({"pretrain.epochs": 2,
                          "data.train_subset": 1024, "data.val_subset": 128,
                          "data.test_subset": 256, "finetune.bn_calibration": 64,
                          "search.trials": 4,
                          "search.finalists.count": 1, "search.latency_repeats": 5})
    return load_config(ROOT / (MODELS | TRANSFORMERS)[model], overrides)


class Cell:
    """The dense model, data, space and a per-unit ruler of one cell (built once per run)."""

    def __init__(self, args: argparse.Namespace, cell: str) -> None:
        from prunetune.orchestrator.spaces import build_space
        from prunetune.trainers import load_data, pretrain_dense

        self.name, self.cfg = cell, cell_config(args, cell, "prunetune")
        self.data = load_data(self.cfg.data)
        self.dense = pretrain_dense(self.cfg.model, self.cfg.data, self.cfg.pretrain,
                                    cache_dir=self.cfg.cache_dir, data=self.data)
        self.example = self.data.example_input(1)
        self.bn_calibration = 64 if args.smoke else RECIPE["bn_calibration"]
        self.space = build_space(self.cfg, self.dense.model.eval(), self.example, args.work)
        # one group per unit, filling the budget: measures any policy's budget share, and
        # projects a policy onto the budget keeping its per-unit shape
        ruler_cfg = self.cfg.model_copy(deep=True)
        ruler_cfg.space.groups, ruler_cfg.space.budget.fill = None, True
        self.ruler = build_space(ruler_cfg, self.dense.model.eval(), self.example, args.work)

    def share(self, policy: Any) -> dict[str, float]:
        """The policy's analytic FLOPs / params (and latency) shares of the dense model."""
        cost = self.ruler.cost(self.ruler.nearest_point(policy), project=False)
        return {k: float(v) for k, v in cost.items() if k.endswith("_share")}

    def onto_budget(self, policy: Any) -> Any:
        """`policy` at the budget: the ruler's decode scales all ratios together, where units
        of equal width step a channel at once and can leave a few % of the budget unused;
        that slack goes back one unit at a time, most pruned first, each to the least ratio
        that still fits, so the policy ends within a channel of the budget, never above."""
        ruler, kind = self.ruler, f"{self.cfg.space.budget.kind}_share"
        keep = self.cfg.space.budget.keep
        x = np.array(ruler.nearest_point(ruler.decode(ruler.nearest_point(policy))))
        for i in np.argsort(-x[:ruler.k], kind="stable"):
            lo, hi = 0.0, float(x[i])  # fits at hi; bisect for the least position that fits
            for _ in range(30):
                x[i] = (lo + hi) / 2
                if ruler.cost(x, project=False)[kind] <= keep:
                    hi = float(x[i])
                else:
                    lo = float(x[i])
            x[i] = hi
        return ruler.decode(x)


# -- policies -----------------------------------------------------------------------------------

def free_policies(cell: Cell) -> dict[str, Any]:
    """The free baselines at the cell's budget; one that cannot reach it (Torch-Pruning's
    global pruning, which stops short on the ViT's latency) is kept as `unreachable`."""
    from prunetune.errors import BudgetError
    from prunetune.search_spaces.baselines import baseline_policies, taylor_batch

    batch = taylor_batch(cell.data.loader("train"))
    out: dict[str, Any] = {}
    for method in ("uniform", "tp-magnitude", "tp-taylor"):
        t0 = time.perf_counter()
        try:
            [b] = baseline_policies(cell.space, cell.dense.model, cell.example, (method,),
                                    batch=batch)
        except BudgetError as err:
            out[method] = {"unreachable": str(err), "wall_s": time.perf_counter() - t0}
            continue
        out[method] = {"policy": b.policy.to_dict(), "wall_s": b.seconds,
                       "cpu_min": b.seconds * CORES / 60}
    return out


def searched_policy(args: argparse.Namespace, cell: Cell, method: str,
                    flops_keep: float | None = None) -> dict[str, Any]:
    from prunetune.orchestrator.registry import choose_trial

    cfg = cell_config(args, cell.name, method, flops_keep)
    parent, wall = run_or_resume(cfg)
    chosen = choose_trial(cfg.name, tracking_uri=cfg.tracking_uri(),
                          experiment=cfg.tracking.experiment)
    run_wall = (parent.info.end_time - parent.info.start_time) / 1000 \
        if parent.info.end_time else wall
    return {"policy": chosen.policy.to_dict(), "trial": chosen.trial.name,
            "val_accuracy": chosen.trial.metrics.get("accuracy"), "search": cfg.name,
            "searcher": cfg.search.searcher, "trials": cfg.search.trials,
            "finalists": cfg.search.finalists.count, "wall_s": run_wall,
            "cpu_min": (run_wall or 0.0) * CORES / 60}


class _FastNASObjective:
    """What `_peers_fastnas` reads of an objective, for one cell."""

    def __init__(self, cell: Cell, keep: float) -> None:
        from prunetune.search_spaces import Budget

        self.dense, self.example, self.data = cell.dense.model.eval(), cell.example, cell.data
        self.bn_calib, self.analysis = cell.bn_calibration, cell.space.analysis
        self.budget = Budget(kind="flops", keep=keep)

    def evaluate(self, policy_json: str) -> tuple[float, float]:
        return float("nan"), float("nan")  # the e2e fine-tunes it instead


def fastnas_policy(args: argparse.Namespace, cell: Cell, uniform: dict[str, Any]
                   ) -> dict[str, Any]:
    from _peers_fastnas import _fastnas_search

    from prunetune.search_spaces import Policy, UnitPolicy

    keep = (cell.cfg.space.budget.keep if cell.cfg.space.budget.kind == "flops"
            else cell.share(Policy.from_dict(uniform["policy"]))["flops_share"])
    t0 = time.perf_counter()
    found = _fastnas_search(_FastNASObjective(cell, keep), FASTNAS_DIVISOR, args.work / "fastnas",
                            resume_as=f"{cell.name}-keep{keep:.4f}")
    wall = time.perf_counter() - t0
    units = {u.name: u for u in cell.space.analysis.units}
    dense = dict(cell.dense.model.named_modules())
    widths = Policy({u: UnitPolicy("channel", min(1 - k / dense[u].out_channels,
                                                  units[u].max_ratio("channel")))
                     for u, k in found["widths"].items()})
    return {"policy": cell.onto_budget(widths).to_dict(), "wall_s": wall,
            "cpu_min": wall * CORES / 60, "flops_constraint": keep,
            "fastnas_flops_ratio": found["flops_ratio"], "score_calls": found["score_calls"]}


def cell_policies(args: argparse.Namespace, pieces: Pieces, cell: Cell
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """(every method's policy for the cell, with its budget shares and cost; the methods that
    cannot reach the budget, with why)."""
    from prunetune.search_spaces import Policy

    free = pieces.get(f"policies/{cell.name}/free", lambda: free_policies(cell))
    unreachable = {m: v["unreachable"] for m, v in free.items()
                   if "unreachable" in v and m in args.methods}
    out = {m: v for m, v in free.items() if m not in unreachable}
    for method in args.methods:
        if method in ("rl", "prunetune"):
            out[method] = pieces.get(f"policies/{cell.name}/{method}",
                                     lambda m=method: searched_policy(args, cell, m))
        elif method == "fastnas":
            out[method] = pieces.get(f"policies/{cell.name}/fastnas",
                                     lambda: fastnas_policy(args, cell, free["uniform"]))
        elif method == "prunetune-flops" and cell.cfg.space.budget.kind == "latency":
            keep = cell.share(Policy.from_dict(free["uniform"]["policy"]))["flops_share"]
            out[method] = pieces.get(f"policies/{cell.name}/{method}",
                                     lambda m=method, k=keep: searched_policy(args, cell, m, k))

    return {m: {**v, "shares": cell.share(Policy.from_dict(v["policy"]))}
            for m, v in out.items() if m in args.methods}, unreachable


# -- fine-tuning and timing ---------------------------------------------------------------------

def recipe_for(finetune: Any) -> dict[str, Any]:
    """`RECIPE` for a config's `finetune` section: its own lr under AdamW (see `RECIPE`)."""
    return RECIPE | ({"lr": finetune.lr} if finetune.optimizer == "adamw" else {})


def fine_tuned(args: argparse.Namespace, cell: Cell, policy: dict[str, Any], seed: int
               ) -> dict[str, Any]:
    """The policy fine-tuned with `RECIPE` under `seed`, scored on the test split."""
    from prunetune.search_spaces import Policy
    from prunetune.trainers import prune_and_evaluate

    recipe = cell.cfg.finetune.model_copy(update=recipe_for(cell.cfg.finetune) | (
        {"epochs": 1, "bn_calibration": cell.bn_calibration} if args.smoke else {}))
    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()
    result = prune_and_evaluate(cell.dense.model, Policy.from_dict(policy["policy"]), cell.data,
                                recipe, seed=seed, splits=("val", "test"), progress=True,
                                on_epoch_end=lambda e, m: curve.append({"epoch": e, **m}),
                                desc=f"{cell.name} seed {seed}")
    return {"seed": seed, "test_accuracy": result.scores["test"].accuracy,
            "val_accuracy": result.scores["val"].accuracy, "curve": curve,
            **result.cost_metrics(), "wall_s": time.perf_counter() - t0}


def timings(cell: Cell, policies: dict[str, Any], batches: list[int], repeats: int,
            rounds: int) -> dict[str, Any]:
    """Each model's latency per batch size, timed in `rounds` rounds: every round makes fresh
    copies of the dense model and each method's pruned model and times them in turn, in a new
    order, in this process (`measured_models_ms`, one thread). One round alone moved a
    model's speedup by up to 8% between runs; over rounds neither the machine's drift nor one
    allocation's luck falls on one model. `ms`: the median over rounds; `ms_rounds`: every
    round's, for speedups paired by round."""
    from prunetune.kernels import measured_models_ms
    from prunetune.search_spaces import Policy, apply_policy

    names = ["dense", *policies]
    order_rng = random.Random(0)
    inputs = {b: torch.randn(b, *cell.example.shape[1:], generator=torch.Generator().manual_seed(0))
              for b in batches}
    per_round: dict[str, dict[str, list[float]]] = {
        str(b): {n: [] for n in names} for b in batches}
    for _ in range(rounds):
        order = order_rng.sample(names, len(names))
        models = [copy.deepcopy(cell.dense.model).eval() if n == "dense" else apply_policy(
            cell.dense.model, Policy.from_dict(policies[n]["policy"]), cell.example).eval()
            for n in order]
        for batch, x in inputs.items():
            with torch.no_grad():
                ms = measured_models_ms(models, x, device="cpu", repeats=repeats, bursts=8,
                                        threads=1)
            for n, t in zip(order, ms, strict=True):
                per_round[str(batch)][n].append(t)
    return {"ms": {b: {n: statistics.median(v) for n, v in t.items()}
                   for b, t in per_round.items()},
            "ms_rounds": per_round, "rounds": rounds, "load_average": os.getloadavg()}


# -- summary ------------------------------------------------------------------------------------

def mean_se(values: list[float]) -> list[float]:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return [statistics.fmean(values), se]


def paired(runs: dict[str, list[dict[str, Any]]], ours: str, theirs: str) -> dict[str, Any]:
    """`ours` minus `theirs` in test accuracy, seed by seed (same data order): mean, standard
    error, and whether the lead exceeds 2 standard errors (anything less is a tie)."""
    by_seed = {r["seed"]: r["test_accuracy"] for r in runs[theirs]}
    diffs = [r["test_accuracy"] - by_seed[r["seed"]] for r in runs[ours] if r["seed"] in by_seed]
    return _verdict(diffs, theirs, "seeds")


def paired_speedup(timing: dict[str, Any], ours: str, theirs: str, batch: str = "1"
                   ) -> dict[str, Any]:
    """`ours` minus `theirs` in speedup over the dense model, round by round (`timings`)."""
    r = timing.get("ms_rounds", {}).get(batch, {})
    if ours not in r or theirs not in r:
        return {"rounds": 0}
    diffs = [d / a - d / b for d, a, b in zip(r["dense"], r[ours], r[theirs], strict=True)]
    return _verdict(diffs, theirs, "rounds")


def _verdict(diffs: list[float], theirs: str, unit: str) -> dict[str, Any]:
    if len(diffs) < 2:
        return {unit: len(diffs)}
    mean, se = mean_se(diffs)
    return {"against": theirs, unit: len(diffs), "difference": mean, "se": se,
            "verdict": "win" if mean > 2 * se else "loss" if mean < -2 * se else "tie"}


def cell_summary(cell: str, policies: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
                 timing: dict[str, Any] | None) -> dict[str, Any]:
    rows = {}
    for m, p in policies.items():
        acc = [r["test_accuracy"] for r in runs.get(m, [])]
        row = {"test_accuracy": mean_se(acc) if acc else None, "seeds": len(acc),
               "shares": p["shares"], "cost_wall_s": p.get("wall_s"), "cost_cpu_min":
               p.get("cpu_min")}
        if timing:
            row["ms"] = {b: t[m] for b, t in timing["ms"].items()}
            row["speedup"] = {b: t["dense"] / t[m] for b, t in timing["ms"].items()}
        rows[m] = row
    done = [m for m in FREE if rows.get(m, {}).get("test_accuracy")]
    best_free = max(done, key=lambda m: rows[m]["test_accuracy"][0]) if done else None
    out: dict[str, Any] = {"methods": rows, "best_free": best_free}
    for m in ("prunetune", "rl"):
        if best_free and runs.get(m):
            out[f"{m}_vs_best_free"] = paired(runs, m, best_free)
    if runs.get("prunetune") and runs.get("prunetune-flops"):
        out["latency_vs_flops_budget"] = paired(runs, "prunetune", "prunetune-flops")
    if timing and "prunetune" in rows and "-latency" in cell:
        speed = {m: paired_speedup(timing, "prunetune", m) for m in (*FREE, "prunetune-flops")
                 if m in rows}
        out["prunetune_speedup_b1"] = speed  # paired by timing round; "loss": slower
        out["prunetune_no_slower_b1"] = all(v.get("verdict") != "loss"
                                            for m, v in speed.items() if m in FREE)
    return out


def report(result: dict[str, Any]) -> str:
    batches = result.get("settings", {}).get("batches", [1, 64])
    lines = ["| cell | dense test | method | test accuracy (mean ± se) | budget share | "
             f"speedup {' / '.join(f'b{b}' for b in batches)} | cost (CPU-min) |",
             "|---|---|---|---|---|---|---|"]
    for cell, s in result.get("cells", {}).items():
        dense = s.get("dense", {}).get("test_accuracy")
        for m, row in s["methods"].items():
            acc = row["test_accuracy"]
            sp = row.get("speedup", {})
            share = row["shares"].get("latency_share" if "latency" in cell else "flops_share")
            lines.append(
                f"| {cell} | {dense if dense is None else f'{dense:.4f}'} | {m} | "
                + (f"{acc[0]:.4f} ± {acc[1]:.4f} ({row['seeds']})" if acc else "-")
                + f" | {share:.3f} | "
                + (" / ".join(f"{sp[str(b)]:.2f}x" for b in batches) if sp else "-")
                + f" | {row['cost_cpu_min']:.1f} |")
        for m in s.get("unreachable", {}):  # the reason is in the result file
            lines.append(f"| {cell} | | {m} | cannot reach the budget | | | |")
        for key in ("prunetune_vs_best_free", "rl_vs_best_free", "latency_vs_flops_budget"):
            d = s.get(key)
            if d and "difference" in d:
                ours = "rl" if key.startswith("rl") else "prunetune"
                lines.append(f"| {cell} | | **{ours} - {d['against']}** | "
                             f"{d['difference']:+.4f} ± {d['se']:.4f}: {d['verdict']} | | | |")
        for d in s.get("prunetune_speedup_b1", {}).values():
            if "difference" in d:
                lines.append(f"| {cell} | | **prunetune - {d['against']}, speedup b1** | | | "
                             f"{d['difference']:+.3f}x ± {d['se']:.3f} ({d['rounds']} rounds): "
                             f"{d['verdict']} | |")
    return "\n".join(lines)


def dense_reference(cell: Cell) -> dict[str, Any]:
    ref = ROOT / "benchmarks" / "results" / "dense_references.json"
    known = json.loads(ref.read_text())["models"].get(cell.cfg.model.name, {}) \
        if ref.exists() else {}
    keys = ("train_accuracy_clean", "val_accuracy", "test_accuracy", "plateau")
    return {k: known.get(k) for k in keys} if known.get("checkpoint") == str(
        cell.dense.checkpoint_path) else {"test_accuracy": cell.dense.metrics.get("test_accuracy")}


def run_cell(args: argparse.Namespace, pieces: Pieces, name: str) -> dict[str, Any]:
    cell = Cell(args, name)
    policies, unreachable = cell_policies(args, pieces, cell)
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:  # seed-major: every method has a first seed early
        for m in policies:
            runs.setdefault(m, []).append(pieces.get(
                f"finetune/{name}/{m}/s{seed}",
                lambda m=m, seed=seed: fine_tuned(args, cell, policies[m], seed)))
    timing = pieces.get(f"latency/{name}/{','.join(policies)}/rounds{args.timing_rounds}",
                        lambda: timings(cell, policies, args.batches, args.repeats,
                                        args.timing_rounds))
    return {"dense": dense_reference(cell), "budget": BUDGETS[name.rsplit("-", 1)[1]],
            **cell_summary(name, policies, runs, timing),
            "policies": {m: p["policy"] for m, p in policies.items()},
            "unreachable": unreachable, "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=None, choices=CELLS,
                        help="default: the CNN cells (with --smoke: the two ResNet cells)")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                        help=f"default: all (with --transformer: {' '.join(TRANSFORMER_METHODS)})")
    parser.add_argument("--transformer", action="store_true",
                        help="the ViT cells and methods; work and result file of their own")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=40, help="timed runs per model")
    parser.add_argument("--timing-rounds", type=int, default=6,
                        help="timing rounds, each with fresh models in a new order")
    parser.add_argument("--work", type=Path, default=None,
                        help="searches' workdir (MLflow store, Tune state)")
    parser.add_argument("--pieces", type=Path, default=None,
                        help="finished pieces (default: benchmarks/progress/<kind>.json, to be "
                             "committed, so a new machine resumes; --smoke: in --work)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", action="store_true", help="print the README table and stop")
    args = parser.parse_args(argv)
    kind = "transformer_end_to_end" if args.transformer else "end_to_end"
    final_out = TRANSFORMER_OUT if args.transformer else OUT
    if args.report:
        print(report(json.loads((args.out or final_out).read_text())))
        return {}
    restore_dense_models()
    args.work = args.work or default_cache_dir() / kind
    args.methods = args.methods or list(TRANSFORMER_METHODS if args.transformer else METHODS)
    if args.smoke:
        args.cells = args.cells or (list(TRANSFORMER_CELLS) if args.transformer else
                                    ["resnet56-flops50", "resnet56-latency60"])
        args.seeds, args.batches, args.repeats, args.timing_rounds = [0, 1], [1, 4], 8, 2
        args.work = args.work.with_name(args.work.name + "-smoke")
    args.cells = args.cells or list(TRANSFORMER_CELLS if args.transformer else CNN_CELLS)
    out = args.out or (final_out if not args.smoke else args.work / f"{kind}.json")
    torch.set_num_threads(RECIPE["threads"])
    settings = {"recipe": RECIPE, "smoke": args.smoke, "work": str(args.work),
                "repeats": args.repeats, "batches": args.batches}
    pieces = Pieces(args.pieces or (args.work / "partial.json" if args.smoke else
                                    PROGRESS / f"{kind}.json"), settings)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if result.get("settings") != settings:
        result = {}
    result |= {"settings": settings, "machine": machine_info(), "code": code_version()}
    for name in args.cells:
        result.setdefault("cells", {})[name] = run_cell(args, pieces, name)
        write_result(out, result, show={})
    print(report(result))
    return result


if __name__ == "__main__":
    main()
