"""Block-sparse kernels vs dense GEMM/convolution and vs `torch.sparse`'s `bsr_dense_mm`.

    python benchmarks/kernels.py                      # CUDA machine: bf16, the full set
    python benchmarks/kernels.py --smoke --out F.json # CPU plumbing check (Triton interpreter)

GPU run (writes `benchmarks/results/kernels-<device>.json`): a 4096 x 4096 weight with 4096
tokens, and every convolution of ResNet-50 (224 x 224, batch `--batch`, the 3-channel stem
left out: it is never pruned), at 50/70/90% block sparsity, blocks 32 and 64, bf16. Timed with
`triton.testing.do_bench` (warm-up, L2 flush before each run, median). Per case:
- `dense_ms`: `torch.matmul` (cuBLAS) for the linear shape, `F.conv2d` (cuDNN, channels-last)
  for convolutions;
- `bsr_ms`: prunetune's kernels (`bsr_linear`, `bsr_conv2d`; channels-last activations);
- `torch_bsr_ms`: `torch.sparse._triton_ops.bsr_dense_mm` on the same blocks. For a k x k
  convolution it multiplies a prebuilt im2col matrix whose im2col is *not* timed, which favours
  torch.
Targets (issue 7): with 64-blocks, speedup over dense >= 0.8 / (1 - s) for s <= 75% on the
large shapes, and faster than `bsr_dense_mm` on every shape.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result

RESULTS = Path(__file__).resolve().parent / "results"


def resnet50_convs(min_in_channels: int = 16) -> list[dict[str, int]]:
    """Unique convolution shapes of torchvision's ResNet-50 at 224 x 224 (hooks, no weights)."""
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    shapes: dict[tuple[int, ...], dict[str, int]] = {}

    def hook(mod: torch.nn.Conv2d, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        h, w = args[0].shape[2:]
        spec = {"ci": mod.in_channels, "co": mod.out_channels, "k": mod.kernel_size[0],
                "stride": mod.stride[0], "pad": mod.padding[0], "h": int(h), "w": int(w)}
        if spec["ci"] >= min_in_channels:
            shapes.setdefault(tuple(spec.values()), spec)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return list(shapes.values())


def block_mask_taps(co: int, taps: int, ci: int, block: int, sparsity: float,
                    gen: torch.Generator) -> torch.Tensor:
    """`co x taps x ci` mask of whole `block x block` tiles (tap order), exactly `1 - s` kept."""
    nbr, ncb = -(-co // block), -(-ci // block)
    total = nbr * taps * ncb
    keep = torch.zeros(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=gen)[:round((1 - sparsity) * total)]] = True
    grid = keep.reshape(nbr, 1, taps, ncb, 1).expand(nbr, block, taps, ncb, block)
    return grid.reshape(nbr * block, taps, ncb * block)[:co, :, :ci].float()


def make_timer(device: str, repeats: int) -> Callable[[Callable[[], Any]], float]:
    """Median ms of a thunk: do_bench on CUDA, prunetune's CPU timer otherwise."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    from prunetune.kernels import measure_latency

    return lambda fn: measure_latency(lambda _: fn(), torch.zeros(1), device="cpu",
                                      repeats=repeats, warmup=1).median_ms


def torch_bsr_dense_mm() -> Callable[..., torch.Tensor] | None:
    try:
        from torch.sparse._triton_ops import bsr_dense_mm
    except ImportError:
        return None
    return bsr_dense_mm  # None where torch found no usable Triton


def bench_linear(n: int, k: int, tokens: int, block: int, sparsity: float, ctx: dict[str, Any],
                 ) -> dict[str, Any]:
    from prunetune.kernels import bsr_linear, dense_to_bsr

    dev, dtype, gen, timer = ctx["device"], ctx["dtype"], ctx["gen"], ctx["timer"]
    mask = block_mask_taps(n, 1, k, block, sparsity, gen).squeeze(1)
    w = (torch.randn(n, k, generator=gen) * mask).to(dev, dtype)
    x = torch.randn(tokens, k, generator=gen).to(dev, dtype)
    bsr = dense_to_bsr(w, mask.to(dev), (block, block))
    row = {"kind": "linear", "shape": f"{n}x{k} weight, {tokens} tokens", "block": block,
           "sparsity": sparsity, "density": bsr.density}
    ours = bsr_linear(x, bsr)
    row["max_abs_err"] = float((ours.float() - (x @ w.t()).float()).abs().max())
    row["dense_ms"] = timer(lambda: torch.matmul(x, w.t()))
    row["bsr_ms"] = timer(lambda: bsr_linear(x, bsr))
    mm = ctx["bsr_dense_mm"]
    if mm is not None:
        w_bsr = w.to_sparse_bsr((block, block))
        xt = x.t().contiguous()
        row["torch_bsr_max_abs_err"] = float((mm(w_bsr, xt).t().float() - ours.float())
                                             .abs().max())
        row["torch_bsr_ms"] = timer(lambda: mm(w_bsr, xt))
    return row


def bench_conv(spec: dict[str, int], batch: int, block: int, sparsity: float,
               ctx: dict[str, Any]) -> dict[str, Any]:
    from prunetune.kernels import bsr_conv2d, dense_to_bsr, taps_to_conv_weight

    dev, dtype, gen, timer = ctx["device"], ctx["dtype"], ctx["gen"], ctx["timer"]
    ci, co, k, st, pad = spec["ci"], spec["co"], spec["k"], spec["stride"], spec["pad"]
    mask_taps = block_mask_taps(co, k * k, ci, block, sparsity, gen)
    mask = taps_to_conv_weight(mask_taps, (k, k))
    w = (torch.randn(co, ci, k, k, generator=gen) * mask).to(dev, dtype)
    x = torch.randn(batch, ci, spec["h"], spec["w"], generator=gen).to(dev, dtype)
    x = x.to(memory_format=torch.channels_last)
    w_cl = w.to(memory_format=torch.channels_last)
    bsr = dense_to_bsr(w, mask.to(dev), (block, block))
    row = {"kind": "conv", "shape": f"{ci}->{co} k{k} s{st} {spec['h']}x{spec['w']} b{batch}",
           "block": block, "sparsity": sparsity, "density": bsr.density}

    def ours() -> torch.Tensor:
        return bsr_conv2d(x, bsr, None, kernel_size=(k, k), stride=(st, st), padding=(pad, pad))

    ref = F.conv2d(x, w_cl, None, st, pad)
    row["max_abs_err"] = float((ours().float() - ref.float()).abs().max())
    row["dense_ms"] = timer(lambda: F.conv2d(x, w_cl, None, st, pad))
    row["bsr_ms"] = timer(ours)
    mm = ctx["bsr_dense_mm"]
    if mm is not None:
        # GEMM view in tap order: W [co, k*k*ci] x im2col [k*k*ci, B*L] (im2col built untimed).
        cols = F.unfold(x.float(), k, padding=pad, stride=st)  # B x (ci*k*k) x L, order (ci,r,s)
        cols = cols.reshape(batch, ci, k * k, -1).transpose(1, 2).reshape(batch, k * k * ci, -1)
        cols = cols.permute(1, 0, 2).reshape(k * k * ci, -1).to(dtype).contiguous()
        w_taps = w.permute(0, 2, 3, 1).reshape(co, -1).contiguous()
        w_bsr = w_taps.to_sparse_bsr((block, block)) if ci % block == 0 and co % block == 0 \
            else None
        if w_bsr is not None:
            got = mm(w_bsr, cols).reshape(co, batch, -1).transpose(0, 1).reshape(ref.shape)
            row["torch_bsr_max_abs_err"] = float((got.float() - ref.float()).abs().max())
            row["torch_bsr_ms"] = timer(lambda: mm(w_bsr, cols))
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    for r in rows:
        r["speedup_vs_dense"] = r["dense_ms"] / r["bsr_ms"]
        r["ideal_speedup"] = 1.0 / (1.0 - r["sparsity"])
        if "torch_bsr_ms" in r:
            r["speedup_vs_torch_bsr"] = r["torch_bsr_ms"] / r["bsr_ms"]
    large = [r for r in rows if r["block"] == 64 and r["sparsity"] <= 0.75 and r.get("large")]
    vs_torch = [r for r in rows if "torch_bsr_ms" in r]
    return {
        "dense_target_cases": len(large),
        "dense_target_met": sum(r["speedup_vs_dense"] >= 0.8 * r["ideal_speedup"] for r in large),
        "torch_bsr_cases": len(vs_torch),
        "faster_than_torch_bsr": sum(r["bsr_ms"] < r["torch_bsr_ms"] for r in vs_torch),
        "max_abs_err": max((r["max_abs_err"] for r in rows), default=0.0),
    }


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU through the Triton interpreter (plumbing only)")
    parser.add_argument("--batch", type=int, default=32, help="ResNet-50 batch size (GPU)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None, help="result file (default: results/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")

    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are first jitted
        device, dtype, blocks, sparsities = "cpu", torch.float32, (16, 32), (0.5, 0.9)
        linear_shapes = [(64, 64, 32)]
        convs = [{"ci": 32, "co": 32, "k": 3, "stride": 1, "pad": 1, "h": 6, "w": 6},
                 {"ci": 32, "co": 64, "k": 1, "stride": 1, "pad": 0, "h": 6, "w": 6}]
        batch = 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/kernels.py needs a CUDA GPU; use --smoke on CPU")
        device, dtype, blocks, sparsities = "cuda", torch.bfloat16, (32, 64), (0.5, 0.7, 0.9)
        linear_shapes = [(4096, 4096, args.tokens)]
        convs = resnet50_convs()
        batch = args.batch
    ctx = {"device": device, "dtype": dtype, "gen": torch.Generator().manual_seed(args.seed),
           "timer": make_timer(device, repeats=3),
           # On CPU, torch's own BSR matmul stands in for bsr_dense_mm (CUDA-only) so the smoke
           # run checks the comparison's data layout (im2col order) too.
           "bsr_dense_mm": torch_bsr_dense_mm() if device == "cuda" else torch.matmul}

    rows: list[dict[str, Any]] = []
    for block in blocks:
        for s in sparsities:
            for n, k, t in linear_shapes:
                rows.append({**bench_linear(n, k, t, block, s, ctx), "large": n * k * t >= 2 ** 30})
                print(json.dumps(rows[-1]), flush=True)
            for spec in convs:
                # "Large" convolutions: at least 2^30 dense MACs, where launch overhead is noise.
                macs = spec["ci"] * spec["co"] * spec["k"] ** 2 * spec["h"] * spec["w"] * batch
                macs //= spec["stride"] ** 2
                rows.append({**bench_conv(spec, batch, block, s, ctx), "large": macs >= 2 ** 30})
                print(json.dumps(rows[-1]), flush=True)

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu-smoke"
    result = {"device": name, "dtype": str(dtype).replace("torch.", ""), "batch": batch,
              "tokens": args.tokens if not args.smoke else linear_shapes[0][2],
              "smoke": args.smoke, "machine": machine_info(), "summary": summarise(rows),
              "rows": rows}
    out = args.out or RESULTS / f"kernels-{device_slug(name)}.json"
    write_result(out, result, show=result["summary"])
    return result


if __name__ == "__main__":
    main()
