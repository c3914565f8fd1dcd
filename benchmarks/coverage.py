"""Coverage of the pruning engine over torchvision's classification models.

    python benchmarks/coverage.py [--models a,b] [--jobs 2] [--timeout 900] [--max-gib 16]
                                  [--out PATH] [--table] [--mixed]

Every model in `torchvision.models.list_models(module=torchvision.models)` (untrained weights)
is analysed and channel-pruned at ratio 0.3 on every unit, on a small input (64x64; 224x224
where the architecture needs it). A model passes when the pruned model's forward works, its
output shape is unchanged, its FLOPs fall, and it computes what the dense model computes with
the removed channels zeroed instead (`zero_pruned_channels`), so a prune that removed the wrong
channels, or broke a coupling, fails even when every shape fits. Where zeroing is not removal
(a LayerNorm's or attention's statistics span all channels), that comparison is recorded as not
made, with the layer kinds. Each model runs in its own process with a time limit, so a hang or
an out-of-memory kill is recorded as that model's failure.

Every model is also cross-checked against PyTorch's aten-level counter (`aten_macs`:
`torch.utils.flop_counter.FlopCounterMode`, the independent reference for prunetune's FLOPs):
`aten` holds the dense and pruned MACs by that counter next to prunetune's count and their
ratio (1.0 when prunetune counts what runs), and `budget` a channel-only budget point: the
space at a `RATIO` FLOPs budget (or, where no channel policy reaches it, at the keep its refusal
advises), its `fill_budget` policy of the all-ones vector applied and measured by the counter,
beside the space's prediction. A model fails when the counts differ by more than
`ATEN_RTOL`, the measured share exceeds the budget by more than 1%, or the prediction is off
the measurement by more than 2%.

Writes benchmarks/results/coverage.json: {model: {"ok", "flops_ratio", "error", "aten",
"budget", ...}} (also the input size, the number of pruned units and the seconds taken),
rewritten after every model so a long run can be watched; the share of models that pass is
printed.

`--mixed` runs the mixed-scheme drill instead (`run_one_mixed`: random points of spaces that
search every scheme, and channel or N:M, per layer group, under a FLOPs budget; a model passes
when every policy applies, runs, and measures within the budget) into coverage_mixed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prunetune.files import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"
RATIO = 0.3
# Removing a channel and zeroing it differ by float rounding only (1e-7 relative on ResNets);
# a wrong channel moves the output by far more than this.
SAME_OUTPUT_RTOL = 1e-4
# Models whose forward checks the input size (ViT) or needs a large input (MaxViT's windows).
SIZE_224 = ("vit_", "maxvit")
SIZE_96 = ("inception",)
ATEN_RTOL = 1e-6  # prunetune's count vs FlopCounterMode's: the same formulas, float sums only


def input_size(name: str) -> int:
    if name.startswith(SIZE_224):
        return 224
    if name.startswith(SIZE_96):
        return 96
    return 64


def run_one(name: str) -> dict[str, object]:
    """Analyse and channel-prune one model in this process."""
    import torch
    import torchvision

    from prunetune.search_spaces import Policy, UnitPolicy, analyze, apply_policy, count_cost
    from prunetune.search_spaces.apply import zero_pruned_channels

    torch.manual_seed(0)
    torch.set_num_threads(1)
    size = input_size(name)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        dense_out = model(x)
    analysis = analyze(model, x)
    units = {u.name: UnitPolicy("channel", min(RATIO, u.max_ratio("channel")))
             for u in analysis.units if "channel" in u.schemes}
    if not units:
        raise RuntimeError("no channel-prunable unit found")
    pruned = apply_policy(model, Policy(units), x).eval()
    with torch.no_grad():
        out = pruned(x)
    if out.shape != dense_out.shape:
        raise RuntimeError(f"output shape changed: {tuple(dense_out.shape)} -> "
                           f"{tuple(out.shape)}")
    cost = count_cost(pruned, x)
    ratio = cost.flops / analysis.dense_flops
    if not ratio < 1.0:
        raise RuntimeError(f"FLOPs did not fall (ratio {ratio:.3f})")
    zeroed, inexact = zero_pruned_channels(model, Policy(units), x)
    same = None
    if not inexact:
        with torch.no_grad():
            ref = zeroed.eval()(x)
        err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        if not err <= SAME_OUTPUT_RTOL:
            raise RuntimeError(f"the pruned model's output differs from the dense model's with "
                               f"the removed channels zeroed (max relative error {err:.2e}): "
                               "the wrong channels were removed")
        same = err
    return {"ok": True, "flops_ratio": round(ratio, 4), "error": None, "units": len(units),
            "input": size, "zeroed_max_rel_error": same, "not_comparable": inexact,
            "aten": aten_check(model, pruned, analysis.dense_flops, cost.flops, x),
            "budget": budget_point(model, analysis, x)}


def aten_macs(model, x) -> float:
    """MACs per sample of `model` on `x` by PyTorch's FlopCounterMode (its FLOPs / 2)."""
    from prunetune.search_spaces.cost import flop_counter_macs

    return flop_counter_macs(model, x)


def aten_check(model, pruned, dense_flops: float, pruned_flops: float, x) -> dict[str, float]:
    """Dense and pruned MACs by FlopCounterMode next to prunetune's count, and their ratios."""
    dense, after = aten_macs(model, x), aten_macs(pruned, x)
    out = {"dense_macs": dense, "pruned_macs": after, "prunetune_dense": dense_flops,
           "prunetune_pruned": pruned_flops, "dense_ratio": dense_flops / dense,
           "pruned_ratio": pruned_flops / after}
    for key in ("dense_ratio", "pruned_ratio"):
        if not abs(out[key] - 1.0) <= ATEN_RTOL:
            raise RuntimeError(f"prunetune's FLOPs differ from FlopCounterMode's MACs: {key} "
                               f"{out[key]:.6f}")
    return out


def budget_point(model, analysis, x) -> dict[str, object]:
    """A channel-only `RATIO` FLOPs budget point measured by FlopCounterMode (module doc)."""
    import numpy as np

    from prunetune.errors import BudgetError
    from prunetune.search_spaces import Budget, PruningSpace, apply_policy

    keep, refusal = RATIO, None
    try:
        space = PruningSpace(None, analysis=analysis, budget=Budget("flops", keep),
                             schemes=("channel",), fill_budget=True)
    except BudgetError as err:  # follow the refusal's advice at these ratio bounds
        refusal = str(err)
        keep = float(re.findall(r"budget\.keep to at least ([0-9.]+)", refusal)[0])
        space = PruningSpace(None, analysis=analysis, budget=Budget("flops", keep),
                             schemes=("channel",), fill_budget=True)
    point = np.ones(space.dim)
    predicted = space.cost(point)["flops_share"]
    measured = aten_macs(apply_policy(model, space.decode(point), x), x) / aten_macs(model, x)
    if measured > 1.01 * keep or abs(predicted - measured) > 0.02 * measured:
        raise RuntimeError(f"budget keep={keep}: measured {measured:.4f} of the dense MACs by "
                           f"FlopCounterMode, predicted {predicted:.4f}")
    return {"keep": keep, "aten_share": round(measured, 4), "predicted_share": round(predicted, 4),
            "refused_at_ratio": refusal is not None}


# The mixed-scheme drill: random points of two spaces per model, each decoded under this FLOPs
# budget, applied and measured.
MIXED_KEEP = 0.5
MIXED_POINTS = 3
MIXED_SPACES = {"all": ("channel", "block", "nm", "unstructured", "pattern"),
                "channel+nm": ("channel", "nm")}


def run_one_mixed(name: str) -> dict[str, object]:
    """Mixed schemes on one model: `MIXED_POINTS` random points of a space that searches every
    scheme per layer group and of one that searches channel or N:M, each decoded under a
    `MIXED_KEEP` FLOPs budget, applied, run, and costed on the pruned model itself. Where no
    policy of a space reaches that budget (Swin, whose attention projections are in no unit),
    the points are taken at the keep its refusal advises (`advised_keep`), checking that too."""
    import numpy as np
    import torch
    import torchvision

    from prunetune.errors import BudgetError
    from prunetune.search_spaces import Budget, PruningSpace, analyze, apply_policy, count_cost

    torch.manual_seed(0)
    torch.set_num_threads(1)
    size = input_size(name)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        dense_shape = model(x).shape
    analysis = analyze(model, x)
    rng = np.random.default_rng(0)
    shares, schemes, advised = [], set(), {}
    for label, allowed in MIXED_SPACES.items():
        keep = MIXED_KEEP

        def space_at(keep: float, allowed=allowed) -> PruningSpace:
            return PruningSpace(None, schemes=allowed, scheme_search=True, analysis=analysis,
                                budget=Budget("flops", keep), n_groups="auto")

        try:
            space = space_at(keep)
        except BudgetError as err:  # no policy reaches it (Swin): the keep the refusal advises
            keep = float(re.findall(r"budget\.keep to at least ([0-9.]+)", str(err))[0])
            space, advised[label] = space_at(keep), keep
        for _ in range(MIXED_POINTS):
            policy = space.decode(rng.random(space.dim))
            schemes |= {u.scheme for u in policy.units.values() if u.ratio > 0}
            pruned = apply_policy(model, policy, x).eval()
            with torch.no_grad():
                shape = pruned(x).shape
            if shape != dense_shape:
                raise RuntimeError(f"{label}: output shape changed: {tuple(dense_shape)} -> "
                                   f"{tuple(shape)}")
            share = count_cost(pruned, x).effective_flops / analysis.dense_flops
            if share > keep:
                raise RuntimeError(f"{label}: measured FLOPs {share:.4f} of dense exceed the "
                                   f"budget {keep}")
            shares.append(share)
    return {"ok": True, "flops_ratio": round(max(shares), 4), "error": None,
            "units": len(analysis.units), "input": size, "points": len(shares),
            "schemes_used": sorted(schemes), "advised_keep": advised}


def _child(name: str, max_gib: float, mixed: bool = False) -> None:
    # A cap on address space turns a runaway dependency graph into a MemoryError with a
    # traceback instead of the kernel's out-of-memory kill.
    resource.setrlimit(resource.RLIMIT_AS, (int(max_gib * 2**30), resource.RLIM_INFINITY))
    try:
        result = run_one_mixed(name) if mixed else run_one(name)
    except Exception as err:  # noqa: BLE001 - any failure is this model's result
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        result = {"ok": False, "flops_ratio": None,
                  "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]} ({where})"}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", help="comma-separated subset (default: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--out", default=str(RESULTS / "coverage.json"))
    parser.add_argument("--max-gib", type=float, default=16.0, help="memory cap per model")
    parser.add_argument("--jobs", type=int, default=1, help="models analysed at once")
    parser.add_argument("--table", action="store_true",
                        help="print the markdown summary of --out (for benchmarks/README.md)")
    parser.add_argument("--mixed", action="store_true",
                        help="the mixed-scheme drill (run_one_mixed) into coverage_mixed.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.mixed and args.out == str(RESULTS / "coverage.json"):
        args.out = str(RESULTS / "coverage_mixed.json")
    if args.table:
        results = json.loads(Path(args.out).read_text())
        print(mixed_table(results) if args.mixed else markdown_table(results))
        return
    if args.one:
        _child(args.one, args.max_gib, args.mixed)
        return
    import torchvision

    names = (args.models.split(",") if args.models
             else torchvision.models.list_models(module=torchvision.models))
    out = Path(args.out)
    results: dict[str, dict] = {}
    if out.is_file() and args.models:  # a subset run updates an existing file
        results = json.loads(out.read_text())
    lock = threading.Lock()

    def one(name: str) -> None:
        result = _run_child(name, args.timeout, args.max_gib, args.mixed)
        with lock:
            results[name] = result
            print(f"{name:24s} {'ok ' if result['ok'] else 'FAIL'} {result.get('flops_ratio')} "
                  f"{result['seconds']}s {result['error'] or ''}", flush=True)
            _write(out, results)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, names))


def _run_child(name: str, timeout: int, max_gib: float, mixed: bool) -> dict[str, object]:
    """Run one model in a child process (see `_child`) and read its result line."""
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--max-gib",
                               str(max_gib), *(["--mixed"] if mixed else [])],
                              capture_output=True, text=True, timeout=timeout,
                              env=os.environ.copy(), check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if lines:
            result = json.loads(lines[-1][len("RESULT "):])
        else:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            result = {"ok": False, "flops_ratio": None,
                      "error": f"process exited {proc.returncode}: {tail[:300]}"}
    except subprocess.TimeoutExpired:
        result = {"ok": False, "flops_ratio": None,
                  "error": f"timed out after {timeout} s on this 2-core CPU"}
    result["seconds"] = round(time.time() - t0, 1)
    return result


def markdown_table(results: dict[str, dict]) -> str:
    """Summary line, failures with their reasons, and FLOPs ratios by model family."""
    ok = [k for k, r in results.items() if r["ok"]]
    share = 100 * len(ok) / len(results)
    head = f"{len(ok)} of {len(results)} models pass ({share:.1f}%), channel ratio {RATIO}"
    checked = [k for k in ok if results[k].get("zeroed_max_rel_error") is not None]
    worst = max((results[k]["zeroed_max_rel_error"] for k in checked), default=0.0)
    skipped = sorted(k for k in ok if results[k].get("not_comparable"))
    kinds = sorted({n for k in skipped for n in results[k]["not_comparable"]})
    lines = [head + " on every unit.", "",
             f"Output check: {len(checked)} of {len(ok)} passing models compute what the dense "
             f"model computes with the removed channels zeroed (largest relative difference "
             f"{worst:.1e}); for {len(skipped)} ({', '.join(skipped) or 'none'}) zeroing is not "
             f"removal ({', '.join(kinds) or '-'}), so only shapes and FLOPs are checked.", "",
             _aten_line(results, ok), "",
             "| family | models | pass | FLOPs after / before | FlopCounterMode / prunetune "
             "(dense, pruned) | channel budget: keep -> measured by FlopCounterMode |",
             "|---|---|---|---|---|---|"]
    families: dict[str, list[str]] = {}
    for name in results:
        families.setdefault(re.match(r"[a-z]+", name).group(0), []).append(name)
    for fam, names in sorted(families.items()):
        ratios = [results[n]["flops_ratio"] for n in names if results[n]["ok"]]
        lo, hi = (f"{min(ratios):.2f}", f"{max(ratios):.2f}") if ratios else ("-", "-")
        span = lo if lo == hi else f"{lo} - {hi}"
        passed = sum(results[n]["ok"] for n in names)
        rows = [results[n] for n in names if results[n]["ok"]]
        aten = [1 / r["aten"][k] for r in rows if "aten" in r
                for k in ("dense_ratio", "pruned_ratio")]
        lines.append(f"| {fam} | {len(names)} | {passed} | {span} | {_span(aten, '.4f')} | "
                     f"{_budget_span(rows)} |")
    failed = [k for k in results if not results[k]["ok"]]
    if failed:
        lines += ["", "Failures:", ""]
        lines += [f"- `{k}`: {results[k]['error']}" for k in failed]
    return "\n".join(lines)


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo} - {hi}"


def _budget_span(rows: list[dict]) -> str:
    """'0.3 -> 0.29 - 0.30' per budget keep of the rows' budget points."""
    by_keep: dict[float, list[float]] = {}
    for r in rows:
        if "budget" in r:
            by_keep.setdefault(r["budget"]["keep"], []).append(r["budget"]["aten_share"])
    return "; ".join(f"{k:g} -> {_span(v, '.3f')}" for k, v in sorted(by_keep.items())) or "-"


def _aten_line(results: dict[str, dict], ok: list[str]) -> str:
    checked = [k for k in ok if "aten" in results[k]]
    worst = max((abs(results[k]["aten"][f] - 1) for k in checked
                 for f in ("dense_ratio", "pruned_ratio")), default=0.0)
    points = [results[k]["budget"] for k in checked if "budget" in results[k]]
    refused = sorted(k for k in checked if results[k].get("budget", {}).get("refused_at_ratio"))
    over = max((p["aten_share"] / p["keep"] for p in points), default=0.0)
    off = max((abs(p["predicted_share"] / p["aten_share"] - 1) for p in points), default=0.0)
    return (f"Aten-level cross-check: on {len(checked)} models prunetune's dense and pruned FLOPs "
            f"equal PyTorch's FlopCounterMode MACs (largest relative difference {worst:.1e}). "
            f"Channel-only budget points ({RATIO:g} of the FLOPs, filled; where channel pruning "
            f"cannot reach it, the keep the refusal advises: {', '.join(refused) or 'none'}) "
            f"measure at most {over:.4f} x the budget by FlopCounterMode, and the space's "
            f"prediction is within {100 * off:.2f}% of that measurement.")


def mixed_table(results: dict[str, dict]) -> str:
    """Summary of the mixed-scheme drill: models passing, the worst measured FLOPs share,
    failures with their reasons."""
    ok = [k for k, r in results.items() if r["ok"]]
    advised = sorted(k for k in ok if results[k].get("advised_keep"))
    worst = max((results[k]["flops_ratio"] for k in ok if k not in advised), default=0.0)
    lines = [f"{len(ok)} of {len(results)} models pass: {MIXED_POINTS} random points each of "
             f"{' and '.join(f'`{k}` {list(v)}' for k, v in MIXED_SPACES.items())} (schemes "
             f"searched per layer group) under a {MIXED_KEEP:.0%} FLOPs budget apply, run with "
             f"the dense output shape, and measure at most {worst:.4f} of the dense FLOPs."]
    if advised:
        keeps = [v for k in advised for v in results[k]["advised_keep"].values()]
        lines.append(f"No policy of {', '.join(advised)} reaches {MIXED_KEEP:.0%} of the "
                     f"aten-level FLOPs (attention projections are in no unit): their points "
                     f"are taken at the keep the refusal advises ({min(keeps):g} - "
                     f"{max(keeps):g}), accepted, and measure within it.")
    failed = [k for k in results if not results[k]["ok"]]
    if failed:
        lines += ["", "Failures:", ""]
        lines += [f"- `{k}`: {results[k]['error']}" for k in failed]
    return "\n".join(lines)


def _write(out: Path, results: dict[str, dict]) -> None:
    ok = sum(r["ok"] for r in results.values())
    print(f"coverage: {ok}/{len(results)} models ok "
          f"({100 * ok / max(1, len(results)):.1f}%)", flush=True)
    atomic_write(out, json.dumps(dict(sorted(results.items())), indent=1) + "\n")


if __name__ == "__main__":
    main()
