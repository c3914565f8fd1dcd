"""Peak memory of applying a policy to torchvision's vgg16_bn (untrained weights, built here).

    python benchmarks/mask_memory.py [--reference COMMIT] [--out PATH]

vgg16_bn's first classifier layer holds 102.8M of its 138.4M weights; a mask computed by sorting
the whole weight needs an int64 index per entry (822 MB for that layer alone). Each policy is
applied in a fresh child process: `analyze`, then `apply_policy` with unstructured pruning at
ratio 0.5 on every unit, or channel pruning at 0.3 on every unit. Recorded per policy: the
model's own size, the process's RSS before `apply_policy`, its peak RSS during it (ru_maxrss)
and the seconds `apply_policy` took. `apply_policy` returns a pruned copy, so the copy (1x the
model) and its masks (1x the masked weights) are part of any peak; the rest is temporaries.

`--reference COMMIT` also runs every policy with `search_spaces/schemes.py` as it was at that
commit (read with `git show`), the engine before masks were computed by selection, for the
comparison the README table shows, and times each sparse scheme's mask alone, both engines in
turn (best of `--repeats`), on that classifier layer's shape (4096 x 25088) and on a
512 x 512 x 3 x 3 convolution (random weights). Writes benchmarks/results/mask_memory.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
MODEL = "vgg16_bn"
POLICIES = {"unstructured-0.5": ("unstructured", 0.5), "channel-0.3": ("channel", 0.3)}
MIB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reference_schemes(commit: str) -> types.ModuleType:
    """schemes.py as of `commit`, as a module."""
    source = subprocess.run(["git", "show", f"{commit}:search_spaces/schemes.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    old = types.ModuleType("reference_schemes")
    exec(compile(source, f"{commit}:search_spaces/schemes.py", "exec"), old.__dict__)  # noqa: S102
    return old


def _use_reference_schemes(commit: str) -> None:
    """Make `apply_policy` compute masks with schemes.py as of `commit`."""
    from prunetune.search_spaces import apply as apply_module

    old = _reference_schemes(commit)
    for name in ("unstructured_mask", "block_mask", "nm_mask", "pattern_mask"):
        setattr(apply_module, name, getattr(old, name))


def scheme_seconds(reference: str, repeats: int) -> list[dict[str, object]]:
    """Seconds per mask, this engine and `reference`'s in turn, best of `repeats`."""
    import torch

    from prunetune.search_spaces import schemes

    old = _reference_schemes(reference)
    gen = torch.Generator().manual_seed(0)
    linear = torch.randn(4096, 25088, generator=gen)
    conv = torch.randn(512, 512, 3, 3, generator=gen)
    cases = [("unstructured 0.5", linear, lambda m, w: m.unstructured_mask(w, 0.5)),
             ("block 8x4 0.5", linear, lambda m, w: m.block_mask(w, 0.5, (8, 4))),
             ("nm 2:4", linear, lambda m, w: m.nm_mask(w, 2, 4)),
             ("unstructured 0.5", conv, lambda m, w: m.unstructured_mask(w, 0.5)),
             ("block 8x4 0.5", conv, lambda m, w: m.block_mask(w, 0.5, (8, 4))),
             ("nm 2:4", conv, lambda m, w: m.nm_mask(w, 2, 4)),
             ("pattern patdnn 0.7", conv, lambda m, w: m.pattern_mask(w, 0.7))]
    rows = []
    for label, weight, mask in cases:
        best = {"selection": math.inf, reference: math.inf}
        for _ in range(repeats):
            for name, module in (("selection", schemes), (reference, old)):
                t0 = time.perf_counter()
                mask(module, weight)
                best[name] = min(best[name], time.perf_counter() - t0)
        rows.append({"scheme": label, "shape": list(weight.shape),
                     "seconds": {k: round(v, 3) for k, v in best.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_one(policy_name: str, reference: str | None) -> dict[str, object]:
    import torch
    import torchvision

    from prunetune.search_spaces import Policy, UnitPolicy, analyze, apply_policy

    if reference:
        _use_reference_schemes(reference)
    torch.manual_seed(0)
    model = torchvision.models.get_model(MODEL, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    analysis = analyze(model, x)
    scheme, ratio = POLICIES[policy_name]
    policy = Policy({u.name: UnitPolicy(scheme, min(ratio, u.max_ratio(scheme)))
                     for u in analysis.units if scheme in u.schemes})
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters())
    before = _rss()
    t0 = time.perf_counter()
    pruned = apply_policy(model, policy, x)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        pruned(x)
    return {"model": MODEL, "policy": policy_name, "engine": reference or "selection",
            "units": len(policy.units), "model_mib": round(model_bytes / MIB),
            "largest_weight": largest, "rss_before_mib": round(before / MIB),
            "peak_rss_mib": round(peak / MIB),
            "peak_above_before_mib": round((peak - before) / MIB),
            "apply_seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", help="also run with schemes.py as of this commit")
    parser.add_argument("--out", default=str(RESULTS / "mask_memory.json"))
    parser.add_argument("--repeats", type=int, default=3, help="timings per scheme mask")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # child: POLICY ENGINE
    args = parser.parse_args()
    if args.one:
        policy_name, engine = args.one
        print("RESULT " + json.dumps(run_one(policy_name, None if engine == "-" else engine)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine_info, write_result

    runs = []
    for engine in ["-", *([args.reference] if args.reference else [])]:
        for policy_name in POLICIES:
            proc = subprocess.run([sys.executable, __file__, "--one", policy_name, engine],
                                  capture_output=True, text=True, check=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            runs.append(json.loads(line[len("RESULT "):]))
            print(json.dumps(runs[-1]), flush=True)
    times = scheme_seconds(args.reference, args.repeats) if args.reference else []
    write_result(Path(args.out), {"machine": machine_info(), "runs": runs,
                                  "mask_seconds": times}, show={})


if __name__ == "__main__":
    main()
