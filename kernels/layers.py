"""Table keys of a model's GEMM layers, synthetic layers for keys, and deployment form.

`layer_specs` runs a model once with hooks and returns, for every convolution / linear call, the
`LatencyKey` that describes it (shape, scheme, block, density, dtype, batch). `build_layer`
builds a layer with random weights that matches a key (for `bsr` keys: random blocks at the
key's density), so a missing table entry can be measured without the original model.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunetune.errors import KernelError

from .bsr import taps_to_conv_weight
from .modules import (
    DEFAULT_MIN_DENSITY_GAIN,
    BlockSparseConv2d,
    BlockSparseLinear,
    SemiStructuredLinear,
    resolve_backend,
    sparsify_model,
)
from .table import LatencyKey

__all__ = ["GEMM_TYPES", "LayerSpec", "build_layer", "deploy", "layer_specs"]

GEMM_TYPES = (nn.Linear, nn.Conv2d, BlockSparseLinear, BlockSparseConv2d, SemiStructuredLinear)


@dataclass(frozen=True)
class LayerSpec:
    """One GEMM layer of a deployed model: its table key (device filled in later) and the number
    of elements it outputs for the example input."""

    name: str
    key: LatencyKey
    out_elements: int


def _dtype_of(module: nn.Module) -> torch.dtype:
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _layer_key(module: nn.Module, x: torch.Tensor, device: str) -> LatencyKey:
    batch, dtype = int(x.shape[0]), _dtype_of(module)
    if isinstance(module, (nn.Linear, BlockSparseLinear, SemiStructuredLinear)):
        k, n = module.in_features, module.out_features
        rows = x.numel() // (k * batch)
        shape = (k, n, int(module.bias is not None), rows)
        if isinstance(module, BlockSparseLinear):
            return LatencyKey(device, "linear", shape, "bsr", module.block, module.density,
                              dtype, batch)
        scheme = "nm" if isinstance(module, SemiStructuredLinear) else "dense"
        return LatencyKey(device, "linear", shape, scheme, None, 0.5 if scheme == "nm" else 1.0,
                          dtype, batch)
    h, w = int(x.shape[2]), int(x.shape[3])
    if isinstance(module, BlockSparseConv2d):
        pad = (-1, -1) if module.same else module.padding
        shape = (module.channels, module.n_out, *module.kernel_size, *module.stride, *pad,
                 *module.dilation, 1, int(module.bias is not None), h, w)
        return LatencyKey(device, "conv2d", shape, "bsr", module.block, module.density, dtype,
                          batch)
    if isinstance(module.padding, str):
        pad = (-1, -1) if module.padding == "same" else (0, 0)
    else:
        pad = tuple(module.padding)
    shape = (module.in_channels, module.out_channels, *module.kernel_size, *module.stride, *pad,
             *module.dilation, module.groups, int(module.bias is not None), h, w)
    return LatencyKey(device, "conv2d", shape, "dense", None, 1.0, dtype, batch)


def layer_specs(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor], *,
                device_name: str = "") -> list[LayerSpec]:
    """The GEMM layers a forward pass of `model` runs, with their keys (one per call)."""
    specs: list[LayerSpec] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        specs.append(LayerSpec(names.get(module, "?"), _layer_key(module, args[0], device_name),
                               int(output.numel())))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, GEMM_TYPES)]
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return specs


def _random_block_mask(n: int, taps: int, c: int, block: tuple[int, int], density: float,
                       seed: int) -> torch.Tensor:
    """`n x taps x c` mask whose BSR copy stores `density` of the weight (blocks at random)."""
    bo, bi = block
    nbr, ncb = -(-n // bo), -(-c // bi)
    total = nbr * taps * ncb
    keep = min(total, max(0, round(density * n * taps * c / (bo * bi))))
    chosen = random.Random(seed).sample(range(total), keep)
    grid = torch.zeros(total, dtype=torch.bool)
    grid[chosen] = True
    grid = grid.reshape(nbr, 1, taps, ncb, 1).expand(nbr, bo, taps, ncb, bi)
    return grid.reshape(nbr * bo, taps, ncb * bi)[:n, :, :c].float()


def build_layer(key: LatencyKey, *, backend: str = "auto",
                ) -> tuple[nn.Module, torch.Tensor]:
    """A synthetic layer and input (CPU, fp32; the caller moves them) that match a table key."""
    seed = int(hashlib.sha1(key.to_str().encode()).hexdigest()[:8], 16)
    gen = torch.Generator().manual_seed(seed)
    if key.op == "linear":
        k, n, bias, rows = key.shape
        layer: nn.Module = nn.Linear(k, n, bias=bool(bias))
        x = torch.randn(key.batch, rows, k, generator=gen) if rows > 1 else torch.randn(
            key.batch, k, generator=gen)
        taps = 1
    elif key.op == "conv2d":
        ci, co, kh, kw, sh, sw, ph, pw, dh, dw, groups, bias, h, w = key.shape
        padding: Any = "same" if ph < 0 else (ph, pw)
        layer = nn.Conv2d(ci, co, (kh, kw), (sh, sw), padding, (dh, dw), groups, bool(bias))
        x = torch.randn(key.batch, ci, h, w, generator=gen)
        taps = kh * kw
    else:
        raise KernelError(f"only 'linear' and 'conv2d' keys describe a layer, got {key.op!r}")
    if key.scheme == "bsr":
        if key.block is None:
            raise KernelError(f"a 'bsr' key needs a block, got none: {key.to_str()}")
        n_out = layer.weight.shape[0]
        c = layer.weight.shape[1]
        mask_taps = _random_block_mask(n_out, taps, c, key.block, key.density, seed)
        if key.op == "conv2d":
            mask = taps_to_conv_weight(mask_taps, (key.shape[2], key.shape[3]))
            layer = BlockSparseConv2d.from_dense(layer, mask, key.block, backend=backend)
        else:
            layer = BlockSparseLinear.from_dense(layer, mask_taps.squeeze(1), key.block,
                                                 backend=backend)
    elif key.scheme == "nm":
        mask = torch.zeros_like(layer.weight)
        mask.view(mask.shape[0], -1, 4)[..., :2] = 1.0
        layer.weight.data *= mask
        layer = SemiStructuredLinear.try_from_dense(layer, mask) or layer
    dtype = getattr(torch, key.dtype)
    return layer.to(dtype=dtype).eval(), x.to(dtype)


def deploy(model: nn.Module, device: torch.device | str, *,
           min_density_gain: float = DEFAULT_MIN_DENSITY_GAIN) -> nn.Module:
    """A copy of the model as it would run on `device`: moved there, sparse layers swapped in
    (semi-structured N:M support depends on where the weights live, so move first)."""
    device = torch.device(device)
    first = next(iter(model.parameters()), None)
    if first is not None and first.device != device:
        model = copy.deepcopy(model).to(device)  # sparsify_model copies again; models are small
    backend = resolve_backend("auto", device)
    return sparsify_model(model, min_density_gain=min_density_gain, backend=backend)
