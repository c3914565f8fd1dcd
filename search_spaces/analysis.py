"""Model analysis: the prunable units of a model and their features.

A *unit* is one Torch-Pruning dependency group: the set of layers whose output channels must be
removed together (a residual stage's convolutions, a convolution and its depthwise successor,
the branches of a concatenation). Its stable name is the first convolution / linear layer of the
group in `model.named_modules()` order, e.g. `"layer1.0.conv1"`. For the sparse schemes a unit
prunes the weights of its `layers` (the conv / linear layers whose output channels it owns), so
every such layer of the model belongs to exactly one unit. Units that feed the model output are
protected (not listed) by default, so pruning never changes the output shape.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .channel import max_channel_ratio
from .cost import CostModel, layer_costs
from .graph import ChannelGraph
from .heads import mha_modules, timm_attentions
from .policy import Policy, PolicyError, UnitPolicy
from .schemes import get_scheme, key_scheme, scheme_names, sparse_keys
from .swin_heads import swin_attentions, swin_parts

__all__ = ["ModelAnalysis", "PrunableUnit", "analyze", "has_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` has a BatchNorm layer (statistics a pruned model can re-estimate, scales
    Torch-Pruning's BN-scale importance ranks by)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

_OPT = tp.ops.OPTYPE
_LAYER_TYPES = (_OPT.CONV, _OPT.LINEAR, _OPT.DEPTHWISE_CONV, _OPT.MHA, _OPT.LSTM)


@dataclass
class PrunableUnit:
    """One prunable unit. `layers`: conv / linear layers whose outputs it owns; `in_layers`:
    layers whose inputs follow it; `channels`: its channel count (in `ch_groups` equal groups,
    kept counts rounded to `multiple`); `schemes`: the schemes that apply; `sparse_layers`:
    per row of the applicability table (`schemes.sparse_keys()`: each mask scheme's `keys`),
    the layers that scheme prunes."""

    name: str
    layers: tuple[str, ...]
    in_layers: tuple[str, ...]
    channels: int
    ch_groups: int
    multiple: int
    schemes: tuple[str, ...]
    sparse_layers: dict[str, tuple[str, ...]]
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> GEMM (out, K)
    features: dict[str, Any] = field(default_factory=dict)
    # A heads unit (an attention block's heads, `heads.py`): its dense head count and width.
    # Its channels are whole heads' rows (`multiple` = head_dim), so `channel` at ratio r keeps
    # `kept_channels(...) // (ch_groups * head_dim)` heads, at least one.
    heads: int = 0
    head_dim: int = 0

    def max_ratio(self, scheme: str) -> float:
        found = get_scheme(scheme)
        if found.structural:  # whole channels: what the unit's groups and multiple allow
            return max_channel_ratio(self.channels, self.ch_groups, self.multiple,
                                     found.max_ratio)
        return found.max_ratio

    def check(self, up: UnitPolicy) -> None:
        """Raise PolicyError unless `up` can be applied to this unit."""
        if up.scheme not in self.schemes:
            raise PolicyError(f"scheme {up.scheme!r} does not apply to unit {self.name!r} "
                              f"({self.features.get('type', 'its layers')}); allowed: "
                              f"{', '.join(self.schemes) or 'none (leave the unit out)'}")
        up.spec.check_unit(self, up)
        hi = self.max_ratio(up.scheme)
        if up.ratio > hi + 1e-12:
            raise PolicyError(f"ratio must be in [0, {hi:.4g}] for unit {self.name!r} (scheme "
                              f"{up.scheme!r}, {self.channels} channels), got {up.ratio:g}")


@dataclass
class ModelAnalysis:
    """The units of a model (in `named_modules` order), the protected ones and the analytic
    cost model. Holds no modules or graph, so it pickles."""

    units: list[PrunableUnit]
    protected: list[str]
    dense_flops: float
    dense_params: int
    cost_model: CostModel | None
    importance: str = "magnitude"

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    def unit(self, name: str) -> PrunableUnit:
        for u in self.units:
            if u.name == name:
                return u
        raise PolicyError(f"unknown unit {name!r}; units are: {', '.join(self.names)}")

    def validate(self, policy: Policy) -> None:
        """Raise PolicyError unless every unit of `policy` exists, takes its scheme and its
        ratio."""
        units = {u.name: u for u in self.units}
        for name, up in policy.units.items():
            unit = units.get(name)
            if unit is None:
                hint = (" (it is protected: it feeds the model output)"
                        if name in self.protected else "")
                close = sorted(units)[:8]
                raise PolicyError(f"unknown unit {name!r}{hint}; units of this model are e.g. "
                                  f"{', '.join(close)} (run `prunetune analyze` for all)")
            unit.check(up)

    def table(self) -> list[dict[str, Any]]:
        """One flat row per unit (name, schemes, features) for printing."""
        return [{"unit": u.name, "schemes": ",".join(u.schemes), **u.features}
                for u in self.units]


def _layer_type(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise"
        if module.groups > 1:
            return "grouped"
        k = "x".join(str(v) for v in module.kernel_size)
        return f"conv{k}"
    return type(module).__name__.lower()


def _is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels)


@dataclass
class _GraphUnit:
    unit: PrunableUnit
    group: Any  # the Torch-Pruning group (only while the graph lives)
    out_parts: dict[nn.Module, int]
    in_parts: dict[nn.Module, int]
    # A heads unit: the module its cut starts from (timm: `proj`, whose input columns are the
    # heads; nn.MultiheadAttention: the module itself, replaced by `heads.HeadsAttention`).
    attention: nn.Module | None = None
    # Modules whose outputs / inputs a heads unit multiplies on top of the channel units
    # (nn.MultiheadAttention's in-projection / its out_proj; `CostModel.m_out`, `m_in`).
    mul_parts: dict[nn.Module, str] = field(default_factory=dict)


def _sparse_layers(layers: list[str], modules: dict[str, nn.Module]
                   ) -> dict[str, tuple[str, ...]]:
    """Per row of the applicability table (`schemes.sparse_keys()`), the layers that mask
    scheme can prune."""
    return {key: tuple(n for n in layers if key_scheme(key).applies(modules[n], key))
            for key in sparse_keys()}


def _group_parts(graph: ChannelGraph, root: nn.Module, group: Any, names: dict
                 ) -> tuple[dict[nn.Module, int], dict[nn.Module, int], bool, list[int], bool]:
    """(out parts, in parts, feeds the output, MHA head counts, reaches an unbind) of a
    group: the channel count each module loses on its outputs / inputs."""
    dg = graph.dg
    out_parts: dict[nn.Module, int] = {}
    in_parts: dict[nn.Module, int] = {}
    feeds_output, unbind, heads = False, False, []
    if group is None:  # blocked: whole layers, no index lists
        _, outs = graph.reach(root)
        out_parts = {m: int(dg.get_out_channels(m) or 1) for m in outs
                     if isinstance(m, nn.Module) and m in names}
        feeds_output = any(not dg.module2node[m].outputs for m in out_parts
                           if m in dg.module2node)
    for dep, idxs in group or ():
        node, mod = dep.target, dep.target.module
        is_out = dg.is_out_channel_pruning_fn(dep.handler)
        if not node.outputs and (is_out or node.type not in _LAYER_TYPES):
            feeds_output = True  # these channels reach the model output unchanged
        unbind |= node.type == _OPT.UNBIND
        if isinstance(mod, nn.MultiheadAttention):
            heads.append(mod.num_heads)
        if not isinstance(mod, nn.Module) or mod not in names:
            continue
        parts = out_parts if is_out else in_parts
        parts[mod] = parts.get(mod, 0) + len(idxs)
    return out_parts, in_parts, feeds_output, heads, unbind


def _mha_units(model: nn.Module) -> list[_GraphUnit]:
    """One heads unit per `nn.MultiheadAttention` (`heads.mha_modules`) and per torchvision
    Swin attention (`swin_heads.swin_attentions`), named after the module: channel pruning
    only (the graph does not see their projections, so a channel unit cannot own them, and
    the sparse schemes' masks stay with the units they are in); its channels are the inner
    width, in whole heads."""
    found = [(name, mha, mha.in_proj_weight.shape[0] // 3, {mha: "out", mha.out_proj: "in"})
             for name, mha in mha_modules(model).items()]
    found += [(name, attn, attn.qkv.out_features // 3, swin_parts(attn))
              for name, attn in swin_attentions(model).items()]
    units = []
    for name, attn, inner, parts in found:
        head_dim = inner // attn.num_heads
        unit = PrunableUnit(name, (), (), inner, 1, head_dim, ("channel",),
                            {key: () for key in sparse_keys()}, {}, heads=attn.num_heads,
                            head_dim=head_dim)
        units.append(_GraphUnit(unit, None, {}, {}, attn, parts))
    return units


def graph_units(graph: ChannelGraph, model: nn.Module,
                protect_output: bool = True) -> tuple[list[_GraphUnit], list[str]]:
    """Units of `model` read from its dependency graph, plus the protected unit names, and a
    heads unit per attention block (`heads.py`).

    A unit whose channels reach a reshape the graph cannot follow (`graph.py`), or an unbind
    that is no known attention's (arbitrary rows of a fused qkv layer), is kept for the sparse
    schemes but loses `channel`.
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    modules = dict(model.named_modules())
    attentions = timm_attentions(model)
    units: list[_GraphUnit] = []
    protected: list[str] = []
    weighted = (nn.Linear, nn.modules.conv._ConvNd)
    for root, group in graph.groups():
        out_parts, in_parts, feeds_output, heads, unbind = _group_parts(graph, root, group,
                                                                        names)
        layers = sorted((names[m] for m in out_parts if isinstance(m, weighted)),
                        key=order.__getitem__)
        name = layers[0] if layers else names.get(root, str(root))
        if protect_output and feeds_output:
            protected.append(name)
            continue
        in_layers = sorted((names[m] for m in in_parts if isinstance(m, weighted)),
                           key=order.__getitem__)
        channels = int(graph.dg.get_out_channels(root) or 1)
        ch_groups = max(1, graph.channel_groups(group)) if group is not None else 1
        multiple = math.lcm(*heads)
        attn = attentions.get(root) if group is not None else None
        if attn is not None:  # whole heads: (q, k, v) x heads x head_dim rows
            ch_groups, multiple = 3, attn.head_dim
        sparse = _sparse_layers(layers, modules)
        cuttable = (group is not None and channels // ch_groups > max(multiple, 1)
                    and (attn is not None or not unbind))
        schemes = [n for n in scheme_names()
                   if (cuttable if get_scheme(n).structural
                       else any(sparse[k] for k in get_scheme(n).keys()))]
        shapes = {n: (int(modules[n].weight.shape[0]), int(modules[n].weight[0].numel()))
                  for n in layers}
        unit = PrunableUnit(name, tuple(layers), tuple(in_layers), channels, ch_groups,
                            multiple, tuple(schemes), sparse, shapes,
                            heads=attn.num_heads if attn is not None else 0,
                            head_dim=attn.head_dim if attn is not None else 0)
        units.append(_GraphUnit(unit, group, out_parts, in_parts,
                                attn.proj if attn is not None else None))
    units += _mha_units(model)
    units.sort(key=lambda g: order.get(g.unit.name, len(order)))
    return units, protected


def _importance_stats(group: Any) -> dict[str, float]:
    """Summary of the unit's per-channel L2 norms (BOCR clusters layers on these)."""
    imp = tp.importance.MagnitudeImportance(p=2, group_reduction="mean", normalizer=None)
    scores = None
    try:
        if group is not None:
            with torch.no_grad():
                scores = imp(group)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError):
        # an exotic layer Torch-Pruning cannot score: the features fall back to 0
        scores = None
    if scores is None or scores.numel() == 0:
        return {k: 0.0 for k in ("imp_mean", "imp_cv", "imp_min", "imp_q25", "imp_median",
                                 "imp_q75", "imp_max")}
    s = scores.detach().double().cpu().numpy()
    mean = float(s.mean())
    rel = s / mean if mean > 0 else s
    q = np.quantile(rel, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"imp_mean": mean, "imp_cv": float(rel.std()), "imp_min": float(q[0]),
            "imp_q25": float(q[1]), "imp_median": float(q[2]), "imp_q75": float(q[3]),
            "imp_max": float(q[4])}


def _cost_model(model: nn.Module, gunits: list[_GraphUnit], flops: float, params: int,
                table: dict[nn.Module, tuple[float, int, float]], dg: Any,
                sources: dict[nn.Module, nn.Module]) -> CostModel:
    """Arrays of the analytic cost model (see `cost.CostModel`)."""
    modules = list(table)
    index = {m: i for i, m in enumerate(modules)}
    n_m, n_u = len(modules), len(gunits)
    w_flops, o_flops = np.zeros(n_m), np.zeros(n_m)
    w_params, o_params = np.zeros(n_m), np.zeros(n_m)
    for m, i in index.items():
        f, p, wf = table[m]
        weighted = isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
        wp = m.weight.numel() if weighted else 0
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            wp = m.in_proj_weight.numel()  # pruned on both sides, as a linear layer's weight
        w_flops[i], o_flops[i] = wf, max(0.0, f - wf)
        w_params[i], o_params[i] = wp, max(0, p - wp)
    w_out, w_in = np.zeros((n_m, n_u)), np.zeros((n_m, n_u))
    mul = {"out": np.zeros((n_m, n_u)), "in": np.zeros((n_m, n_u))}
    owner = np.full(n_m, -1)
    keys = sparse_keys()  # the rows of the applicability table, as the units were read
    applies = np.zeros((len(keys), n_m), dtype=bool)
    by_name = dict(model.named_modules())
    for u, g in enumerate(gunits):
        for m, k in g.out_parts.items():
            if m in index:
                total = dg.get_out_channels(m) or k
                w_out[index[m], u] += k / total
        for m, k in g.in_parts.items():
            if m in index and not _is_depthwise(m):
                total = dg.get_in_channels(m) or k
                w_in[index[m], u] += k / total
        for m, side in g.mul_parts.items():
            if m in index:
                mul[side][index[m], u] = 1.0
        for name in g.unit.layers:
            m = by_name[name]
            if m in index:
                owner[index[m]] = u
                for r, key in enumerate(keys):
                    applies[r, index[m]] = name in g.unit.sparse_layers[key]
    # Activations and pooling are not in the graph: they scale with the layer feeding them.
    # A conv or linear layer outside every unit's outputs (the protected output layer behind a
    # dropout, say) keeps all its outputs.
    for m, src in sources.items():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        i, seen = index.get(m), {m}
        while i is not None and not w_out[i].any() and src in index and src not in seen:
            w_out[i] = w_out[index[src]]
            seen.add(src)
            src = sources.get(src)
    for m, i in index.items():  # true cost (issue 29): attention's embedding is pruned on
        # both sides of in_proj and on out_proj, which its forward runs outside the graph
        if isinstance(m, nn.MultiheadAttention):
            w_in[i] = w_out[i]
            if m.out_proj in index:
                w_out[index[m.out_proj]] = w_in[index[m.out_proj]] = w_out[i]
    np.clip(w_out, 0.0, 1.0, out=w_out)
    np.clip(w_in, 0.0, 1.0, out=w_in)
    name_of = {m: n for n, m in by_name.items()}
    return CostModel(
        dense_flops=flops, dense_params=params, w_flops=w_flops, o_flops=o_flops,
        w_params=w_params, o_params=o_params, w_out=w_out, w_in=w_in, owner=owner,
        applies=applies, channels=np.array([g.unit.channels for g in gunits], dtype=float),
        ch_groups=np.array([g.unit.ch_groups for g in gunits], dtype=float),
        multiple=np.array([g.unit.multiple for g in gunits], dtype=np.int64),
        names=tuple(name_of[m] for m in modules), keys=keys, m_out=mul["out"], m_in=mul["in"])


def analyze(model: nn.Module, example_input: Any, *, protect_output: bool = True,
            importance: str = "magnitude") -> ModelAnalysis:
    """Find the prunable units of `model` and their features; `model` is not modified.

    example_input: what `model(example_input)` accepts, e.g. a `(1, 3, 32, 32)` tensor; its
    shape fixes FLOPs. Features per unit: layer type, in / out channels, kernel, stride,
    groups of its first layer; FLOPs, params and their shares; depth (0 = first layer, 1 =
    last); summary statistics of the per-channel weight norms.
    """
    work = copy.deepcopy(model)
    graph = ChannelGraph(work, example_input, importance)
    gunits, protected = graph_units(graph, work, protect_output)
    sources: dict[nn.Module, nn.Module] = {}
    flops, params, table = layer_costs(work, example_input, sources)
    modules = dict(work.named_modules())
    layer_order = [n for n, m in work.named_modules()
                   if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    depth_of = {n: i / max(1, len(layer_order) - 1) for i, n in enumerate(layer_order)}
    for g in gunits:
        u = g.unit
        first = modules[u.name]
        u_flops = sum(table[m][0] * k / (graph.dg.get_out_channels(m) or k)
                      for m, k in g.out_parts.items() if m in table)
        u_flops += sum(table[m][0] for m in g.mul_parts if m in table)
        u_params = sum(p.numel() for n in u.layers for p in modules[n].parameters())
        u_params += sum(p.numel() for m in g.mul_parts for p in m.parameters(recurse=False))
        types = sorted({type(m).__name__ for m in g.out_parts})
        u.features = {
            "type": _layer_type(first),
            "layer_types": ",".join(types),
            "in_channels": int(getattr(first, "in_channels", getattr(first, "in_features", 0))),
            "out_channels": int(getattr(first, "out_channels",
                                        getattr(first, "out_features", 0))),
            "kernel": int(max(getattr(first, "kernel_size", (1,)))),
            "stride": int(max(getattr(first, "stride", (1,)))),
            "groups": int(getattr(first, "groups", 1)),
            "depthwise": int(any(_is_depthwise(modules[n]) for n in u.layers)),
            "channels": u.channels,
            "n_layers": len(u.layers),
            "n_coupled": len(g.out_parts) + len(g.in_parts),
            "flops": float(u_flops),
            "params": int(u_params),
            "flops_share": float(u_flops / flops) if flops else 0.0,
            "params_share": float(u_params / params) if params else 0.0,
            "depth": float(depth_of.get(u.name, depth_of.get(
                f"{u.name}.out_proj", depth_of.get(f"{u.name}.qkv", 0.0)))),
            "heads": u.heads,
            **_importance_stats(g.group),
        }
    cost_model = _cost_model(work, gunits, flops, params, table, graph.dg, sources)
    return ModelAnalysis([g.unit for g in gunits], protected, flops, params, cost_model,
                         importance)
