"""Cost counting: dense FLOPs (MACs) and parameters, and effective (non-zero) ones for sparsity.

Definition. FLOPs are multiply-accumulates per sample of every convolution, linear layer,
matrix product and attention that runs, counted at the aten level: exactly PyTorch's
`torch.utils.flop_counter.FlopCounterMode` count halved (one MAC per multiply-add; bias adds
not counted), with two of its gaps closed: the CPU kernel of `scaled_dot_product_attention`
counts like the GPU ones, and `nn.MultiheadAttention` runs its plain path (its fused inference
kernel has no formula). So functional calls count (torchvision's Swin runs its `qkv` / `proj`
weights through `F.linear`) and so do attention's products (`q @ k.T`, `attn @ v`, SDPA).
Element-wise work (norms, activations, pooling, softmax, residual adds) is not counted, as in
fvcore and FlopCounterMode, the counters behind published figures: at 224 px this counts
ResNet-50 4.09 G, MobileNetV2 0.30 G, ConvNeXt-T 4.46 G, Swin-T 4.49 G, ViT-B/16 17.56 G.
Until issue 29 prunetune counted Torch-Pruning's `count_ops_and_params` by module hooks, which
adds that element-wise work and misses functional calls and attention: against it CNN figures
fall by 0.4% (ResNet-18) to 6% (MobileNetV2) and Swin's more than double.

- `count_cost(model, example_input)` measures a real (pruned) model. A masked layer's weight
  MACs count at the layer's density (`effective_flops`); `flops` counts them dense, as
  FlopCounterMode does.
- `CostModel` predicts the cost of a policy on the analysed model without building it. Each op
  is attributed to a module (`layer_costs`): one that multiplies by a module's parameter is that
  module's weight work, which scales with the kept fraction of the module's output channels, of
  its input channels and with its density under a sparse scheme; a parameter-free product
  (attention) is the other work of the module that produced its input (the `qkv` layer), which
  scales with that module's kept outputs. That is exact for convolutions, linear layers and
  attention whose heads keep their count; MACs no module produced count at their dense cost,
  so the prediction never under-estimates for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
import torch_pruning as tp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count
from torch.utils.weak import WeakIdKeyDictionary

from prunetune.errors import SpaceError

from .channel import kept_channels_np
from .schemes import key_scheme, sparse_key, sparse_keys

__all__ = ["Cost", "CostModel", "LatencyWeights", "count_cost", "flop_counter_macs", "layer_costs",
           "sparse_key"]



def _batch_size(example_input: Any) -> int:
    if isinstance(example_input, torch.Tensor):
        return max(1, example_input.shape[0]) if example_input.dim() else 1
    values = (example_input.values() if isinstance(example_input, dict)
              else example_input if isinstance(example_input, (list, tuple)) else [])
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim():
            return max(1, v.shape[0])
    return 1


# FlopCounterMode's formulas (FLOPs = 2 x MACs), plus the CPU kernel of
# `scaled_dot_product_attention`, which it does not list (torch 2.14), with the same formula.
_FORMULAS = {**flop_registry,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                 flop_registry[torch.ops.aten._scaled_dot_product_flash_attention]}


def _is_weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))


class _AtenCounter(TorchDispatchMode):
    """Counts the MACs of every aten op `FlopCounterMode` has a formula for (convolutions,
    matrix products, attention) and attributes each to a module: an op that multiplies by a
    module's parameter (`conv(x, w)`, `addmm(b, x, w.t())`, also when called functionally,
    as torchvision's Swin does with its `qkv` weight) is that module's weight work; one
    without a parameter (`q @ k.T`, attention) is the other work of the module that produced
    its input, whose kept outputs it scales with."""

    def __init__(self, owners: dict[int, nn.Module]) -> None:
        super().__init__()
        self.owners = owners  # storage address of a parameter -> its module
        self.origin: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> producing module
        self.weight: dict[nn.Module, float] = {}
        self.other: dict[nn.Module | None, float] = {}

    def _owner(self, tensors: list[torch.Tensor]) -> nn.Module | None:
        for t in tensors:
            if t.dim() >= 2 and _address(t) in self.owners:
                return self.owners[_address(t)]
        return None

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in _FORMULAS:
            with self:  # as FlopCounterMode does: count what the op decomposes into
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        source = None
        if packet in _FORMULAS:
            macs = _FORMULAS[packet](*args, **kwargs, out_val=out) / 2
            source = self._owner(tensors)
            if source is not None:
                self.weight[source] = self.weight.get(source, 0.0) + macs
            else:
                source = next((self.origin[t] for t in tensors if t in self.origin), None)
                self.other[source] = self.other.get(source, 0.0) + macs
        else:
            source = next((self.origin[t] for t in tensors if t in self.origin), None)
        if source is not None:
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.origin[t] = source
        return out


def _address(t: torch.Tensor) -> int | None:
    """Address of a tensor's storage (shared by its views: `w.t()` is `w`), None without one."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, nested or fake tensors
        return None


def _aten_count(model: nn.Module, example_input: Any
                ) -> tuple[dict[nn.Module, float], dict[nn.Module | None, float]]:
    """({module: weight MACs}, {module or None: other MACs}) of one forward, whole batch."""
    owners = {_address(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    owners.pop(None, None)
    counter = _AtenCounter(owners)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's fused inference kernel has no MAC formula: run its plain path
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter:
            _forward(model, example_input)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.weight, counter.other


def _sdpa_cpu(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
              out_shape: Any = None, **kwargs: Any) -> int:
    # FlopCounterMode lists the CUDA kernels of scaled_dot_product_attention, not the CPU one
    return sdpa_flop_count(query, key, value)


@torch.no_grad()
def flop_counter_macs(model: nn.Module, x: torch.Tensor) -> float:
    """MACs per sample of `model` on `x` as PyTorch's FlopCounterMode counts them (its FLOPs /
    2; the CPU attention kernel given its CUDA twin's formula, nn.MultiheadAttention on its
    plain path): the independent reference `count_cost` is checked against (tests, coverage),
    by totals alone, without prunetune's attribution to modules."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no formula
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu})
    try:
        with counter:
            model.eval()(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops() / 2 / x.shape[0]


@torch.no_grad()
def layer_costs(model: nn.Module, example_input: Any, sources: dict | None = None
                ) -> tuple[float, int, dict[nn.Module, tuple[float, int, float]]]:
    """(total FLOPs per sample, total params, {module: (FLOPs, params, weight FLOPs)}).

    FLOPs are aten-level MACs (the module docstring). A module's weight FLOPs are the MACs of
    the ops that multiply by its own parameters, the part sparsity removes; its FLOPs add the
    parameter-free products (attention) computed from its outputs. Listed: every module with
    such work or parameters of its own, and every module Torch-Pruning's counter knows (the
    activations and pooling at 0 FLOPs, for latency terms). MACs no module can own (a product
    of inputs) count in the total only.
    sources: if given, filled with {module: the module whose output it consumed}, which
    lets the cost model scale an activation or pooling layer with the layer feeding it. A
    module called more than once (torchvision's Bottleneck runs one ReLU three times, on
    tensors of different widths) has no one source and is left out.
    """
    batch = _batch_size(example_input)
    producer: dict[int, nn.Module] = {}
    alive: list[torch.Tensor] = []  # keeps outputs alive so their ids stay unique
    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        calls[module] = calls.get(module, 0) + 1
        if inputs and isinstance(inputs[0], torch.Tensor) and id(inputs[0]) in producer:
            sources.setdefault(module, producer[id(inputs[0])])
        producer[id(output)] = module
        alive.append(output)

    mapped = tuple(tp.utils.op_counter.MODULES_MAPPING)
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if sources is not None and (_is_weighted(m) or isinstance(m, mapped))]
    was_training = model.training
    try:
        model.eval()
        weight, other = _aten_count(model, example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if sources is not None:
        for module in [m for m, n in calls.items() if n > 1 and m in sources]:
            del sources[module]
    table: dict[nn.Module, tuple[float, int, float]] = {}
    for m in model.modules():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        wf, of = weight.get(m, 0.0) / batch, other.get(m, 0.0) / batch
        if own or wf or of or isinstance(m, mapped):
            table[m] = (wf + of, own, wf)
    flops = (sum(weight.values()) + sum(other.values())) / batch
    params = sum(p.numel() for p in model.parameters())
    return float(flops), int(params), table


def _forward(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (list, tuple)):
        return model(*example_input)
    return model(example_input)


@dataclass
class Cost:
    """Cost of one model on one input shape; FLOPs are MACs per sample.

    per_layer: conv / linear module name -> {flops, params, effective_flops, effective_params,
    density}; per_unit: the same summed over each unit's layers when `count_cost` was given an
    analysis, else equal to per_layer.
    """

    flops: float
    params: int
    effective_flops: float
    effective_params: float
    sparsity: float
    per_layer: dict[str, dict[str, float]] = field(default_factory=dict)
    per_unit: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float]:
        return {"flops": self.flops, "params": float(self.params),
                "effective_flops": self.effective_flops,
                "effective_params": self.effective_params, "sparsity": self.sparsity}


@torch.no_grad()
def count_cost(model: nn.Module, example_input: Any, *, analysis: Any = None) -> Cost:
    """Dense and effective FLOPs / params of `model` (pruned or not) on `example_input`."""
    flops, params, table = layer_costs(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    per_layer: dict[str, dict[str, float]] = {}
    eff_flops, eff_params = flops, float(params)
    for m, (f, p, wf) in table.items():
        if not _is_weighted(m):
            continue
        mask = m._buffers.get("weight_mask")
        numel = m.weight.numel()
        removed_p = numel - int(torch.count_nonzero(mask)) if mask is not None else 0
        density = 1.0 - removed_p / numel
        removed_f = wf * removed_p / numel
        eff_flops -= removed_f
        eff_params -= removed_p
        per_layer[names[m]] = {"flops": f, "params": float(p), "effective_flops": f - removed_f,
                               "effective_params": p - removed_p, "density": density}
    per_unit = per_layer
    if analysis is not None:
        per_unit = {}
        for unit in analysis.units:
            rows = [per_layer[n] for n in unit.layers if n in per_layer]
            per_unit[unit.name] = {k: float(sum(r[k] for r in rows))
                                   for k in ("flops", "params", "effective_flops",
                                             "effective_params")}
    sparsity = 1.0 - eff_params / params if params else 0.0
    return Cost(flops, params, eff_flops, eff_params, sparsity, per_layer, per_unit)


class CostModel:
    """Analytic cost of a policy on the analysed model (see the module docstring).

    Built by `analyze`; holds only numpy arrays so it pickles small. Shapes: M modelled
    modules, U units. `w_*` / `o_*`: the weight part and the rest (bias, norm) of each module's
    FLOPs / params; `w_out` / `w_in`: (M, U) share of the module's output / input channels that
    belong to each unit; `owner`: (M,) unit whose sparse scheme prunes the module (-1: none);
    `m_out` / `m_in`: (M, U) 1 where a unit's kept fraction multiplies the module's outputs /
inputs on top of its channel shares (a heads unit of `nn.MultiheadAttention`: the inner width
of its in-projection and of its `out_proj`'s input, which the channel units shrink too; zeros
when not given);
`applies`: (len(keys), M) whether that row's scheme can prune the module; `keys`: the rows of
    the applicability table (`schemes.sparse_keys()` when the model was analysed: each mask
    scheme's `keys`); `names`: (M,) the modules' names in the model.
    """

    def __init__(self, *, dense_flops: float, dense_params: float, w_flops: np.ndarray,
                 o_flops: np.ndarray, w_params: np.ndarray, o_params: np.ndarray,
                 w_out: np.ndarray, w_in: np.ndarray, owner: np.ndarray, applies: np.ndarray,
                 channels: np.ndarray, ch_groups: np.ndarray, multiple: np.ndarray,
                 names: tuple[str, ...], keys: tuple[str, ...] | None = None,
                 m_out: np.ndarray | None = None, m_in: np.ndarray | None = None) -> None:
        self.dense_flops = float(dense_flops)
        self.dense_params = float(dense_params)
        self.w_flops, self.o_flops = w_flops, o_flops
        self.w_params, self.o_params = w_params, o_params
        self.w_out, self.w_in = w_out, w_in
        self.m_out = np.zeros_like(w_out) if m_out is None else m_out
        self.m_in = np.zeros_like(w_in) if m_in is None else m_in
        self.owner, self.applies = owner, applies
        self.channels, self.ch_groups, self.multiple = channels, ch_groups, multiple
        self.names = tuple(names)
        self.keys = tuple(sparse_keys() if keys is None else keys)
        # Per row: the multiple the input channels of a layer it prunes are kept in (N:M: M).
        self.row_multiple = np.array([key_scheme(k).input_multiple(k) for k in self.keys] + [1],
                                     dtype=np.int64)
        self.base_flops = self.dense_flops - float(w_flops.sum() + o_flops.sum())
        self.base_params = self.dense_params - float(w_params.sum() + o_params.sum())

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a cost model pickled before heads units (a resumed search's space) has no m_out/m_in
        state.setdefault("m_out", np.zeros_like(state["w_out"]))
        state.setdefault("m_in", np.zeros_like(state["w_in"]))
        self.__dict__.update(state)

    @property
    def n_units(self) -> int:
        return len(self.channels)

    def scales(self, ratio: np.ndarray, channel: np.ndarray, sparse_row: np.ndarray,
               round_to: int | None = None, sparse_gain: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Per module (M,): the kept fraction of its weight work (output x input channels x
        density) and of its outputs, for per-unit `ratio` (U,).

        channel: (U,) bool, unit is channel-pruned; sparse_row: (U,) int, row of `keys` of the
        unit's sparse scheme or -1. A sparse unit's density is 1 - ratio; with
        `sparse_gain` (one entry per row of `keys`) it is `1 - gain * ratio`, the work a
        device really saves (`LatencyWeights.sparse_gain`).
        """
        mult = self.multiple if not round_to else np.lcm(self.multiple, int(round_to))
        has_owner = self.owner >= 0
        owner = np.where(has_owner, self.owner, 0)
        row = sparse_row[owner]
        app = np.zeros(len(owner), dtype=bool)
        sel = has_owner & (row >= 0)
        app[sel] = self.applies[row[sel], np.nonzero(sel)[0]]
        # Channels feeding a masked layer are kept in multiples of what its scheme needs
        # (`PruningScheme.input_multiple`: N:M's M), as `apply.nm_channel_multiples` keeps them;
        # ratio 0 leaves the layer whole.
        module_m = np.where(app & (ratio[owner] > 0), self.row_multiple[np.maximum(row, 0)], 1)
        need = np.max(np.where(self.w_in > 0, module_m[:, None], 1), axis=0, initial=1)
        mult = np.where(channel & (need > 1), np.lcm(mult, need), mult)
        kept = kept_channels_np(self.channels, self.ch_groups, ratio, mult)
        pruned = np.where(channel, 1.0 - kept / self.channels, 0.0)
        # Heads of nn.MultiheadAttention (`heads.py`) multiply what the channel units keep.
        f_out = (1.0 - self.w_out @ pruned) * (1.0 - self.m_out @ pruned)
        f_in = (1.0 - self.w_in @ pruned) * (1.0 - self.m_in @ pruned)
        gain = 1.0 if sparse_gain is None else np.where(
            sparse_row >= 0, np.asarray(sparse_gain)[np.maximum(sparse_row, 0)], 0.0)
        density = np.where(sparse_row >= 0, 1.0 - gain * ratio, 1.0)
        d = np.where(app, density[owner], 1.0)
        return f_out * f_in * d, f_out

    def evaluate(self, ratio: np.ndarray, channel: np.ndarray, sparse_row: np.ndarray,
                 round_to: int | None = None) -> tuple[float, float]:
        """(effective FLOPs, effective params) for per-unit `ratio` (U,) (see `scales`)."""
        return self.totals(*self.scales(ratio, channel, sparse_row, round_to))

    def totals(self, scale_w: np.ndarray, f_out: np.ndarray) -> tuple[float, float]:
        """(effective FLOPs, effective params) from the per-module `scales`."""
        flops = self.base_flops + float(self.w_flops @ scale_w + self.o_flops @ f_out)
        params = self.base_params + float(self.w_params @ scale_w + self.o_params @ f_out)
        return flops, params


@dataclass(frozen=True)
class LatencyWeights:
    """A latency model linear in `CostModel.scales`, for latency budgets:
    `ms = base_ms + w_ms @ scale_w + o_ms @ f_out`, all arrays (M,) in the cost model's module
    order. `prunetune.kernels.LatencyPredictor.linear_terms` fits it from the latency table
    (weight work per layer, per-call overhead and element-wise work); this package only
    evaluates it, so it knows nothing of kernels or devices beyond the `device` label.
    """

    base_ms: float
    w_ms: np.ndarray
    o_ms: np.ndarray
    device: str = ""
    # Per row of the cost model's `keys`: the share of a sparse layer's removed weight work the
    # device saves (its time scales by `1 - gain * ratio`). None: 0 for every row, because a
    # masked layer that no sparse kernel runs still multiplies its zeros.
    sparse_gain: np.ndarray | None = None

    @property
    def gains(self) -> np.ndarray:
        return (np.zeros(len(sparse_keys())) if self.sparse_gain is None
                else np.asarray(self.sparse_gain, dtype=float))

    @property
    def dense_ms(self) -> float:
        return float(self.base_ms + self.w_ms.sum() + self.o_ms.sum())

    def ms(self, scale_w: np.ndarray, f_out: np.ndarray) -> float:
        return float(self.base_ms + self.w_ms @ scale_w + self.o_ms @ f_out)

    @classmethod
    def from_layers(cls, cost_model: CostModel, base_ms: float,
                    layers: dict[str, tuple[float, float]], device: str = "",
                    sparse_gain: dict[str, float] | None = None) -> LatencyWeights:
        """From per-layer `(weight-work ms, output-work ms)` keyed by module name. A layer the
        cost model does not scale counts in full in `base_ms`, so the model never
        under-estimates for it. `sparse_gain`: measured gains by row of the cost model's
        `keys` (`block`, `nm4`, ...); a key not given saves nothing."""
        keys = cost_model.keys
        gains = np.zeros(len(keys))
        for key, g in (sparse_gain or {}).items():
            if key not in keys or not (math.isfinite(g) and 0.0 <= g <= 1.0):
                raise SpaceError(f"sparse_gain must map names of {list(keys)} to gains "
                                 f"in [0, 1], got {key!r}: {g!r}")
            gains[keys.index(key)] = g
        index = {n: i for i, n in enumerate(cost_model.names)}
        w, o = np.zeros(len(index)), np.zeros(len(index))
        base = float(base_ms)
        for name, (w_ms, o_ms) in layers.items():
            if not (math.isfinite(w_ms) and math.isfinite(o_ms) and w_ms >= 0 and o_ms >= 0):
                raise SpaceError(f"latency terms must be finite and >= 0 ms, got {w_ms}, {o_ms} "
                                 f"for layer {name!r}")
            if name in index:
                w[index[name]] += w_ms
                o[index[name]] += o_ms
            else:
                base += w_ms + o_ms
        return cls(base, w, o, device, gains)
