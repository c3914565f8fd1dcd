"""Block-sparse-row (BSR) weights: conversion from masked dense layers and back.

A weight is seen as a GEMM matrix `N x K` (outputs x reduction). For a convolution the reduction
axis is ordered `(r, s, ci)` — kernel row, kernel column, input channel — and the channel axis is
padded to a multiple of the block width *inside each (r, s)*, so every K-block lies inside one
kernel tap and the activation gather for it is a contiguous run of channels. This differs from
`weight.flatten(1)`'s `(ci, r, s)` order (the order of the `prune_block` contract): masks are
permuted before blocking.

Stored blocks are transposed (`nnzb x bi x bo`) so a kernel loads `W^T` tiles row-major and feeds
them to `tl.dot(x_tile, w_tile)` without a transpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunetune.errors import KernelError

__all__ = [
    "KERNEL_BLOCKS",
    "BSRWeight",
    "block_occupancy",
    "bsr_to_dense",
    "choose_block",
    "conv_weight_to_taps",
    "dense_to_bsr",
    "kernel_block_from_prune_block",
    "stored_density",
    "taps_to_conv_weight",
]

# Block shapes the Triton kernels accept: `tl.dot` needs every tile dimension >= 16, and blocks
# wider than 64 leave too little sparsity to exploit in the layers prunetune targets.
KERNEL_BLOCKS: tuple[int, ...] = (16, 32, 64)

# Relative cost of one stored weight element per block shape (small blocks waste tensor-core
# tiles and pay more loop overhead). A heuristic used only to rank candidate blocks.
_BLOCK_COST = {64: 1.0, 32: 1.15, 16: 1.6}


@dataclass(frozen=True)
class BSRWeight:
    """A `N x (taps * C)` GEMM weight in block-sparse-row form.

    values: `nnzb x bi x bo` tensor (blocks stored transposed).
    crow: `(ceil(N / bo) + 1)` int32 tensor, block-row pointers.
    col: `nnzb` int32 tensor, block-column index `tap * ceil(C / bi) + channel_block`.
    n_out: N, the number of outputs (rows).
    taps: kernel taps `R * S` (1 for Linear).
    channels: C, reduction length per tap (input channels; `in_features` for Linear).
    block: `(bo, bi)`.
    """

    values: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    n_out: int
    taps: int
    channels: int
    block: tuple[int, int]

    @property
    def n_channel_blocks(self) -> int:
        return -(-self.channels // self.block[1])

    @property
    def n_block_rows(self) -> int:
        return -(-self.n_out // self.block[0])

    @property
    def nnzb(self) -> int:
        return int(self.col.numel())

    @property
    def density(self) -> float:
        """Stored elements (with padding) over the dense weight's elements."""
        bo, bi = self.block
        return self.nnzb * bo * bi / float(self.n_out * self.taps * self.channels)

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> BSRWeight:
        """Move the arrays (values may change dtype; indices stay int32)."""
        return BSRWeight(self.values.to(device=device, dtype=dtype), self.crow.to(device),
                         self.col.to(device), self.n_out, self.taps, self.channels, self.block)


def _check_block(block: tuple[int, int]) -> tuple[int, int]:
    if len(block) != 2 or any(b not in KERNEL_BLOCKS for b in block):
        raise KernelError(f"kernel block must be two sizes from {KERNEL_BLOCKS}, got {block!r}; "
                          "pass block=(bo, bi) with e.g. (32, 32)")
    return int(block[0]), int(block[1])


def conv_weight_to_taps(weight: torch.Tensor) -> torch.Tensor:
    """`Co x Ci x R x S` conv weight (or `N x K` linear weight) -> `Co x (R*S) x Ci`."""
    if weight.dim() == 2:
        return weight.unsqueeze(1)
    if weight.dim() != 4:
        raise KernelError(f"weight must be 2-D (linear) or 4-D (conv), got shape "
                          f"{tuple(weight.shape)}")
    co, ci, r, s = weight.shape
    return weight.permute(0, 2, 3, 1).reshape(co, r * s, ci)


def taps_to_conv_weight(taps: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `conv_weight_to_taps`: `Co x (R*S) x Ci` -> `Co x Ci x R x S`."""
    co, rs, ci = taps.shape
    r, s = kernel_size
    if r * s != rs:
        raise KernelError(f"kernel_size {kernel_size} has {r * s} taps, the weight has {rs}")
    return taps.reshape(co, r, s, ci).permute(0, 3, 1, 2).contiguous()


def _pad_taps(t: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Zero-pad `N x T x C` to `N' x T x C'` with N', C' multiples of the block."""
    bo, bi = block
    n, _, c = t.shape
    return torch.nn.functional.pad(t, (0, (-c) % bi, 0, 0, 0, (-n) % bo))


def block_occupancy(mask_taps: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Which blocks hold a kept element: `N x T x C` mask -> `nbr x (T * ncb)` bool tensor."""
    bo, bi = _check_block(block)
    padded = _pad_taps(mask_taps != 0, block)
    n, t, c = padded.shape
    grid = padded.reshape(n // bo, bo, t, c // bi, bi)
    return grid.any(dim=4).any(dim=1).reshape(n // bo, t * (c // bi))


def stored_density(mask_taps: torch.Tensor, block: tuple[int, int]) -> float:
    """Fraction of the dense weight a BSR copy with this block stores (padding included)."""
    bo, bi = block
    occupied = int(block_occupancy(mask_taps, block).sum())
    return occupied * bo * bi / float(mask_taps.numel())


def kernel_block_from_prune_block(prune_block: tuple[int, int] | None,
                                  ) -> tuple[int, int] | None:
    """The contract's `prune_block` as a kernel block, or None where the kernels have no block
    of that size. The engine's blocks lie on the tap-major GEMM view `out x kh*kw*in` (order
    (r, s, ci)), the kernels' own layout, so a prune block is a kernel block as it is."""
    if prune_block is None:
        return None
    bo, bi = int(prune_block[0]), int(prune_block[1])
    return (bo, bi) if bo in KERNEL_BLOCKS and bi in KERNEL_BLOCKS else None


def choose_block(mask_taps: torch.Tensor, *, preferred: tuple[int, int] | None = None,
                 candidates: tuple[tuple[int, int], ...] | None = None) -> tuple[int, int]:
    """Pick the kernel block with the lowest estimated cost for this mask.

    `mask_taps`: `N x T x C` mask (see `conv_weight_to_taps`). Cost = stored density x per-element
    cost of the block shape; `preferred` (the pruner's own block) wins ties.
    """
    if candidates is None:
        candidates = tuple((bo, bi) for bo in KERNEL_BLOCKS for bi in KERNEL_BLOCKS)
    if not candidates:
        raise KernelError("choose_block needs at least one candidate block, got none")
    best, best_cost = None, float("inf")
    for block in candidates:
        cost = stored_density(mask_taps, block) * max(_BLOCK_COST[block[0]], _BLOCK_COST[block[1]])
        if block == preferred:
            cost *= 0.999
        if cost < best_cost:
            best, best_cost = block, cost
    return best  # type: ignore[return-value]  # set: candidates is not empty


def dense_to_bsr(weight: torch.Tensor, mask: torch.Tensor | None, block: tuple[int, int],
                 ) -> BSRWeight:
    """Convert a masked dense weight to BSR.

    weight: `N x K` (Linear) or `Co x Ci x R x S` (Conv2d) tensor.
    mask: same shape, nonzero = kept; None keeps every nonzero weight element.
    block: `(bo, bi)` from `KERNEL_BLOCKS`; blocks with no kept element are dropped.
    """
    bo, bi = _check_block(block)
    if mask is None:
        mask = weight != 0
    if mask.shape != weight.shape:
        raise KernelError(f"mask shape {tuple(mask.shape)} must equal weight shape "
                          f"{tuple(weight.shape)}")
    w_taps = conv_weight_to_taps(weight * (mask != 0).to(weight.dtype))
    n, taps, channels = w_taps.shape
    occupied = block_occupancy(conv_weight_to_taps(mask), (bo, bi))
    padded = _pad_taps(w_taps, (bo, bi))
    nbr, ncb = padded.shape[0] // bo, padded.shape[2] // bi
    # blocks[row, col] is the (bo x bi) tile; transposed to (bi x bo) for the kernels.
    blocks = padded.reshape(nbr, bo, taps, ncb, bi).permute(0, 2, 3, 4, 1).reshape(
        nbr, taps * ncb, bi, bo)
    rows, cols = occupied.nonzero(as_tuple=True)  # row-major order, as BSR needs
    crow = torch.zeros(nbr + 1, dtype=torch.int32, device=weight.device)
    crow[1:] = torch.cumsum(occupied.sum(dim=1), 0).to(torch.int32)
    return BSRWeight(values=blocks[rows, cols].contiguous(), crow=crow,
                     col=cols.to(torch.int32).contiguous(), n_out=n, taps=taps,
                     channels=channels, block=(bo, bi))


def bsr_to_dense(bsr: BSRWeight) -> torch.Tensor:
    """`N x taps x C` dense tensor (tap order, unpadded) holding the BSR weight."""
    bo, bi = bsr.block
    nbr, ncb = bsr.n_block_rows, bsr.n_channel_blocks
    grid = bsr.values.new_zeros(nbr, bsr.taps * ncb, bi, bo)
    counts = (bsr.crow[1:] - bsr.crow[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(nbr, device=counts.device), counts)
    grid[rows, bsr.col.long()] = bsr.values
    dense = grid.reshape(nbr, bsr.taps, ncb, bi, bo).permute(0, 4, 1, 2, 3).reshape(
        nbr * bo, bsr.taps, ncb * bi)
    return dense[:bsr.n_out, :, :bsr.channels].contiguous()
