"""The masks of the sparse pruning schemes: `block`, `nm`, `unstructured` and `pattern`.

Every mask here is a float tensor of the weight's exact shape, 1.0 = kept, 0.0 = pruned (the
contract in docs/CONTRACTS.md). Masks are computed on a GEMM view of a weight: N:M and
patterns on `weight.flatten(1)`, `(out, in/groups * kh * kw)` with the reduction ordered
`in, kh, kw`; blocks on the tap-major view `gemm_view`, `(out, kh * kw * in)`, the layout the
block-sparse kernels consume (the same matrix for Linear and 1x1 layers).

`channel` pruning is structural and lives in `channel.py`; this module only knows single layers.
Which scheme uses which mask, and on which layers, is said by the scheme objects in `schemes.py`.
All choices are deterministic: ties are broken as a stable sort breaks them (earlier index
first), never by chance, and selection replaces sorting where a weight-sized sort would be needed.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from prunetune.errors import PolicyError

__all__ = [
    "BLOCK_SHAPES",
    "NM_M_VALUES",
    "PATTERN_KINDS",
    "attach_mask",
    "base_pattern_sparsity",
    "block_mask",
    "block_sparse_weight",
    "enforce_masks",
    "from_gemm_view",
    "gemm_view",
    "gemm_view_of",
    "is_gemm_layer",
    "nm_from_ratio",
    "nm_mask",
    "pattern_mask",
    "unstructured_mask",
]

# (filters, reduction columns) on the GEMM view; 8x4 = 8 filters x 4 input columns.
BLOCK_SHAPES = ((4, 4), (8, 4), (8, 8), (16, 16), (32, 32), (64, 64))
NM_M_VALUES = (4, 8)
PATTERN_KINDS = ("patdnn", "row", "col")

# PatDNN-style 4-entry patterns of a 3x3 kernel (positions 0..8 row-major, 4 = centre): the four
# "T" shapes and the four 2x2 squares around the centre. Each keeps the centre, as PatDNN does.
_PATDNN = ((1, 3, 4, 5), (1, 4, 5, 7), (3, 4, 5, 7), (1, 3, 4, 7),
           (0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8))
# Row / column patterns (AutoSculpt-style): one whole row or column of the kernel is removed.
_ROW = ((3, 4, 5, 6, 7, 8), (0, 1, 2, 6, 7, 8), (0, 1, 2, 3, 4, 5))
_COL = ((1, 2, 4, 5, 7, 8), (0, 2, 3, 5, 6, 8), (0, 1, 3, 4, 6, 7))
_PATTERNS = {"patdnn": _PATDNN, "row": _ROW, "col": _COL}


def is_gemm_layer(layer: nn.Module) -> bool:
    """A dense GEMM: Linear, or a non-transposed convolution with groups == 1."""
    if isinstance(layer, nn.Linear):
        return True
    return (isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed
            and layer.groups == 1)


def base_pattern_sparsity(kind: str) -> float:
    """Fraction of a 3x3 kernel that one pattern of `kind` removes (5/9 for PatDNN's 4 of 9)."""
    return 1.0 - len(_PATTERNS[kind][0]) / 9.0


def _at_least(count: float) -> int:
    """The whole count that is not below `count` (float noise of 1e-9 aside): what a mask
    prunes so that its density never exceeds the one a budget counted."""
    return max(0, math.ceil(count - 1e-9))


# Masks are computed a slice at a time, so that no temporary of the whole weight's size exists
# beside the mask itself: a 102.8M-weight VGG classifier layer would otherwise need ~2 GB of
# sort buffers (int64 indices alone are twice the float32 weight). A slice is at least
# _MIN_SLICE entries and at most 1/_MAX_SLICES of the tensor: a few dozen torch calls per
# tensor (each call costs a thread-pool round trip, slow on a loaded machine) and slices whose
# temporaries stay a small share of the weight.
_MIN_SLICE = 1 << 20
_MAX_SLICES = 64


def _one_thread(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run `fn` with torch on one thread (restored after). A mask is a few dozen memory-bound
    calls per slice; with a thread pool each call waits for every thread, and on a loaded
    machine that wait dominated: block masks of a 102.8M-weight layer took 4.7 s on 2 threads
    and 0.9 s on 1 (benchmarks/mask_memory.py)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper


def _slice_len(n: int) -> int:
    return max(_MIN_SLICE, -(-n // _MAX_SLICES))


def _slices(n: int, multiple: int = 1, entries_per_item: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of the slices of `range(n)`, items of `entries_per_item` weight entries
    each (9 for a 3x3 kernel); each length a multiple of `multiple`."""
    size = max(1, _slice_len(n * entries_per_item) // entries_per_item)
    size = max(multiple, size - size % multiple)
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _below_and_tied(scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores < threshold, scores == threshold), with NaN the largest value (as torch.sort and
    numpy's partition order it): below a NaN threshold is every number, tied with it every NaN."""
    if math.isnan(threshold):
        tied = torch.isnan(scores)
        return ~tied, tied
    return scores < threshold, scores == threshold


def _lowest_threshold(buffer: np.ndarray, k: int) -> tuple[float, int]:
    """(t, r) for the `k` (>= 1) lowest of the float32 `buffer`: `t` is the k-th lowest value and
    `r` how many of the values equal to `t` are among the k lowest. A stable ascending sort
    prunes exactly the values below `t` and the first `r` (by index) values equal to `t`.

    Selection, not a sort: `buffer` is partitioned in place (its order is lost), which needs no
    index array and no second copy."""
    buffer.partition(k - 1)
    threshold = float(buffer[k - 1])
    head = torch.from_numpy(buffer[:k])  # all <= t after the partition
    below = sum(int(_below_and_tied(head[i:j], threshold)[0].sum()) for i, j in _slices(k))
    return threshold, k - below


def _write_keep(out: torch.Tensor, scores_at: Any, threshold: float, ties: int) -> None:
    """Fill the flat `out` with 1 (kept) / 0 (pruned): pruned are the scores below `threshold`
    and the first `ties` scores equal to it. `scores_at(i, j)` gives scores[i:j] as float32."""
    for i, j in _slices(out.numel()):
        pruned, tied = _below_and_tied(scores_at(i, j), threshold)
        if ties > 0 and bool(tied.any()):
            tie_rank = torch.cumsum(tied, 0)
            pruned |= tied & (tie_rank <= ties)
            ties -= int(tie_rank[-1])
        out[i:j] = ~pruned


def _prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-vector: all True except the `k` lowest scores (ties: earlier index first,
    as a stable sort orders them; NaN the largest)."""
    flat = scores.detach().reshape(-1).float().cpu()
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    k = min(k, flat.numel())
    if k > 0:
        threshold, ties = _lowest_threshold(flat.numpy().copy(), k)
        _write_keep(keep, lambda i, j: flat[i:j], threshold, ties)
    return keep


@torch.no_grad()
@_one_thread
def unstructured_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Magnitude pruning of `ceil(ratio * numel)` entries (never fewer than the ratio asks, so
    the density never exceeds the `1 - ratio` a budget counts); mask shape = weight shape.
    Ties: the earlier entry (row-major) is pruned first.

    Peak extra memory is one float32 copy of the weight, which becomes the mask."""
    flat = weight.detach().reshape(-1)
    n = flat.numel()
    k = min(_at_least(ratio * n), n)
    if k == 0:
        return torch.ones(weight.shape, dtype=weight.dtype)

    def magnitudes(i: int, j: int) -> torch.Tensor:
        return flat[i:j].abs().float().cpu()

    buffer = torch.empty(n, dtype=torch.float32)
    for i, j in _slices(n):
        buffer[i:j] = magnitudes(i, j)
    threshold, ties = _lowest_threshold(buffer.numpy(), k)
    _write_keep(buffer, magnitudes, threshold, ties)  # the buffer becomes the mask
    return buffer.view(weight.shape).to(weight.dtype)


def _gemm_rows(weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows `start:stop` of `gemm_view(weight)` (a copy of those rows only)."""
    return gemm_view(weight[start:stop])


@torch.no_grad()
@_one_thread
def block_mask(weight: torch.Tensor, ratio: float, block: tuple[int, int]) -> torch.Tensor:
    """Block sparsity on the tap-major GEMM view `(out, kh*kw*in)` (`gemm_view`) with blocks
    of `block = (bo, bi)`.

    Blocks are ranked by their L2 norm. Edge blocks of a shape that `block` does not divide are
    partial; blocks are pruned lowest-norm first (ties: the earlier block in row-major block
    order) until at least `ratio * numel` elements are, so the density never exceeds
    `1 - ratio` (the cost a budget counts) with partial blocks. Norms are computed and the mask
    written a band of block rows at a time: only the per-block arrays span the whole weight.
    """
    bo, bi = block
    weight = weight.detach()
    rows = weight.shape[0]
    cols = weight[0].numel()
    nbo, nbi = math.ceil(rows / bo), math.ceil(cols / bi)
    band = max(1, _slice_len(weight.numel()) // (bo * nbi * bi))  # block rows per slice
    norms = torch.empty(nbo, nbi)
    for b in range(0, nbo, band):
        r0, r1 = b * bo, min(rows, (b + band) * bo)
        part = _gemm_rows(weight, r0, r1).float().cpu().pow(2)
        padded = torch.nn.functional.pad(part, (0, nbi * bi - cols, 0, (r1 - r0) % bo and
                                                bo - (r1 - r0) % bo))
        norms[b:b + band] = padded.view(-1, bo, nbi, bi).sum((1, 3)).sqrt()
    row_sizes = torch.full((nbo,), float(bo))
    row_sizes[-1] = rows - (nbo - 1) * bo
    col_sizes = torch.full((nbi,), float(bi))
    col_sizes[-1] = cols - (nbi - 1) * bi
    counts = torch.outer(row_sizes, col_sizes).flatten()
    norms = norms.flatten()
    target = ratio * rows * cols
    order = torch.argsort(norms, stable=True)
    cum = torch.cumsum(counts[order], 0)
    # The fewest blocks whose elements reach the target (1e-9: float noise of ratio * numel).
    n_pruned = 0 if target <= 0 else min(int(torch.searchsorted(cum, target - 1e-9).item()) + 1,
                                          len(cum))
    keep = torch.ones(norms.numel(), dtype=weight.dtype)
    keep[order[:n_pruned]] = 0
    keep = keep.view(nbo, nbi)
    del order, cum, counts, norms
    mask = torch.empty(weight.shape, dtype=weight.dtype)
    mask_rows = gemm_view_of(mask)  # a view: writing it writes the mask
    for b in range(0, nbo, band):
        r0, r1 = b * bo, min(rows, (b + band) * bo)
        full = keep[b:b + band].repeat_interleave(bo, 0).repeat_interleave(bi, 1)
        mask_rows[r0:r1] = full[:r1 - r0, :cols].reshape(mask_rows[r0:r1].shape)
    return mask


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """A weight as the `(out, kh*kw*in)` matrix the block-sparse kernels multiply: for a k x k
    convolution the reduction runs tap by tap over the input channels (a block then covers
    channels of one tap, which the implicit-GEMM kernel can skip); Linear and 1 x 1 weights
    are `weight.flatten(1)`."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).flatten(1)
    return weight.flatten(1)


def gemm_view_of(weight: torch.Tensor) -> torch.Tensor:
    """`gemm_view(weight)` as a view, not a copy, with the reduction split into its
    `(kh, kw, in)` axes for a convolution: writing it writes `weight`."""
    return weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight.flatten(1)


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
@_one_thread
def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M sparsity: in every run of `m` consecutive reduction entries of the GEMM view keep the
    `n` largest magnitudes (ties: the earlier entry is kept). The reduction dimension
    `in*kh*kw` must be a multiple of `m`. Runs are ranked a slice at a time."""
    weight = weight.detach()
    reduction = weight[0].numel() if weight.dim() else 0
    if reduction % m:
        raise PolicyError(f"N:M needs the reduction size in*kh*kw = {reduction} to be a multiple "
                          f"of m = {m}; use m in {NM_M_VALUES} that divides it, or another scheme")
    flat = weight.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=weight.dtype)
    for i, j in _slices(flat.numel(), m):
        runs = flat[i:j].float().abs().cpu().view(-1, m)
        # Rank within each run: a stable descending sort keeps earlier entries on ties.
        order = torch.argsort(-runs, dim=1, stable=True)
        mask[i:j].view(-1, m).scatter_(1, order[:, :n], 1)
    return mask.view(weight.shape)


@torch.no_grad()
@_one_thread
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
    n_kernels = out_c * in_c
    kernels = weight.detach().reshape(n_kernels, 9)
    pat = torch.zeros(len(patterns), 9)
    for i, p in enumerate(patterns):
        pat[i, list(p)] = 1.0
    s = base_pattern_sparsity(kind)
    # Per kernel: its best pattern (first best on ties) and the score that ranks it: the energy
    # the pattern loses (ratio <= s), or the energy it keeps (connectivity pruning).
    best = torch.empty(n_kernels, dtype=torch.uint8)
    score = torch.empty(n_kernels)
    for i, j in _slices(n_kernels, entries_per_item=9):
        energy = kernels[i:j].float().cpu().pow(2)
        best_energy, best_pattern = (energy @ pat.T).max(1)
        best[i:j] = best_pattern
        score[i:j] = energy.sum(1) - best_energy if ratio <= s else best_energy
    if ratio <= s:
        n_pruned = min(n_kernels, _at_least(ratio / s * n_kernels))  # kernels patterned
    else:
        n_pruned = min(n_kernels, _at_least((1.0 - (1.0 - ratio) / (1.0 - s)) * n_kernels))
    keep = _prune_lowest(score, n_pruned)  # True: kernel dense (ratio <= s) / alive (above)
    del score
    mask = torch.empty(n_kernels, 9, dtype=weight.dtype)
    for i, j in _slices(n_kernels, entries_per_item=9):
        part = pat[best[i:j].long()]
        if ratio <= s:
            part[keep[i:j]] = 1.0
        else:
            part[~keep[i:j]] = 0.0
        mask[i:j] = part
    return mask.view(weight.shape)


@torch.no_grad()
def attach_mask(layer: nn.Module, mask: torch.Tensor,
                block: tuple[int, int] | None = None) -> None:
    """Store `mask` as the `weight_mask` buffer, zero the pruned weights and, for block
    sparsity, record `prune_block = (bo, bi)` (the contract with `kernels`)."""
    if mask.shape != layer.weight.shape:
        raise PolicyError(f"mask shape {tuple(mask.shape)} does not match weight shape "
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
        raise PolicyError("layer has no prune_block: only block-pruned layers convert to BSR")
    w2 = gemm_view(layer.weight.detach())
    if w2.shape[0] % block[0] or w2.shape[1] % block[1]:
        raise PolicyError(f"GEMM view {tuple(w2.shape)} is not a multiple of block {block}; "
                          "choose a block shape that divides it (see map_schemes)")
    with warnings.catch_warnings():  # "BSR support is in beta": known, and not the caller's
        warnings.simplefilter("ignore", UserWarning)
        return w2.to_sparse_bsr(tuple(block))
