"""Sparse pruning schemes: masks for `block`, `nm`, `unstructured` and `pattern` pruning.

Every mask here is a float tensor of the weight's exact shape, 1.0 = kept, 0.0 = pruned (the
contract in docs/CONTRACTS.md). Masks are computed on a GEMM view of a weight: N:M and
patterns on `weight.flatten(1)`, `(out, in/groups * kh * kw)` with the reduction ordered
`in, kh, kw`; blocks on the tap-major view `gemm_view`, `(out, kh * kw * in)`, the layout the
block-sparse kernels consume (the same matrix for Linear and 1x1 layers).

`channel` pruning is structural and lives in `channel.py`; this module only knows single layers.
All choices are deterministic: ties are broken by a stable sort, never by chance.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

__all__ = [
    "BLOCK_SHAPES",
    "MAX_RATIO",
    "NM_M_VALUES",
    "PATTERN_KINDS",
    "SCHEMES",
    "SPARSE_SCHEMES",
    "attach_mask",
    "base_pattern_sparsity",
    "block_mask",
    "block_sparse_weight",
    "enforce_masks",
    "from_gemm_view",
    "gemm_view",
    "layer_applies",
    "nm_from_ratio",
    "nm_mask",
    "pattern_mask",
    "unstructured_mask",
]

SCHEMES = ("channel", "block", "nm", "unstructured", "pattern")
SPARSE_SCHEMES = ("block", "nm", "unstructured", "pattern")
# (filters, reduction columns) on the GEMM view; 8x4 = 8 filters x 4 input columns.
BLOCK_SHAPES = ((4, 4), (8, 4), (8, 8), (16, 16), (32, 32), (64, 64))
NM_M_VALUES = (4, 8)
PATTERN_KINDS = ("patdnn", "row", "col")
# The largest ratio a policy may ask for, per scheme: channel pruning keeps at least a tenth of a
# unit so fine-tuning has something to recover from; N:M keeps at least 1 of M.
MAX_RATIO = {"channel": 0.9, "block": 0.99, "nm": 0.875, "unstructured": 0.99, "pattern": 0.99}

# PatDNN-style 4-entry patterns of a 3x3 kernel (positions 0..8 row-major, 4 = centre): the four
# "T" shapes and the four 2x2 squares around the centre. Each keeps the centre, as PatDNN does.
_PATDNN = ((1, 3, 4, 5), (1, 4, 5, 7), (3, 4, 5, 7), (1, 3, 4, 7),
           (0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8))
# Row / column patterns (AutoSculpt-style): one whole row or column of the kernel is removed.
_ROW = ((3, 4, 5, 6, 7, 8), (0, 1, 2, 6, 7, 8), (0, 1, 2, 3, 4, 5))
_COL = ((1, 2, 4, 5, 7, 8), (0, 2, 3, 5, 6, 8), (0, 1, 3, 4, 6, 7))
_PATTERNS = {"patdnn": _PATDNN, "row": _ROW, "col": _COL}


def _is_gemm_layer(layer: nn.Module) -> bool:
    """A dense GEMM: Linear, or a non-transposed convolution with groups == 1."""
    if isinstance(layer, nn.Linear):
        return True
    return (isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed
            and layer.groups == 1)


def layer_applies(layer: nn.Module, scheme: str, *, m: int = 4) -> bool:
    """Whether a sparse `scheme` can prune this one layer (`m` is N:M's group size)."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return False
    if scheme == "unstructured":
        return isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd))
    if scheme == "block":
        return _is_gemm_layer(layer)
    if scheme == "nm":
        return _is_gemm_layer(layer) and weight[0].numel() % m == 0
    if scheme == "pattern":
        return (isinstance(layer, nn.Conv2d) and layer.groups == 1
                and tuple(layer.kernel_size) == (3, 3))
    return False


def base_pattern_sparsity(kind: str) -> float:
    """Fraction of a 3x3 kernel that one pattern of `kind` removes (5/9 for PatDNN's 4 of 9)."""
    return 1.0 - len(_PATTERNS[kind][0]) / 9.0


def _at_least(count: float) -> int:
    """The whole count that is not below `count` (float noise of 1e-9 aside): what a mask
    prunes so that its density never exceeds the one a budget counted."""
    return max(0, math.ceil(count - 1e-9))


def _prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-vector: all True except the `k` lowest scores (stable: earlier index first)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.argsort(scores.flatten(), stable=True)
        keep[order[:k]] = False
    return keep


@torch.no_grad()
def unstructured_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Magnitude pruning of `ceil(ratio * numel)` entries (never fewer than the ratio asks, so
    the density never exceeds the `1 - ratio` a budget counts); mask shape = weight shape."""
    k = _at_least(ratio * weight.numel())
    return _prune_lowest(weight.detach().abs().float(), k).view_as(weight).to(weight.dtype)


@torch.no_grad()
def block_mask(weight: torch.Tensor, ratio: float, block: tuple[int, int]) -> torch.Tensor:
    """Block sparsity on the tap-major GEMM view `(out, kh*kw*in)` (`gemm_view`) with blocks
    of `block = (bo, bi)`.

    Blocks are ranked by their L2 norm. Edge blocks of a shape that `block` does not divide are
    partial; blocks are pruned lowest-norm first until at least `ratio * numel` elements are,
    so the density never exceeds `1 - ratio` (the cost a budget counts) with partial blocks.
    """
    bo, bi = block
    w2 = gemm_view(weight.detach()).float()
    rows, cols = w2.shape
    pr, pc = math.ceil(rows / bo) * bo, math.ceil(cols / bi) * bi
    padded = torch.zeros(pr, pc)
    padded[:rows, :cols] = w2
    sizes = torch.zeros(pr, pc)
    sizes[:rows, :cols] = 1.0
    # (nbo, bo, nbi, bi) -> per-block sums
    norms = padded.pow(2).view(pr // bo, bo, pc // bi, bi).sum((1, 3)).sqrt().flatten()
    counts = sizes.view(pr // bo, bo, pc // bi, bi).sum((1, 3)).flatten()
    target = ratio * rows * cols
    order = torch.argsort(norms, stable=True)
    cum = torch.cumsum(counts[order], 0)
    # The fewest blocks whose elements reach the target (1e-9: float noise of ratio * numel).
    n_pruned = 0 if target <= 0 else min(int(torch.searchsorted(cum, target - 1e-9).item()) + 1,
                                          len(cum))
    keep = torch.ones(norms.numel())
    keep[order[:n_pruned]] = 0.0
    full = keep.view(pr // bo, 1, pc // bi, 1).expand(pr // bo, bo, pc // bi, bi)
    return from_gemm_view(full.reshape(pr, pc)[:rows, :cols], weight.shape).to(weight.dtype)


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """A weight as the `(out, kh*kw*in)` matrix the block-sparse kernels multiply: for a k x k
    convolution the reduction runs tap by tap over the input channels (a block then covers
    channels of one tap, which the implicit-GEMM kernel can skip); Linear and 1 x 1 weights
    are `weight.flatten(1)`."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).flatten(1)
    return weight.flatten(1)


def from_gemm_view(matrix: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The inverse of `gemm_view` for a weight of `shape`."""
    if len(shape) == 4:
        out, cin, kh, kw = shape
        return matrix.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    return matrix.reshape(shape)


def nm_from_ratio(ratio: float, m: int) -> int:
    """N of an N:M pattern whose pruned fraction `1 - n/m` is nearest `ratio` (1 <= n <= m)."""
    return max(1, min(m, round((1.0 - ratio) * m)))


@torch.no_grad()
def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M sparsity: in every run of `m` consecutive reduction entries of the GEMM view keep the
    `n` largest magnitudes. The reduction dimension `in*kh*kw` must be a multiple of `m`."""
    w2 = weight.detach().flatten(1).float().abs()
    if w2.shape[1] % m:
        raise ValueError(f"N:M needs the reduction size in*kh*kw = {w2.shape[1]} to be a multiple "
                         f"of m = {m}; use m in {NM_M_VALUES} that divides it, or another scheme")
    runs = w2.reshape(-1, m)
    # Rank within each run: a stable descending sort keeps earlier entries on ties.
    order = torch.argsort(-runs, dim=1, stable=True)
    keep = torch.zeros_like(runs)
    keep.scatter_(1, order[:, :n], 1.0)
    return keep.reshape(weight.shape).to(weight.dtype)


@torch.no_grad()
def pattern_mask(weight: torch.Tensor, ratio: float, kind: str = "patdnn") -> torch.Tensor:
    """Kernel-pattern pruning of a 3x3 convolution with connectivity pruning.

    weight: `(out, in, 3, 3)`. Each kernel gets the pattern of `kind` that keeps most of its L2
    norm. A pattern alone removes a fixed share `s` of a kernel (5/9 for `patdnn`, 3/9 for `row`
    / `col`). For `ratio <= s` only the kernels that lose least get a pattern (the others stay
    dense); above `s` every kernel is patterned and whole kernels are removed, weakest first
    (connectivity pruning), so that the pruned fraction is `ratio` in both cases (at least
    `ratio`: counts of kernels are rounded up).
    """
    patterns = _PATTERNS[kind]
    out_c, in_c = weight.shape[:2]
    kernels = weight.detach().float().reshape(out_c * in_c, 9).pow(2)
    pat = torch.zeros(len(patterns), 9)
    for i, p in enumerate(patterns):
        pat[i, list(p)] = 1.0
    kept_energy = kernels @ pat.T  # (kernels, patterns)
    best_energy, best = kept_energy.max(1)  # first best pattern on ties
    mask = pat[best]  # (kernels, 9)
    s = base_pattern_sparsity(kind)
    n_kernels = out_c * in_c
    if ratio <= s:
        n_pat = min(n_kernels, _at_least(ratio / s * n_kernels))
        lost = kernels.sum(1) - best_energy
        dense = _prune_lowest(lost, n_pat)  # True: kernel stays dense
        mask[dense] = 1.0
    else:
        n_cut = min(n_kernels, _at_least((1.0 - (1.0 - ratio) / (1.0 - s)) * n_kernels))
        alive = _prune_lowest(best_energy, n_cut)
        mask[~alive] = 0.0
    return mask.reshape(weight.shape).to(weight.dtype)


@torch.no_grad()
def attach_mask(layer: nn.Module, mask: torch.Tensor,
                block: tuple[int, int] | None = None) -> None:
    """Store `mask` as the `weight_mask` buffer, zero the pruned weights and, for block
    sparsity, record `prune_block = (bo, bi)` (the contract with `kernels`)."""
    if mask.shape != layer.weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape "
                         f"{tuple(layer.weight.shape)}")
    mask = mask.to(device=layer.weight.device, dtype=layer.weight.dtype)
    if "weight_mask" in layer._buffers:
        mask = mask * layer.weight_mask
        layer.weight_mask = mask
    else:
        layer.register_buffer("weight_mask", mask)
    layer.weight.mul_(mask)
    if block is not None:
        layer.prune_block = (int(block[0]), int(block[1]))


@torch.no_grad()
def enforce_masks(model: nn.Module) -> None:
    """Re-zero every masked weight; call after each optimiser step (momentum and weight decay
    would otherwise bring pruned weights back)."""
    for module in model.modules():
        mask = module._buffers.get("weight_mask")
        if mask is not None:
            module.weight.mul_(mask)


def block_sparse_weight(layer: nn.Module) -> torch.Tensor:
    """The block-pruned layer's GEMM view `(out, kh*kw*in)` (`gemm_view`) as a torch BSR
    tensor with blocksize `layer.prune_block`. Both dimensions must be multiples of the block
    shape."""
    block = getattr(layer, "prune_block", None)
    if block is None:
        raise ValueError("layer has no prune_block: only block-pruned layers convert to BSR")
    w2 = gemm_view(layer.weight.detach())
    if w2.shape[0] % block[0] or w2.shape[1] % block[1]:
        raise ValueError(f"GEMM view {tuple(w2.shape)} is not a multiple of block {block}; "
                         "choose a block shape that divides it (see map_schemes)")
    with warnings.catch_warnings():  # "BSR support is in beta": known, and not the caller's
        warnings.simplefilter("ignore", UserWarning)
        return w2.to_sparse_bsr(tuple(block))
