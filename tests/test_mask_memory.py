"""Masks without a sort of the whole weight: the same masks as the sort-based definition, and no
temporary of several times the weight's size while computing them (issue 26, point 16: a
102.8M-weight VGG classifier layer needed an 822 MB int64 sort buffer)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from prunetune.search_spaces import masks
from prunetune.search_spaces.masks import (
    _PATTERNS,
    base_pattern_sparsity,
    block_mask,
    from_gemm_view,
    gemm_view,
    nm_mask,
    pattern_mask,
    unstructured_mask,
)

# --- the definitions, written as a full stable sort (the reference the selection must match) --


def _ref_prune_lowest(scores, k):
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.argsort(scores.flatten(), stable=True)[:k]] = False
    return keep


def _ref_unstructured(w, ratio):
    k = max(0, math.ceil(ratio * w.numel() - 1e-9))
    return _ref_prune_lowest(w.abs().float(), k).view_as(w).to(w.dtype)


def _ref_block(w, ratio, block):
    bo, bi = block
    w2 = gemm_view(w).float()
    rows, cols = w2.shape
    pr, pc = math.ceil(rows / bo) * bo, math.ceil(cols / bi) * bi
    padded, sizes = torch.zeros(pr, pc), torch.zeros(pr, pc)
    padded[:rows, :cols] = w2
    sizes[:rows, :cols] = 1.0
    norms = padded.pow(2).view(pr // bo, bo, pc // bi, bi).sum((1, 3)).sqrt().flatten()
    counts = sizes.view(pr // bo, bo, pc // bi, bi).sum((1, 3)).flatten()
    order = torch.argsort(norms, stable=True)
    cum = torch.cumsum(counts[order], 0)
    target = ratio * rows * cols
    n = 0 if target <= 0 else min(int(torch.searchsorted(cum, target - 1e-9)) + 1, len(cum))
    keep = torch.ones(norms.numel())
    keep[order[:n]] = 0.0
    full = keep.view(pr // bo, 1, pc // bi, 1).expand(pr // bo, bo, pc // bi, bi)
    return from_gemm_view(full.reshape(pr, pc)[:rows, :cols], w.shape).to(w.dtype)


def _ref_nm(w, n, m):
    runs = w.flatten(1).float().abs().reshape(-1, m)
    keep = torch.zeros_like(runs)
    keep.scatter_(1, torch.argsort(-runs, dim=1, stable=True)[:, :n], 1.0)
    return keep.reshape(w.shape).to(w.dtype)


def _ref_pattern(w, ratio, kind):
    out_c, in_c = w.shape[:2]
    kernels = w.float().reshape(out_c * in_c, 9).pow(2)
    pat = torch.zeros(len(_PATTERNS[kind]), 9)
    for i, p in enumerate(_PATTERNS[kind]):
        pat[i, list(p)] = 1.0
    best_energy, best = (kernels @ pat.T).max(1)
    mask, s, n_k = pat[best], base_pattern_sparsity(kind), out_c * in_c
    if ratio <= s:
        dense = _ref_prune_lowest(kernels.sum(1) - best_energy,
                                  min(n_k, max(0, math.ceil(ratio / s * n_k - 1e-9))))
        mask[dense] = 1.0
    else:
        cut = min(n_k, max(0, math.ceil((1 - (1 - ratio) / (1 - s)) * n_k - 1e-9)))
        mask[~_ref_prune_lowest(best_energy, cut)] = 0.0
    return mask.reshape(w.shape).to(w.dtype)


def _weights():
    gen = torch.Generator().manual_seed(0)
    for shape in [(64, 27), (70, 33, 3, 3), (33, 17), (9, 5, 3, 3), (130, 64, 1, 1),
                  (600, 2000)]:  # 1.2M entries: more than one slice of the chunked code
        w = torch.randn(shape, generator=gen)
        yield w
        yield (w * 2).round() / 2  # few distinct values: ties everywhere
        yield torch.zeros(shape)


RATIOS = (0.0, 0.1, 0.3, 0.5, 0.56, 0.7, 0.99)


@pytest.mark.parametrize("min_slice", [None, 1000])
def test_masks_equal_the_stable_sort_definition_on_every_scheme(min_slice, monkeypatch):
    if min_slice is not None:  # many slices per tensor: every slice boundary is exercised
        monkeypatch.setattr(masks, "_MIN_SLICE", min_slice)
    checked = 0
    for w in _weights():
        for r in RATIOS:
            assert torch.equal(unstructured_mask(w, r), _ref_unstructured(w, r)), (w.shape, r)
            for blk in [(4, 4), (8, 4), (16, 16), (64, 64)]:
                assert torch.equal(block_mask(w, r, blk), _ref_block(w, r, blk)), (w.shape, r, blk)
            if w.dim() == 4 and w.shape[2:] == (3, 3):
                for kind in _PATTERNS:
                    assert torch.equal(pattern_mask(w, r, kind), _ref_pattern(w, r, kind))
            checked += 1
        for m in (4, 8):
            if w[0].numel() % m == 0:
                for n in range(1, m + 1):
                    assert torch.equal(nm_mask(w, n, m), _ref_nm(w, n, m)), (w.shape, n, m)
    assert checked == 18 * len(RATIOS)


def test_unstructured_ties_and_nan_follow_the_stable_sort():
    w = torch.tensor([0.5, -0.5, 0.5, float("nan"), 0.1, -0.5, float("nan"), 2.0])
    for k in range(w.numel() + 1):
        ratio = k / w.numel()
        assert torch.equal(unstructured_mask(w, ratio), _ref_unstructured(w, ratio)), k


_MEASURE = r"""
import json, resource, sys, torch
from prunetune.search_spaces import schemes
scheme = sys.argv[1]
torch.manual_seed(0)
w = torch.randn(2720, 2720, 3, 3) if scheme == "pattern" else torch.randn(4096, 16384)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
base = rss()
make = {"unstructured": lambda: schemes.unstructured_mask(w, 0.5),
        "block": lambda: schemes.block_mask(w, 0.5, (8, 4)),
        "nm": lambda: schemes.nm_mask(w, 2, 4),
        "pattern": lambda: schemes.pattern_mask(w, 0.7, "patdnn")}[scheme]
mask = make()
# VmHWM: this address space's high-water mark. getrusage's ru_maxrss is not: exec keeps
# the parent's peak as its floor, so under a large pytest process it reads the parent.
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
print(json.dumps({"extra": peak - base, "weight": w.nbytes, "mask": mask.nbytes}))
"""


@pytest.mark.parametrize("scheme", ["unstructured", "block", "nm", "pattern"])
def test_mask_of_a_large_layer_needs_little_more_memory_than_the_mask(scheme):
    """Peak memory while masking a ~67M-weight layer (268 MB), measured as the process's peak
    RSS above its RSS once the weight exists: the mask itself (1x the weight) plus slices.
    A full stable sort needed ~5x (float copy, sort values, int64 indices, mask)."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, scheme], capture_output=True,
                          text=True, timeout=300, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["mask"] == got["weight"]
    assert got["extra"] < 1.5 * got["weight"], got


def test_masks_leave_torch_threads_as_they_found_them():
    """Masks run on one thread (the per-slice calls are memory-bound); the caller's setting
    comes back, after an error too."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        w = torch.randn(64, 16, 3, 3)
        for mask in (unstructured_mask(w, 0.5), block_mask(w, 0.5, (8, 4)), nm_mask(w, 2, 4),
                     pattern_mask(w, 0.5)):
            assert mask.shape == w.shape and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="multiple of m"):
            nm_mask(torch.randn(4, 3), 2, 4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
