"""2:4 semi-structured Linear layers (`SemiStructuredLinear`, what `deploy` swaps in for N:M 2:4
masks) against the dense Linear they replace.

    python benchmarks/semi_structured.py --out F.json          # CUDA machine, bf16
    python benchmarks/semi_structured.py --smoke --out F.json  # CPU: plumbing only

Per shape (in x out, tokens): the dense `nn.Linear` and the 2:4-pruned copy converted by
`SemiStructuredLinear.try_from_dense`, timed as `benchmarks/kernels.py` times (do_bench on
CUDA: warm-up, L2 flush, median), with the max |error| against the masked dense layer. Where
the conversion is refused (CPU, or a torch build without semi-structured support) the row says
`converted: false` and records the dense time only. Target: none set by an issue; 2:4 cannot
beat 2x, and a row below 1x means the deployment should keep that layer dense.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result

from kernels import RESULTS, device_slug, make_timer
from prunetune.kernels.modules import SemiStructuredLinear
from prunetune.search_spaces.schemes import attach_mask, nm_mask

# (in_features, out_features, tokens): a transformer block's GEMMs and a CNN classifier's.
GPU_SHAPES = ((4096, 4096, 4096), (4096, 11008, 4096), (11008, 4096, 4096), (2048, 1000, 256))
SMOKE_SHAPES = ((64, 64, 32),)


def two_four(linear: nn.Linear) -> nn.Linear:
    """`linear` 2:4-pruned as the engine prunes (`nm_mask`, `attach_mask`)."""
    attach_mask(linear, nm_mask(linear.weight, 2, 4))
    return linear


def bench(shape: tuple[int, int, int], device: str, dtype: torch.dtype, timer: Any,
          gen: torch.Generator) -> dict[str, Any]:
    k, n, tokens = shape
    dense = two_four(nn.Linear(k, n, bias=False)).to(device=device, dtype=dtype).eval()
    x = torch.randn(tokens, k, generator=gen).to(device=device, dtype=dtype)
    sparse = SemiStructuredLinear.try_from_dense(dense)
    row: dict[str, Any] = {"in": k, "out": n, "tokens": tokens, "converted": sparse is not None}
    with torch.inference_mode():
        row["dense_ms"] = timer(lambda: dense(x))
        if sparse is not None:
            row["semi_structured_ms"] = timer(lambda: sparse(x))
            row["speedup_vs_dense"] = row["dense_ms"] / row["semi_structured_ms"]
            row["max_abs_err"] = float((sparse(x) - dense(x)).abs().max())
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny shape on CPU")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        device, dtype, shapes = "cpu", torch.float32, SMOKE_SHAPES
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/semi_structured.py needs a CUDA GPU; use --smoke on CPU")
        device, dtype, shapes = "cuda", torch.bfloat16, GPU_SHAPES
    timer, gen = make_timer(device, repeats=5), torch.Generator().manual_seed(args.seed)
    rows = []
    for shape in shapes:
        rows.append(bench(shape, device, dtype, timer, gen))
        print(rows[-1], flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu-smoke"
    converted = [r for r in rows if r["converted"]]
    summary = {"shapes": len(rows), "converted": len(converted),
               "faster_than_dense": sum(r["speedup_vs_dense"] > 1.0 for r in converted)}
    result = {"device": name, "dtype": str(dtype).replace("torch.", ""), "smoke": args.smoke,
              "machine": machine_info(), "summary": summary, "rows": rows}
    write_result(args.out or RESULTS / f"semi_structured-{device_slug(name)}.json", result,
                 show=summary)
    return result


if __name__ == "__main__":
    main()
