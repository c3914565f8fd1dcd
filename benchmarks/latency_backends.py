"""What the latency backend changes (issue 28, Build point 5): speedups in eager PyTorch and in
ONNX Runtime, and a latency-budgeted search timed in each.

    python benchmarks/latency_backends.py                 # part 1: speedups (default)
    python benchmarks/latency_backends.py --part search   # part 2: the search comparison
    python benchmarks/latency_backends.py --part all      # both
    python benchmarks/latency_backends.py --smoke         # plumbing: ResNet-20, 6 trials, tiny

Every model is trained on Fashion-MNIST (28x28, one channel; 2k val, 2k test images) with SGD
(lr 0.05, cosine, 0.3 warm-up epochs): ResNet-20 2 epochs on a 12k training subset, ResNet-56
and MobileNetV2 1 epoch on 4k (`PRETRAIN_EPOCHS`, `PRETRAIN_DATA`): `prunetune pretrain`'s own
path (`pretrain_dense`), the checkpoint cached by the product. Latency does not depend on the
weights; the searches need a trained model to score policies on.

Part `speedups`: for ResNet-20, ResNet-56 and MobileNetV2 at a 50% FLOPs budget (channel
pruning), the uniform policy (`search_spaces.baselines.uniform_policy` on the config's space)
and a searched one (`run_search` with the config's default searcher, 40 proxy trials, no
finalists; the best trial's policy read back from MLflow), each with kept widths of any size
(`space.round_to: null`, eager's `auto`) and rounded to multiples of 16 (`round_to: 16`, ONNX
Runtime's `auto` on this AVX-512 CPU). The dense model and those four are timed in turn in one
`measured_models_ms` call per backend (eager, onnxruntime) and batch (1, 64): one thread,
thread-CPU clock, interleaved bursts, so the speedups are free of the machine's drift.

Part `search`: ResNet-20 under a measured-latency budget (`space.budget: {kind: latency, keep:
0.6}`), searched once with `latency.backend: onnxruntime` and once with `eager`, seeds 0, 1, 2
(30 proxy trials, 2 finalists fine-tuned 1 epoch). Per seed the dense model and both searches'
finalists are timed in ONNX Runtime in one call: does each finalist meet the ORT budget (dense
ORT latency x 0.6)? `space.round_to` is left at `auto`, as a user gets it (eager: any width;
onnxruntime: its channel block). The best finalist is the one with the highest val accuracy
(the one `promote` takes); accuracies compared are the finalists' own val accuracies, and with
`--rescore` the best one is fine-tuned again (the finalists' recipe and seed) and scored on test.

Resumable: every finished piece (a search, a timing) is kept in `<work>/partial.json` and
skipped on a re-run with the same settings; searches live in `<work>` (MLflow store, Tune
state): a finished one is reused, an interrupted one resumed. Writes
`benchmarks/results/latency_backends.json` (both parts, whichever are done).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result
from _pieces import Pieces, code_version, run_or_resume, timed, trial_policy

from prunetune.trainers import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "latency_backends.json"
MODELS = ("resnet20", "resnet56", "mobilenetv2")
BACKENDS = ("eager", "onnxruntime")
BATCHES = (1, 64)
SEEDS = (0, 1, 2)
# Kept widths: any (space.round_to null: eager's `auto`) and multiples of 16 (ONNX Runtime's
# `auto` on this AVX-512 machine: its blocked NCHWc convolutions' channel block).
WIDTHS = {"any": None, "x16": 16}
FLOPS_KEEP = 0.5
LATENCY_KEEP = 0.6
# The searches of the search part, by label: (latency backend, space.round_to, search name).
# "onnxruntime" is what a user gets (round_to auto: 8 for ONNX Runtime); "onnxruntime-x16" is
# the widths of 16 that auto gave first and lost accuracy with (its searches keep the name
# they ran under).
SEARCHES = {"eager": ("eager", "auto", "eager"),
            "onnxruntime": ("onnxruntime", "auto", "onnxruntime-w8"),
            "onnxruntime-x16": ("onnxruntime", 16, "onnxruntime")}
# Paired comparisons of the search part: (label, against label).
PAIRS = (("onnxruntime", "eager"), ("onnxruntime-x16", "eager"),
         ("onnxruntime", "onnxruntime-x16"))
# The pretraining every model gets (cheap: latency does not depend on the weights, and the
# search part's accuracies compare two searches from the same dense model).
DATA = {"name": "fashion-mnist", "train_subset": 12000, "val_subset": 2000,
        "test_subset": 2000}
PRETRAIN = {"lr": 0.05, "warmup_epochs": 0.3, "threads": 2}
# Epochs per model: the CPU is two shared cores (ResNet-56 and MobileNetV2 at about 1-2 s per
# batch of 128 on one thread); ResNet-20 gets two, as the search part compares accuracies.
PRETRAIN_EPOCHS = {"resnet20": 2, "resnet56": 1, "mobilenetv2": 1}
# ResNet-56 and MobileNetV2 pretrain on the first 4k of the 12k subset (the machine was loaded
# to 4-6 runnable jobs: one epoch of 12k took over 10 minutes); val and test stay 2k.
PRETRAIN_DATA = {"resnet56": {"train_subset": 4000}, "mobilenetv2": {"train_subset": 4000}}


# -- the pieces cache ---------------------------------------------------------------------------

# -- configs, searches, policies ----------------------------------------------------------------

def config(args: argparse.Namespace, name: str, model: str, **sections: Any) -> Any:
    """A prunetune config (the product's own validation) for `model` on the shared data."""
    from prunetune.orchestrator.config import PrunetuneConfig

    raw: dict[str, Any] = {"name": name, "workdir": str(args.work), "model": {"name": model},
                           "data": DATA | PRETRAIN_DATA.get(model, {}),
                           "pretrain": PRETRAIN | {"epochs": PRETRAIN_EPOCHS[model]},
                           "search": {"max_concurrent": 2, "cpus_per_trial": 1}}
    if args.smoke:
        raw["data"] |= {"train_subset": 512, "val_subset": 256, "test_subset": 256}
        raw["pretrain"]["epochs"] = 1
    for section, value in sections.items():
        raw[section] = ({**raw.get(section, {}), **value} if isinstance(value, dict)
                        else value)
    return PrunetuneConfig.model_validate(raw)


def dense_and_example(cfg: Any) -> tuple[torch.nn.Module, torch.Tensor, Any]:
    from prunetune.trainers import load_data, pretrain_dense

    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir)
    data = load_data(cfg.data)
    return dense.model.eval(), data.example_input(1), (dense, data)


def searched(cfg: Any) -> dict[str, Any]:
    """The config's search run, resumed or reused (`run_or_resume`); its deciding trials from
    MLflow."""
    from mlflow.tracking import MlflowClient

    from prunetune.orchestrator.results import (
        TAG_LATENCY_CLOCK,
        deciding_trials,
        search_trials,
    )

    parent, wall = run_or_resume(cfg)
    trials = search_trials(MlflowClient(cfg.tracking_uri()), parent)
    deciding = sorted(deciding_trials(trials), key=lambda t: -t.metrics.get("accuracy", -1))
    rows = [{"trial": t.name, "stage": t.stage, "run_id": t.run_id, **t.metrics,
             "latency_backend": t.params.get("latency_backend"),
             "latency_clock": t.tags.get(TAG_LATENCY_CLOCK),
             "policy": trial_policy(cfg, t.run_id).to_dict()} for t in deciding]
    return {"name": cfg.name, "parent_run_id": parent.info.run_id, "search_wall_s": wall,
            "searcher": cfg.search.searcher, "latency_backend": cfg.latency.backend,
            "round_to": resolved_round_to(cfg), "trials": len(trials), "deciding": rows}


def resolved_round_to(cfg: Any) -> int | None:
    """The kept-width multiple the search's space used (`space.round_to`, "auto" resolved)."""
    from prunetune.orchestrator import spaces

    return spaces.round_to(cfg)


def ms_in_turn(models: list[torch.nn.Module], shape: tuple[int, ...], backend: str,
               args: argparse.Namespace) -> list[float]:
    """Median ms of each model, timed in turn (`measured_models_ms`) on one CPU thread."""
    from prunetune.kernels import measured_models_ms

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return measured_models_ms(models, x, device="cpu", repeats=args.repeats,
                              bursts=args.bursts, backend=backend)


# -- part 1: speedups ---------------------------------------------------------------------------

def speedups_part(args: argparse.Namespace, pieces: Pieces) -> dict[str, Any]:
    """Per model: the uniform and the searched policy at each width setting, timed with the
    dense model in each backend at each batch."""
    out: dict[str, Any] = {}
    for model in args.models:
        row: dict[str, Any] = {"policies": {}, "searches": {}, "timings": {}}
        dense, pruned = None, {}
        for widths, multiple in WIDTHS.items():
            cfg = config(args, f"lb-{model}-flops50-{widths}", model,
                         space={"schemes": ["channel"], "round_to": multiple,
                                "budget": {"kind": "flops", "keep": FLOPS_KEEP}},
                         search={"trials": args.trials, "finalists": {"count": 0}},
                         finetune={"epochs": 0})
            search = pieces.get(f"search/{cfg.name}", _later(searched, cfg))
            dense, made, info = width_policies(cfg, search)
            pruned |= {f"{k}-{widths}": m for k, m in made.items()}
            row["policies"] |= {f"{k}-{widths}": v for k, v in info.items()}
            row["searches"][widths] = {k: search[k] for k in (
                "name", "parent_run_id", "trials", "search_wall_s", "wall_s", "searcher")}
        names = ["dense", *pruned]
        for backend in BACKENDS:
            for batch in args.batches:
                key = f"{backend}/b{batch}"
                row["timings"][key] = pieces.get(
                    f"time/{model}/{key}", timer(args, names, [dense, *pruned.values()],
                                                 (batch, 1, 28, 28), backend))
        row["summary"] = speedup_summary(row["timings"], names, args.batches)
        out[model] = row
        print(json.dumps({model: row["summary"]}, indent=1), flush=True)
    return out


def timer(args: argparse.Namespace, names: list[str], models: list[torch.nn.Module],
          shape: tuple[int, ...], backend: str) -> Callable[[], dict[str, Any]]:
    """A piece: `models` timed in turn in `backend` (ms by name, with the machine's load)."""
    return lambda: timed(lambda: {"ms": dict(zip(
        names, ms_in_turn(models, shape, backend, args), strict=True))})


def width_policies(cfg: Any, search: dict[str, Any],
                   ) -> tuple[torch.nn.Module, dict[str, torch.nn.Module], dict[str, Any]]:
    """The dense model; the uniform policy of the config's space and the search's best policy
    applied to it; what each policy is (FLOPs share, accuracy where known)."""
    from prunetune.orchestrator.spaces import build_space
    from prunetune.search_spaces import Policy, apply_policy
    from prunetune.search_spaces.baselines import uniform_policy

    dense, example, (pretrained, _) = dense_and_example(cfg)
    best = search["deciding"][0]
    policies = {"uniform": uniform_policy(build_space(cfg, dense, example)),
                "searched": Policy.from_dict(best["policy"])}
    pruned = {k: apply_policy(dense, p, example).eval() for k, p in policies.items()}
    info = {k: {"flops_ratio": _flops_ratio(dense, m, example), "round_to": cfg.space.round_to,
                "dense_test_accuracy": pretrained.metrics.get("test_accuracy"),
                "convs_width_mult16_share": _aligned(m)} for k, m in pruned.items()}
    info["searched"] |= {"trial": best["trial"], "proxy_val_accuracy": best["accuracy"],
                         "policy": best["policy"]}
    info["uniform"]["policy"] = policies["uniform"].to_dict()
    return dense, pruned, info


def _aligned(model: torch.nn.Module, multiple: int = 16) -> float:
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return sum(m.out_channels % multiple == 0 for m in convs) / max(1, len(convs))


def _flops_ratio(dense: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor) -> float:
    from prunetune.search_spaces import count_cost

    return count_cost(pruned, x).flops / count_cost(dense, x).flops


def speedup_summary(timings: dict[str, dict[str, Any]], names: list[str], batches: list[int],
                    ) -> dict[str, Any]:
    """Per model (and batch): speedup over dense per backend, and ORT latency / eager's."""
    out: dict[str, Any] = {}
    for name in names:
        for batch in batches:
            e, o = timings[f"eager/b{batch}"]["ms"], timings[f"onnxruntime/b{batch}"]["ms"]
            out[f"{name}/b{batch}"] = {
                "eager_ms": e[name], "onnxruntime_ms": o[name],
                "ort_over_eager": o[name] / e[name],
                "eager_speedup": e["dense"] / e[name],
                "onnxruntime_speedup": o["dense"] / o[name]}
    return out


# -- part 2: the search comparison --------------------------------------------------------------

def search_cfg(args: argparse.Namespace, label: str, seed: int) -> Any:
    backend, round_to, name = SEARCHES[label]
    return config(args, f"lb-search-{name}-s{seed}", "resnet20", seed=seed,
                  space={"schemes": ["channel"], "round_to": round_to,
                         "budget": {"kind": "latency", "keep": LATENCY_KEEP}},
                  search={"trials": args.search_trials,
                          "finalists": {"count": 2, "epochs": 1}},
                  finetune={"epochs": 0}, latency={"backend": backend})


def search_part(args: argparse.Namespace, pieces: Pieces) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seed in args.seeds:
        cfgs = {label: search_cfg(args, label, seed) for label in SEARCHES}
        searches = {b: pieces.get(f"search/{c.name}", _later(searched, c))
                    for b, c in cfgs.items()}
        # Keyed by the searches' names: other searches' finalists are other models.
        timing = pieces.get(f"ort-finalists/{'+'.join(c.name for c in cfgs.values())}",
                            _later(time_finalists, args, seed, searches))
        best = {b: (pieces.get(f"best-rescored/{c.name}",
                               _later(rescore, c, searches[b]["deciding"][0]))
                    if args.rescore else {})
                for b, c in cfgs.items()}
        out[f"seed{seed}"] = seed_summary(searches, timing, best)
        print(json.dumps({f"seed{seed}": out[f"seed{seed}"]["paired"]}, indent=1), flush=True)
    out["paired_mean"] = {f"{a} - {b}": paired_mean([out[f"seed{s}"]["paired"][f"{a} - {b}"]
                                                      for s in args.seeds])
                          for a, b in PAIRS}
    return out


def _later(fn: Callable[..., dict[str, Any]], *args: Any) -> Callable[[], dict[str, Any]]:
    """A piece: `fn(*args)`, timed (`timed`)."""
    return lambda: timed(lambda: fn(*args))


def time_finalists(args: argparse.Namespace, seed: int, searches: dict[str, Any],
                   ) -> dict[str, Any]:
    """Dense and every finalist of the searches of `seed`, timed in ONNX Runtime in turn."""
    from prunetune.search_spaces import Policy, apply_policy

    cfg = search_cfg(args, "onnxruntime", seed)
    dense, example, _ = dense_and_example(cfg)
    names, models = ["dense"], [dense]
    for b in SEARCHES:
        for row in searches[b]["deciding"]:
            names.append(f"{b}/{row['trial']}")
            models.append(apply_policy(dense, Policy.from_dict(row["policy"]), example).eval())
    ms = ms_in_turn(models, tuple(example.shape), "onnxruntime", args)
    return {"batch": 1, "ms": dict(zip(names, ms, strict=True))}


def rescore(cfg: Any, best: dict[str, Any]) -> dict[str, Any]:
    """The best finalist's policy fine-tuned again with the finalists' recipe and the search's
    seed, scored on val and test (trials report val accuracy only)."""
    from prunetune.search_spaces import Policy
    from prunetune.trainers import prune_and_evaluate

    _, _, (pretrained, data) = dense_and_example(cfg)
    recipe = cfg.finetune.model_copy(update={"epochs": cfg.search.finalists.epochs})
    result = prune_and_evaluate(pretrained.model, Policy.from_dict(best["policy"]), data,
                                recipe, seed=cfg.seed, splits=("val", "test"))
    return {"trial": best["trial"], "val_accuracy": result.scores["val"].accuracy,
            "test_accuracy": result.scores["test"].accuracy}


def seed_summary(searches: dict[str, Any], timing: dict[str, Any], best: dict[str, Any],
                 ) -> dict[str, Any]:
    dense_ms = timing["ms"]["dense"]
    budget_ms = dense_ms * LATENCY_KEEP
    per: dict[str, Any] = {}
    for b in SEARCHES:
        finalists = [{"trial": r["trial"], "val_accuracy": r["accuracy"],
                      "search_latency_ms": r.get("latency_ms"),
                      "search_latency_clock": r.get("latency_clock"),
                      "flops_ratio": r.get("flops_ratio"),
                      "ort_ms": timing["ms"][f"{b}/{r['trial']}"],
                      "ort_share_of_dense": timing["ms"][f"{b}/{r['trial']}"] / dense_ms}
                     for r in searches[b]["deciding"]]
        for f in finalists:
            f["meets_ort_budget"] = f["ort_ms"] <= budget_ms
        top = finalists[0]  # deciding rows are sorted by val accuracy
        per[b] = {"search": searches[b]["name"], "trials": searches[b]["trials"],
                  "round_to": searches[b].get("round_to"),
                  "search_wall_s": searches[b]["wall_s"], "finalists": finalists,
                  "all_meet_ort_budget": all(f["meets_ort_budget"] for f in finalists),
                  "best": {**top, "rescored": best[b] or None}}
    return {"dense_ort_ms": dense_ms, "ort_budget_ms": budget_ms, "timing": timing,
            "searches": per, "paired": {f"{a} - {b}": paired(per[a]["best"], per[b]["best"])
                                        for a, b in PAIRS}}


def paired(o: dict[str, Any], e: dict[str, Any]) -> dict[str, Any]:
    """Search `o`'s best finalist against search `e`'s, both timed in ONNX Runtime. Accuracy:
    the finalists' own val accuracy (what picked them); test only when rescored."""
    out = {"ort_ms_ort_search": o["ort_ms"], "ort_ms_eager_search": e["ort_ms"],
           "ort_ms_difference": o["ort_ms"] - e["ort_ms"],
           "ort_search_faster": o["ort_ms"] < e["ort_ms"],
           "val_accuracy_difference": o["val_accuracy"] - e["val_accuracy"],
           "ort_search_no_lower_val_accuracy": o["val_accuracy"] >= e["val_accuracy"]}
    if o["rescored"] and e["rescored"]:
        out["test_accuracy_difference"] = (o["rescored"]["test_accuracy"]
                                           - e["rescored"]["test_accuracy"])
    return out


def paired_mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_se(key: str) -> list[float]:
        values = [r[key] for r in rows]
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        return [statistics.fmean(values), se]

    out = {"seeds": len(rows), "ort_ms_difference": mean_se("ort_ms_difference"),
           "val_accuracy_difference": mean_se("val_accuracy_difference"),
           "ort_search_faster": sum(r["ort_search_faster"] for r in rows),
           "ort_search_no_lower_val_accuracy": sum(
               r["ort_search_no_lower_val_accuracy"] for r in rows)}
    if all("test_accuracy_difference" in r for r in rows):
        out["test_accuracy_difference"] = mean_se("test_accuracy_difference")
    return out


def report(result: dict[str, Any]) -> str:
    """The README tables (markdown) of a result file."""
    lines: list[str] = []
    models = result.get("speedups", {}).get("models", {})
    if models:
        lines += ["| model | policy | FLOPs | eager speedup b1 / b64 | ORT speedup b1 / b64 | "
                  "ORT ms / eager ms b1 / b64 |", "|---|---|---|---|---|---|"]
        for model, row in models.items():
            for name in ("dense", *row["policies"]):
                cells = [row["summary"][f"{name}/b{b}"] for b in (1, 64)
                         if f"{name}/b{b}" in row["summary"]]
                flops = row["policies"].get(name, {}).get("flops_ratio", 1.0)
                lines.append(f"| {model} | {name} | {flops:.3f} | " + " | ".join(
                    " / ".join(f"{c[k]:.2f}{'x' if k != 'ort_over_eager' else ''}"
                               for c in cells)
                    for k in ("eager_speedup", "onnxruntime_speedup", "ort_over_eager")) + " |")
    seeds = result.get("search", {}).get("seeds", {})
    if seeds:
        lines += ["", "| seed | backend | widths | finalists meeting the ORT budget | best: ORT ms "
                  "(share of dense) | best: val accuracy (test) |", "|---|---|---|---|---|---|"]
        for seed, row in seeds.items():
            if not seed.startswith("seed"):
                continue
            for b, srch in row["searches"].items():
                best = srch["best"]
                meets = sum(f["meets_ort_budget"] for f in srch["finalists"])
                lines.append(
                    f"| {seed[4:]} | {b} | {srch.get('round_to') or 'any'} | {meets} of "
                    f"{len(srch['finalists'])} (budget {row['ort_budget_ms']:.3f} ms) | "
                    f"{best['ort_ms']:.3f} ({best['ort_share_of_dense']:.2f}) | "
                    f"{best['val_accuracy']:.4f}{_test(best.get('rescored'))} |")
            for pair, d in row["paired"].items():
                test = d.get("test_accuracy_difference")
                lines.append(f"| {seed[4:]} | {pair} | | | {d['ort_ms_difference']:+.3f} | "
                             f"{d['val_accuracy_difference']:+.4f}"
                             f"{f' ({test:+.4f})' if test is not None else ''} |")
    return "\n".join(lines)


def _test(rescored: dict[str, Any] | None) -> str:
    return f" ({rescored['test_accuracy']:.4f})" if rescored else ""


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("speedups", "search", "all"), default="speedups")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--trials", type=int, default=40, help="proxy trials (speedups)")
    parser.add_argument("--search-trials", type=int, default=30,
                        help="proxy trials of each latency-budgeted search")
    parser.add_argument("--repeats", type=int, default=40, help="timing blocks per model")
    parser.add_argument("--bursts", type=int, default=8, help="interleaved bursts")
    parser.add_argument("--work", type=Path, default=default_cache_dir() / "latency_backends",
                        help="searches' workdir (MLflow store, Tune state) and partial.json")
    parser.add_argument("--rescore", action="store_true",
                        help="fine-tune each search's best finalist again to score it on test "
                             "(trials report val accuracy only)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", action="store_true",
                        help="print the README tables of the result file and stop")
    args = parser.parse_args(argv)
    if args.report:
        print(report(json.loads((args.out or OUT).read_text())))
        return {}
    if args.smoke:
        args.models, args.seeds, args.batches = ["resnet20"], [0], [1, 4]
        args.trials = args.search_trials = 4
        args.repeats, args.bursts = 6, 2
        args.work = args.work.with_name(args.work.name + "-smoke")
    out = args.out or (OUT if not args.smoke else args.work / "latency_backends.json")
    torch.set_num_threads(1)  # the timing thread; searches set their trials' own
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("part", "out", "models", "seeds", "rescore", "report")}
    pieces = Pieces(args.work / "partial.json", settings)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result |= {"settings": settings, "data": DATA | ({"smoke": True} if args.smoke else {}),
               "pretrain": PRETRAIN | {"epochs": PRETRAIN_EPOCHS},
               "machine": machine_info(), "code": code_version()}
    if args.part in ("speedups", "all"):
        result["speedups"] = {"flops_keep": FLOPS_KEEP, "backends": list(BACKENDS),
                              "models": speedups_part(args, pieces)}
        write_result(out, result, show={})
    if args.part in ("search", "all"):
        result["search"] = {"model": "resnet20", "latency_keep": LATENCY_KEEP,
                            "seeds": search_part(args, pieces)}
        write_result(out, result, show={})
    return result


if __name__ == "__main__":
    main()
