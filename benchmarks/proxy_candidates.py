"""A first-stage proxy for models without BatchNorm (issue 29, Build point 3): which cheap score
ranks pruned policies of a LayerNorm model (a ViT) as fine-tuning does?

    python benchmarks/proxy_candidates.py [--config examples/e2e-vit-sgd.yaml] [--policies 30]
    python benchmarks/proxy_candidates.py --report
    python benchmarks/proxy_candidates.py --smoke        # plumbing: a tiny ViT, tiny data

prunetune's first search stage scores a policy without fine-tuning, after re-estimating
BatchNorm statistics on a fixed calibration batch. A model without BatchNorm keeps the dense
model's statistics, so that proxy is accuracy with stale statistics. The policies: the free
baselines at the config's budget (uniform, tp-magnitude, tp-taylor) and random points of the
space (one ratio dimension per unit, filled onto the budget: each policy meets it, the spread
is in where it prunes). Each is scored by every candidate (validation accuracy, the product's
prune path `prune_and_evaluate`, seed 0):

- `none`: no calibration (what a search runs today on such a model);
- `bias`: each Linear / Conv layer's bias shifted, in forward order, so that its per-channel
  output mean on the calibration batch matches the dense model's for the same channels (no
  gradient; the correction of a layer is seen by the layers after it);
- `ln`: each LayerNorm's affine (gain and shift) set so that its per-channel output mean and
  standard deviation on the calibration batch match the dense model's: the nearest thing to
  re-estimating normalisation statistics a LayerNorm has (its statistics are per token);
- `bias+ln`: both, in one forward pass;
- `ft25`, `ft100`, `ft300`: a short fine-tune of that many steps (fractional
  `finetune.epochs`; the config's fine-tuning recipe: SGD lr 0.01, cosine to zero).

The target: each policy fine-tuned with one recipe (`TARGET`, long enough to level off: its
val accuracy per epoch is kept), scored on the val split and the full test split. Reported:
Spearman's rho and Kendall's tau of each candidate against the target's test (and val)
accuracy, a bootstrap 95% interval over policies, and each candidate's seconds per policy (the
whole scoring, evaluation included; `extra_s`: over `none`'s). Channels of the pruned model are
matched to the dense model's by their (unique, trained) bias values; a layer where that fails is
left as it is (counted in `skipped`).

Resumable: every finished piece (the policies, one candidate of one policy, one target) is kept
in `<work>/proxy_candidates_partial.json`; the result is rewritten after each policy (first
pass: every candidate but `ft300`, and the target; second pass: `ft300`; third: the first
`NOISE_POLICIES` targets again under seed 1, the target's own noise), marked `complete` at the
end. Writes
benchmarks/results/proxy_candidates.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result
from _pieces import Pieces, benchmark_args, code_version, print_report

from prunetune.trainers import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "proxy_candidates.json"
CALIBRATION = 512  # images of the calibration batch (the product's bn_calibration default)
RECAL = ("bias", "ln", "bias+ln")
STEPS = (25, 100, 300)
# Pass order: the cheaper candidates and the target of each policy, then the longest fine-tune
# fidelity (as long as the target): an interrupted run has the useful part first.
FIRST = ("none", *RECAL, *(f"ft{k}" for k in STEPS[:-1]))
LAST = (f"ft{STEPS[-1]}",)
CANDIDATES = (*FIRST, *LAST)
# The target's recipe: the end-to-end benchmark's (end_to_end.RECIPE) but 3 epochs (a ViT
# step costs more; the per-epoch val accuracy kept shows whether it levelled off), no BatchNorm.
TARGET = {"epochs": 3, "lr": 0.01, "schedule": "cosine", "warmup_epochs": 0.0, "seed": 0}
BASELINES = ("uniform", "tp-magnitude", "tp-taylor")
# The target's own noise: the first policies fine-tuned again under seed 1 (last pass). Their
# seed-to-seed spread and rank agreement bound what any proxy can reach.
NOISE_POLICIES = 10
BOOTSTRAP = 1000


# -- gradient-free re-calibration ---------------------------------------------------------------

def _kept(pruned: torch.Tensor, dense: torch.Tensor) -> torch.Tensor | None:
    """The dense channel each pruned channel is, matched by value (a pruned layer's bias is
    the dense one's at the kept channels); None when a value is missing or not unique."""
    if pruned.shape == dense.shape and torch.equal(pruned, dense):
        return torch.arange(len(dense))
    where: dict[float, int] = {}
    for i, v in enumerate(dense.tolist()):
        if v in where:
            where[v] = -1  # ambiguous
        else:
            where[v] = i
    idx = [where.get(v, -1) for v in pruned.tolist()]
    return None if min(idx, default=-1) < 0 else torch.tensor(idx)


def _targets(pruned: nn.Module, dense: nn.Module, kinds: tuple[str, ...]
             ) -> tuple[dict[str, tuple[nn.Module, nn.Module, torch.Tensor]], int]:
    """{name: (pruned module, dense module, kept channels)} of the layers to correct, and how
    many were skipped for want of a channel match."""
    dense_mods = dict(dense.named_modules())
    out, skipped = {}, 0
    for name, m in pruned.named_modules():
        d = dense_mods.get(name)
        linear = isinstance(m, (nn.Linear, nn.Conv2d)) and "bias" in kinds
        norm = isinstance(m, nn.LayerNorm) and "ln" in kinds and m.weight is not None
        if not (linear or norm) or type(d) is not type(m) or m.bias is None:
            continue
        idx = _kept(m.bias.detach(), d.bias.detach())
        if idx is None:
            skipped += 1
        else:
            out[name] = (m, d, idx)
    return out, skipped


def _channel_stats(y: torch.Tensor, conv: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of a layer's output (channels last, or at
    dim 1 for a convolution)."""
    flat = y.transpose(0, 1).flatten(1) if conv else y.flatten(0, -2).T
    return flat.mean(1), flat.std(1)


@torch.no_grad()
def recalibrate(pruned: nn.Module, dense: nn.Module, images: torch.Tensor, mode: str) -> int:
    """Match the pruned model's per-channel output statistics to the dense model's on
    `images` (see the module docstring), in place; returns the layers skipped."""
    kinds = tuple(mode.split("+"))
    targets, skipped = _targets(pruned, dense, kinds)
    ref: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str, conv: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, y: torch.Tensor) -> None:
            ref[name] = _channel_stats(y, conv)
        return hook

    def correct(name: str, conv: bool) -> Callable[..., torch.Tensor]:
        def hook(m: nn.Module, _i: Any, y: torch.Tensor) -> torch.Tensor:
            mu_p, sd_p = _channel_stats(y, conv)
            mu_d, sd_d = (s[targets[name][2]] for s in ref[name])
            # LayerNorm: mean and spread; a Linear / Conv: its mean only (its bias)
            a = (sd_d / sd_p.clamp_min(1e-6)).clamp(0.25, 4.0) if isinstance(
                m, nn.LayerNorm) else torch.ones_like(mu_p)
            shape = (1, -1, *([1] * (y.dim() - 2))) if conv else (-1,)
            m.weight.mul_(a.view(-1, *([1] * (m.weight.dim() - 1))))
            m.bias.copy_(a * (m.bias - mu_p) + mu_d)
            return a.view(shape) * (y - mu_p.view(shape)) + mu_d.view(shape)
        return hook

    dense_mods = dict(dense.named_modules())
    handles = [dense_mods[n].register_forward_hook(record(n, isinstance(m, nn.Conv2d)))
               for n, (m, _, _) in targets.items()]
    dense.eval()(images)
    for h in handles:
        h.remove()
    handles = [m.register_forward_hook(correct(n, isinstance(m, nn.Conv2d)))
               for n, (m, _, _) in targets.items()]
    pruned.eval()(images)
    for h in handles:
        h.remove()
    return skipped


# -- the setting -------------------------------------------------------------------------------

# --smoke: a tiny ViT on a little data (plumbing only)
VIT_SMOKE = {"model.kwargs": {"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 2,
                              "num_heads": 4, "mlp_ratio": 2.0},
             "pretrain.epochs": 1, "pretrain.warmup_epochs": 0.0, "data.train_subset": 512,
             "data.val_subset": 128, "data.test_subset": 128}


class Setting:
    """The dense model, data, calibration batch and space of the run (built once); `smoke`:
    the config overrides of a --smoke run."""

    def __init__(self, args: argparse.Namespace, smoke: dict[str, Any] = VIT_SMOKE) -> None:
        from prunetune.orchestrator.config import load_config
        from prunetune.orchestrator.spaces import build_space
        from prunetune.trainers import load_data, pretrain_dense
        from prunetune.trainers.prune import calibration_images

        overrides: dict[str, Any] = {"pretrain.threads": args.threads}
        if args.smoke:
            overrides.update(smoke)
        self.cfg = load_config(ROOT / args.config, overrides)
        self.data = load_data(self.cfg.data)
        self.dense = pretrain_dense(self.cfg.model, self.cfg.data, self.cfg.pretrain,
                                    cache_dir=self.cfg.cache_dir, data=self.data).model.eval()
        self.example = self.data.example_input(1)
        self.images = calibration_images(self.data, 64 if args.smoke else CALIBRATION)
        self.steps_per_epoch = len(self.data.loader("train"))
        # one ratio dimension per unit, filled onto the budget: every policy meets it
        space_cfg = self.cfg.model_copy(deep=True)
        space_cfg.space.groups, space_cfg.space.budget.fill = None, True
        self.space = build_space(space_cfg, self.dense, self.example, args.work)
        self.target_epochs = 1 if args.smoke else TARGET["epochs"]
        # each fine-tune fidelity's steps (smoke: a few, the names kept)
        self.steps = {f"ft{k}": (max(1, k // 25) if args.smoke else k) for k in STEPS}

    def finetune(self, epochs: float, **update: Any) -> Any:
        return self.cfg.finetune.model_copy(update={"epochs": epochs, "bn_calibration": 0,
                                                    "threads": None, **update})


def make_policies(s: Setting, n: int, seed: int) -> dict[str, Any]:
    """The free baselines and `n - len(BASELINES)` random points of the space, by label."""
    from prunetune.errors import BudgetError
    from prunetune.search_spaces.baselines import baseline_policies, taylor_batch

    batch = taylor_batch(s.data.loader("train"))
    out = {}
    for method in BASELINES:  # one that cannot reach the budget on this model is left out
        try:
            (b,) = baseline_policies(s.space, s.dense, s.example, (method,), batch=batch)
            out[method] = b.policy.to_dict()
        except BudgetError as err:
            print(f"[proxy_candidates] baseline {method} left out: {err}", flush=True)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = s.space.bounds
    for i in range(max(0, n - len(out))):
        x = lo + (hi - lo) * torch.rand(s.space.dim, generator=gen, dtype=lo.dtype)
        out[f"random-{i:02d}"] = s.space.decode(x).to_dict()
    return out


# -- one piece ---------------------------------------------------------------------------------

def score(s: Setting, policy_dict: dict[str, Any], candidate: str) -> dict[str, Any]:
    """One candidate's validation accuracy for one policy, and what it cost."""
    from prunetune.search_spaces import Policy, apply_policy
    from prunetune.trainers import evaluate, prune_and_evaluate
    from prunetune.trainers.train import seed_everything

    policy, t0, extra = Policy.from_dict(policy_dict), time.perf_counter(), {}
    if candidate in RECAL:
        seed_everything(0)
        pruned = apply_policy(s.dense, policy, s.example)
        extra["skipped_layers"] = recalibrate(pruned, s.dense, s.images, candidate)
        acc = evaluate(pruned, s.data.loader("val")).accuracy
    else:
        steps = s.steps.get(candidate, 0)
        r = prune_and_evaluate(s.dense, policy, s.data, s.finetune(steps / s.steps_per_epoch),
                               seed=0)
        acc = r.scores["val"].accuracy
        extra["flops_ratio"] = r.cost_metrics()["flops_ratio"]
    return {"accuracy": acc, "seconds": time.perf_counter() - t0, **extra}


def target(s: Setting, policy_dict: dict[str, Any], seed: int = TARGET["seed"]
           ) -> dict[str, Any]:
    """The policy fine-tuned with the target recipe: val and test accuracy, val curve."""
    from prunetune.search_spaces import Policy
    from prunetune.trainers import prune_and_evaluate

    curve: list[float] = []
    t0 = time.perf_counter()
    ft = s.finetune(s.target_epochs, lr=TARGET["lr"], schedule=TARGET["schedule"],
                    warmup_epochs=TARGET["warmup_epochs"])
    r = prune_and_evaluate(s.dense, Policy.from_dict(policy_dict), s.data, ft,
                           seed=seed, splits=("val", "test"),
                           on_epoch_end=lambda _e, m: curve.append(m["val_accuracy"]))
    return {"val_accuracy": r.scores["val"].accuracy, "test_accuracy": r.scores["test"].accuracy,
            "val_curve": curve, "seconds": time.perf_counter() - t0, **r.cost_metrics()}


# -- the report --------------------------------------------------------------------------------

def _bootstrap(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of Spearman's rho and Kendall's tau, resampling policies."""
    gen, rhos, taus = np.random.default_rng(seed), [], []
    for _ in range(BOOTSTRAP):
        i = gen.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            rhos.append(stats.spearmanr(x[i], y[i]).statistic)
            taus.append(stats.kendalltau(x[i], y[i]).statistic)

    def ci(v: list[float]) -> list[float]:
        return [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] if v \
            else [float("nan")] * 2

    return {"spearman_ci95": ci(rhos), "kendall_ci95": ci(taus)}


def correlations(rows: dict[str, dict[str, Any]], candidate: str, truth: str) -> dict[str, Any]:
    have = [r for r in rows.values() if candidate in r["scores"] and r.get("target")]
    if len(have) < 3:
        return {"n": len(have)}
    x = np.array([r["scores"][candidate]["accuracy"] for r in have])
    y = np.array([r["target"][truth] for r in have])
    rho, tau = stats.spearmanr(x, y), stats.kendalltau(x, y)
    return {"n": len(have), "spearman_rho": float(rho.statistic),
            "kendall_tau": float(tau.statistic), "spearman_p": float(rho.pvalue),
            "kendall_p": float(tau.pvalue), **_bootstrap(x, y)}


def rho_difference(rows: dict[str, dict[str, Any]], a: str, b: str, truth: str = "test_accuracy",
                   seed: int = 0) -> dict[str, Any]:
    """Spearman's rho of candidate `a` minus that of `b` against the target, over the policies
    both scored, with a 95% interval from resampling those policies (paired: one resample
    serves both): a difference whose interval holds 0 is a tie."""
    have = [r for r in rows.values() if a in r["scores"] and b in r["scores"] and r.get("target")]
    if len(have) < 3:
        return {"n": len(have)}
    xa, xb, y = (np.array(v) for v in zip(*[(r["scores"][a]["accuracy"],
                                             r["scores"][b]["accuracy"], r["target"][truth])
                                            for r in have], strict=True))

    def rho(x: np.ndarray, t: np.ndarray) -> float:
        return float(stats.spearmanr(x, t).statistic)

    gen, diffs = np.random.default_rng(seed), []
    for _ in range(BOOTSTRAP):
        i = gen.integers(0, len(y), len(y))
        if min(len(set(xa[i])), len(set(xb[i])), len(set(y[i]))) > 1:
            diffs.append(rho(xa[i], y[i]) - rho(xb[i], y[i]))
    ci = [float(np.nanpercentile(diffs, q)) for q in (2.5, 97.5)] if diffs else [math.nan] * 2
    return {"n": len(have), "difference": rho(xa, y) - rho(xb, y), "ci95": ci}


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per candidate: its correlations with the target (test, val) and its cost."""
    base = [r["scores"]["none"]["seconds"] for r in rows.values() if "none" in r["scores"]]
    out = {}
    for c in CANDIDATES:
        secs = [r["scores"][c]["seconds"] for r in rows.values() if c in r["scores"]]
        out[c] = {"test": correlations(rows, c, "test_accuracy"),
                  "val": correlations(rows, c, "val_accuracy"),
                  "scored": len(secs),
                  "seconds_per_policy": float(np.mean(secs)) if secs else None,
                  "extra_s": float(np.mean(secs) - np.mean(base)) if secs and base else None}
    targets = [r["target"]["seconds"] for r in rows.values() if r.get("target")]
    out["target"] = {"scored": len(targets),
                     "seconds_per_policy": float(np.mean(targets)) if targets else None,
                     "seed_noise": seed_noise(rows)}
    return out


def seed_noise(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How much the target itself moves with the fine-tuning seed, over the policies run
    under seeds 0 and 1: the standard deviation of one policy's test accuracy, and the rank
    agreement of the two seeds (the ceiling of any proxy's correlation)."""
    pairs = [(r["target"]["test_accuracy"], r["target_seed1"]["test_accuracy"])
             for r in rows.values() if r.get("target") and r.get("target_seed1")]
    if len(pairs) < 3:
        return {"n": len(pairs)}
    a, b = np.array(pairs).T
    return {"n": len(pairs), "test_sd": float(np.std(a - b, ddof=1) / np.sqrt(2)),
            "spearman_seed0_seed1": float(stats.spearmanr(a, b).statistic),
            "kendall_seed0_seed1": float(stats.kendalltau(a, b).statistic),
            "test_range_seed0": float(np.ptp([r["target"]["test_accuracy"]
                                              for r in rows.values() if r.get("target")]))}


def report(result: dict[str, Any]) -> str:
    lines = ["| candidate | Spearman (test) [95% CI] | Kendall tau (test) [95% CI] | "
             "Spearman (val) | s / policy | n |", "|---|---|---|---|---|---|"]
    for c in CANDIDATES:
        row = result["candidates"][c]
        t, v = row["test"], row["val"]
        if "spearman_rho" not in t:
            lines.append(f"| {c} | - | - | - | - | {t['n']} |")
            continue
        sci, kci = t["spearman_ci95"], t["kendall_ci95"]
        lines.append(f"| {c} | {t['spearman_rho']:.2f} [{sci[0]:.2f}, {sci[1]:.2f}] | "
                     f"{t['kendall_tau']:.2f} [{kci[0]:.2f}, {kci[1]:.2f}] | "
                     f"{v.get('spearman_rho', float('nan')):.2f} | "
                     f"{row['seconds_per_policy']:.1f} | {t['n']} |")
    lines.append("")
    for a, b in (("ft100", "none"), ("ft25", "none"), ("ft100", "ft25"), ("ft300", "ft100"),
                 ("ln", "none")):
        d = rho_difference(result["rows"], a, b)
        if "difference" in d:
            lo, hi = d["ci95"]
            verdict = "apart" if lo > 0 or hi < 0 else "a tie"  # a nan interval: a tie
            lines.append(f"Spearman {a} - {b}: {d['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}] "
                         f"over {d['n']} policies (paired bootstrap; {verdict})")
    target = result["candidates"]["target"]
    noise = target.get("seed_noise", {})
    lines.append(f"\ntarget: {target['seconds_per_policy'] or 0:.1f} s / policy")
    if "test_sd" in noise:
        lines.append(f"target seed noise over {noise['n']} policies: test accuracy sd "
                     f"{100 * noise['test_sd']:.2f} points (seed 0's range over all policies "
                     f"{100 * noise['test_range_seed0']:.2f}); Spearman seed 0 vs seed 1 "
                     f"{noise['spearman_seed0_seed1']:.2f}")
    return "\n".join(lines)


def _result(args: argparse.Namespace, s: Setting, rows: dict[str, Any], complete: bool
            ) -> dict[str, Any]:
    result = {"config": args.config, "model": s.cfg.model.model_dump(),
              "budget": s.cfg.space.budget.model_dump(), "policies": len(rows),
              "calibration_images": len(s.images), "steps_per_epoch": s.steps_per_epoch,
              "fine_tune_steps": s.steps,
              "finetune": s.finetune(0).model_dump(), "target_recipe": {
                  **TARGET, "epochs": s.target_epochs}, "complete": complete,
              "candidates": summary(rows), "rows": rows, "machine": machine_info(),
              "code": code_version()}
    write_result(args.work / "proxy_candidates.json" if args.smoke else OUT, result,
                 show={"candidates": {c: {k: v.get("spearman_rho") if isinstance(v, dict) else v
                                          for k, v in row.items()}
                                      for c, row in result["candidates"].items()}})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def own(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", default="examples/e2e-vit-sgd.yaml")
        parser.add_argument("--policies", type=int, default=30)
        parser.add_argument("--threads", type=int, default=1)

    args = benchmark_args(__doc__, argv, default_cache_dir() / "proxy_candidates", own)
    if args.report:
        return print_report(OUT, report)
    if args.smoke:
        args.policies = 4
    torch.set_num_threads(args.threads)
    s = Setting(args)
    pieces = Pieces(args.work / "proxy_candidates_partial.json",
                    {"config": args.config, "smoke": args.smoke, "policies": args.policies,
                     "target": TARGET, "calibration": len(s.images), "steps": list(STEPS)})
    policies = pieces.get("policies", lambda: make_policies(s, args.policies, seed=0))
    rows: dict[str, Any] = {label: {"policy": p, "scores": {}} for label, p in policies.items()}

    def run(candidates: tuple[str, ...], with_target: bool, complete: bool) -> dict[str, Any]:
        for label, row in rows.items():
            p, fresh = row["policy"], len(pieces.done)
            for c in candidates:
                row["scores"][c] = pieces.get(f"score/{label}/{c}",
                                              lambda c=c, p=p: score(s, p, c))
            if with_target:
                row["target"] = pieces.get(f"target/{label}", lambda p=p: target(s, p))
            if len(pieces.done) > fresh:  # the figures so far, after each policy
                _result(args, s, rows, False)
        return _result(args, s, rows, complete)

    for label, row in rows.items():  # what an earlier run finished counts from the start
        row["scores"] = {c: pieces.done[f"score/{label}/{c}"] for c in CANDIDATES
                         if f"score/{label}/{c}" in pieces.done}
        row["target"] = pieces.done.get(f"target/{label}")
        row["target_seed1"] = pieces.done.get(f"target-seed1/{label}")
    # the cheap candidates and the target of each policy in turn (an interrupted run has a
    # correlation over the policies it finished), then the longest fidelity, then the
    # target's seed noise
    run(FIRST, True, False)
    run(LAST, True, False)
    for label in list(rows)[:2 if args.smoke else NOISE_POLICIES]:
        p = rows[label]["policy"]
        rows[label]["target_seed1"] = pieces.get(f"target-seed1/{label}",
                                                 lambda p=p: target(s, p, seed=1))
    return _result(args, s, rows, True)


if __name__ == "__main__":
    main()
