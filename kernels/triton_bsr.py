"""Triton kernels: BSR weight x dense activation (Linear, 1x1 conv) and block-sparse implicit-GEMM
convolution.

Each program computes one `BLOCK_M x bo` output tile: it walks the nonzero blocks of one block
row of the weight (so empty block rows cost one store of zeros, plus the bias) and multiplies each
`bi x bo` block with the matching `BLOCK_M x bi` activation tile, accumulating in fp32. Shapes
that are not multiples of the block are handled by masked loads and stores; the stored blocks are
zero-padded.

The kernels are compiled lazily (on first launch) rather than at import: `triton.jit` decides at
decoration time whether to build an interpreter function (`TRITON_INTERPRET=1`), so deferring it
lets a test set the variable after something else has imported this package. The kernels call
only Triton builtins (`tl.full`, not `tl.zeros`): library functions such as `tl.zeros` are
themselves jitted when `triton` is imported, and cannot run in an interpreter switched on after
that import. Block pointers
(`tl.make_block_ptr`) are gone in Triton 3.9, so addressing is plain pointer arithmetic.

No `from __future__ import annotations` here: Triton reads the `tl.constexpr` annotations of the
kernel signatures as objects.
"""

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

from prunetune.errors import KernelError, KernelInputError, KernelUnavailableError

from .bsr import BSRWeight

try:  # triton is a Linux-only dependency; the torch fallback works without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

__all__ = [
    "SUPPORTED_DTYPES",
    "bsr_conv2d",
    "bsr_linear",
    "interpreter_enabled",
    "triton_supported",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The one configuration used where autotuning is unavailable (interpreter): big enough to keep
# the number of interpreted programs small.
_FIXED_BLOCK_M = 64


def interpreter_enabled() -> bool:
    """True when `TRITON_INTERPRET` asks Triton to run kernels on the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def triton_supported(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on `device` (CUDA, or CPU under the interpreter)."""
    if triton is None or importlib.util.find_spec("triton") is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and interpreter_enabled()


# --------------------------------------------------------------------------------------------
# Kernel bodies (plain functions; jitted lazily by `_compiled`)


def _bsr_gemm_kernel(
    x_ptr, vals_ptr, crow_ptr, col_ptr, bias_ptr, y_ptr,
    M, N, K,
    stride_xb, stride_xm, stride_xk,
    stride_yb, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BO: tl.constexpr, BI: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """y[b, m, n] = sum_k x[b, m, k] * W[n, k] (+ bias[n]) with W in BSR form."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_b = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = tl.arange(0, BI)
    offs_o = tl.arange(0, BO)
    m_ok = offs_m < M
    x_rows = x_ptr + pid_b * stride_xb + offs_m[:, None] * stride_xm
    w_tile = offs_i[:, None] * BO + offs_o[None, :]
    start = tl.load(crow_ptr + pid_n)
    end = tl.load(crow_ptr + pid_n + 1)
    acc = tl.full((BLOCK_M, BO), 0.0, tl.float32)
    for p in range(start, end):
        offs_k = tl.load(col_ptr + p) * BI + offs_i
        x = tl.load(x_rows + offs_k[None, :] * stride_xk,
                    mask=m_ok[:, None] & (offs_k[None, :] < K), other=0.0)
        w = tl.load(vals_ptr + p * (BI * BO) + w_tile)
        if UPCAST:  # the interpreter (numpy) has no bf16 matmul
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)
    offs_n = pid_n * BO + offs_o
    n_ok = offs_n < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + pid_b * stride_yb + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _bsr_conv_kernel(
    x_ptr, vals_ptr, crow_ptr, col_ptr, bias_ptr, y_ptr,
    B, C, H, W, CO, HO, WO, KW, NCB,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_yb, stride_yc, stride_yh, stride_yw,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BO: tl.constexpr, BI: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Implicit-GEMM convolution: M = B*HO*WO output pixels, K-blocks = (tap, channel block)."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = tl.arange(0, BI)
    offs_o = tl.arange(0, BO)
    m_ok = offs_m < B * HO * WO
    ow = offs_m % WO
    oh = (offs_m // WO) % HO
    ob = offs_m // (WO * HO)
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_img = x_ptr + ob * stride_xb
    w_tile = offs_i[:, None] * BO + offs_o[None, :]
    start = tl.load(crow_ptr + pid_n)
    end = tl.load(crow_ptr + pid_n + 1)
    acc = tl.full((BLOCK_M, BO), 0.0, tl.float32)
    for p in range(start, end):
        kb = tl.load(col_ptr + p)
        tap = kb // NCB
        ci = (kb % NCB) * BI + offs_i
        ih = ih0 + (tap // KW) * DIL_H
        iw = iw0 + (tap % KW) * DIL_W
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x = tl.load(x_img[:, None] + (ih * stride_xh + iw * stride_xw)[:, None]
                    + ci[None, :] * stride_xc,
                    mask=pix_ok[:, None] & (ci[None, :] < C), other=0.0)
        w = tl.load(vals_ptr + p * (BI * BO) + w_tile)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)
    offs_n = pid_n * BO + offs_o
    n_ok = offs_n < CO
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_pix = ob * stride_yb + oh * stride_yh + ow * stride_yw
    y = y_ptr + y_pix[:, None] + offs_n[None, :] * stride_yc
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _autotune_configs() -> list[Any]:
    """A small set: the block shape is fixed by the data, so only the M tile and scheduling vary."""
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
            for bm, w, s in ((64, 4, 3), (128, 4, 3), (128, 8, 3), (128, 4, 4), (256, 8, 3))]


@functools.cache
def _compiled(interpret: bool) -> dict[str, Callable[..., Any]]:
    """Jit the kernels once per mode; autotuned on GPU, a fixed config in the interpreter."""
    if triton is None:
        raise KernelUnavailableError("triton is not installed; install it (pip install triton) "
                                     "or use backend='torch'")
    gemm, conv = triton.jit(_bsr_gemm_kernel), triton.jit(_bsr_conv_kernel)
    if not interpret:
        gemm = triton.autotune(configs=_autotune_configs(),
                               key=["M", "N", "K", "BO", "BI", "HAS_BIAS"])(gemm)
        conv = triton.autotune(configs=_autotune_configs(),
                               key=["B", "C", "H", "W", "CO", "HO", "WO", "KW", "BO", "BI"])(conv)
    return {"gemm": gemm, "conv": conv}


def _launch_options(x: torch.Tensor, interpret: bool) -> dict[str, Any]:
    if x.dtype not in SUPPORTED_DTYPES:
        raise KernelInputError(f"block-sparse kernels take {SUPPORTED_DTYPES}, got {x.dtype}; "
                               "cast the input (e.g. x.float())")
    if x.dtype == torch.float32 and not interpret and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"  # follow torch's own matmul setting for fp32
    else:
        precision = "ieee"
    opts: dict[str, Any] = {"UPCAST": interpret, "INPUT_PRECISION": precision}
    if interpret:
        opts["BLOCK_M"] = _FIXED_BLOCK_M
    return opts


def _check_operands(x: torch.Tensor, bsr: BSRWeight, bias: torch.Tensor | None) -> bool:
    if not triton_supported(x.device):
        raise KernelUnavailableError(f"the Triton kernels cannot run on {x.device}: they need "
                                     "CUDA, or TRITON_INTERPRET=1 on CPU; use backend='torch' "
                                     "instead")
    if bsr.values.dtype != x.dtype or bsr.values.device != x.device:
        raise KernelError(f"weight is {bsr.values.dtype} on {bsr.values.device}, input is "
                          f"{x.dtype} on {x.device}; move the module with .to(x)")
    if bias is not None and bias.numel() != bsr.n_out:
        raise KernelError(f"bias has {bias.numel()} elements, the weight {bsr.n_out} outputs")
    return interpreter_enabled() and x.device.type == "cpu"


def bsr_linear(x: torch.Tensor, bsr: BSRWeight, bias: torch.Tensor | None = None,
               ) -> torch.Tensor:
    """`... x K` activations times a BSR `N x K` weight (taps == 1) -> `... x N`."""
    interpret = _check_operands(x, bsr, bias)
    if bsr.taps != 1:
        raise KernelError(f"bsr_linear needs a 1-tap weight, got {bsr.taps} taps; use bsr_conv2d")
    if x.shape[-1] != bsr.channels:
        raise KernelError(f"input has {x.shape[-1]} features, the weight expects {bsr.channels}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, bsr.channels)
    m = x2.shape[0]
    y = torch.empty(m, bsr.n_out, device=x.device, dtype=x.dtype)
    if m:
        _launch_gemm(x2.unsqueeze(0), y.unsqueeze(0), bsr, bias, interpret)
    return y.reshape(*lead, bsr.n_out)


def _launch_gemm(x3: torch.Tensor, y3: torch.Tensor, bsr: BSRWeight,
                 bias: torch.Tensor | None, interpret: bool) -> None:
    """x3: `B x M x K` (any strides), y3: `B x M x N` (any strides)."""
    nb, m, k = x3.shape
    opts = _launch_options(x3, interpret)
    bo, bi = bsr.block

    def grid(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (bsr.n_block_rows, triton.cdiv(m, meta["BLOCK_M"]), nb)

    _compiled(interpret)["gemm"][grid](
        x3, bsr.values, bsr.crow, bsr.col, bias if bias is not None else bsr.values, y3,
        m, bsr.n_out, k, *x3.stride(), *y3.stride(),
        HAS_BIAS=bias is not None, BO=bo, BI=bi, **opts)


def bsr_conv2d(x: torch.Tensor, bsr: BSRWeight, bias: torch.Tensor | None, *,
               kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
               padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
               out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Block-sparse convolution (groups=1) of a `B x C x H x W` input -> `B x Co x Ho x Wo`.

    `padding` is the top/left padding; `out_size` overrides the output size (for asymmetric
    'same' padding). Channels-last inputs give channels-last outputs and contiguous gathers.
    """
    interpret = _check_operands(x, bsr, bias)
    if x.dim() != 4 or x.shape[1] != bsr.channels:
        raise KernelError(f"input must be B x {bsr.channels} x H x W, got {tuple(x.shape)}")
    r, s = kernel_size
    if r * s != bsr.taps:
        raise KernelError(f"kernel_size {kernel_size} has {r * s} taps, the weight {bsr.taps}")
    b, c, h, w = x.shape
    if out_size is None:
        out_size = tuple((size + 2 * pad - dil * (kern - 1) - 1) // st + 1
                         for size, pad, dil, kern, st
                         in zip((h, w), padding, dilation, kernel_size, stride, strict=True))
    ho, wo = out_size
    fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
           and not x.is_contiguous() else torch.contiguous_format)
    y = torch.empty(b, bsr.n_out, ho, wo, device=x.device, dtype=x.dtype, memory_format=fmt)
    if y.numel() == 0:
        return y
    if kernel_size == (1, 1) and stride == (1, 1) and padding == (0, 0) and _pixels_merge(x, y):
        # A 1x1 convolution is a GEMM over pixels: view B x C x H x W as B x (H*W) x C.
        _launch_gemm(x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2), bsr, bias,
                     interpret)
        return y
    opts = _launch_options(x, interpret)
    bo, bi = bsr.block

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (bsr.n_block_rows, triton.cdiv(b * ho * wo, meta["BLOCK_M"]))

    _compiled(interpret)["conv"][grid](
        x, bsr.values, bsr.crow, bsr.col, bias if bias is not None else bsr.values, y,
        b, c, h, w, bsr.n_out, ho, wo, s, bsr.n_channel_blocks, *x.stride(), *y.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        HAS_BIAS=bias is not None, BO=bo, BI=bi, **opts)
    return y


def _pixels_merge(x: torch.Tensor, y: torch.Tensor) -> bool:
    """True when H and W of both tensors collapse into one strided pixel axis (no copy)."""
    return all(t.stride(2) == t.shape[3] * t.stride(3) for t in (x, y))
