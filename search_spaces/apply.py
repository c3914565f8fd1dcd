"""`apply_policy`: turn a Policy into a new, smaller (channel) and / or sparser (masked) model."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .analysis import ModelAnalysis, graph_units
from .channel import kept_channels, prune_channels, zero_channels
from .graph import ChannelGraph
from .heads import cut_heads, head_scores, replace_mha_heads, zero_mha_heads
from .policy import Policy, PolicyError, UnitPolicy
from .swin_heads import replace_swin_heads, swin_head_scores, zero_swin_heads

__all__ = ["apply_policy", "nm_channel_multiples", "sparse_mask", "zero_pruned_channels"]


def sparse_mask(layer: nn.Module, up: UnitPolicy) -> torch.Tensor:
    """The mask `up` gives one layer's weight (same shape as the weight): its scheme's
    `PruningScheme.mask`."""
    scheme = up.spec
    if scheme.structural:
        raise PolicyError(f"scheme {up.scheme!r} is not a sparse scheme")
    return scheme.mask(layer.weight, up)


def _prunes(up: UnitPolicy) -> bool:
    return up.spec.prunes(up)


def nm_channel_multiples(policy: Policy, units: list[Any]) -> dict[str, int]:
    """Per channel-pruned unit whose channels feed a layer the policy prunes with a mask scheme
    that needs it (`PruningScheme.input_multiple`: N:M's M), the multiple its kept channels are
    rounded down to: that layer's reduction size (in x kh x kw) then stays a multiple of M
    after the channel cut, as N:M needs. `units`: the model's `PrunableUnit`s."""
    needs: dict[str, int] = {}  # layer -> the multiple its input channels are kept in
    by_name = {u.name: u for u in units}
    for name, up in policy.units.items():
        scheme = up.spec
        if scheme.structural or not _prunes(up) or name not in by_name:
            continue
        key = scheme.key(up)
        multiple = scheme.input_multiple(key)
        if multiple > 1:
            for layer in by_name[name].sparse_layers.get(key, ()):
                needs[layer] = math.lcm(needs.get(layer, 1), multiple)
    out = {}
    for u in units:
        m = math.lcm(*(needs.get(layer, 1) for layer in u.in_layers))
        up = policy.units.get(u.name)
        if m > 1 and up is not None and up.spec.structural:
            out[u.name] = m
    return out


def _is_mha(attention: nn.Module) -> bool:
    return isinstance(attention, nn.MultiheadAttention)


def _channel_plan(work: nn.Module, policy: Policy, example_input: Any, protect_output: bool
                  ) -> tuple[ChannelGraph, dict[str, Any], list[tuple[Any, ...]],
                             dict[str, list[int]]]:
    """The graph of `work`, its units by name, the channel-pruning plan of `policy` (validated
    against the units first) and the heads each `nn.MultiheadAttention` or Swin attention
    loses (by name; ranked on the unpruned weights, like every channel)."""
    graph = ChannelGraph(work, example_input, policy.importance)
    gunits, protected = graph_units(graph, work, protect_output)
    policy.validate(ModelAnalysis([g.unit for g in gunits], protected, 0.0, 0, None,
                                  policy.importance))
    by_name = {g.unit.name: g for g in gunits}
    multiple = policy.round_to or 1
    nm = nm_channel_multiples(policy, [g.unit for g in gunits])
    plan, mha_cuts = [], {}
    for name, up in policy.units.items():
        if not up.spec.structural or up.ratio <= 0:
            continue
        g = by_name[name]
        u = g.unit
        mult = math.lcm(u.multiple, multiple, nm.get(name, 1))
        kept = kept_channels(u.channels, u.ch_groups, up.ratio, mult)
        if g.group is None:  # nn.MultiheadAttention or Swin: heads kept = kept // head_dim
            scores = (head_scores(g.attention) if _is_mha(g.attention)
                      else swin_head_scores(g.attention))
            mha_cuts[name] = cut_heads(scores, kept // u.head_dim)
        else:
            plan.append((g.group, kept, u.ch_groups, g.attention, u.head_dim))
    return graph, by_name, plan, mha_cuts


def zero_pruned_channels(model: nn.Module, policy: Policy, example_input: Any, *,
                         protect_output: bool = True) -> tuple[nn.Module, list[str]]:
    """A copy of `model` (unpruned) with the channels `policy`'s channel units would remove
    zeroed instead: the check that `apply_policy` removed the right channels, since the two
    must compute the same outputs. Returns it with the layer kinds for which zeroing is not
    removal (empty: the outputs must agree exactly; see `channel.zero_channels`)."""
    work = copy.deepcopy(model)
    grad_flags = {n: p.requires_grad for n, p in work.named_parameters()}
    graph, by_name, plan, mha_cuts = _channel_plan(work, policy, example_input, protect_output)
    inexact = zero_channels(graph, plan) if plan else []
    for name, cut in mha_cuts.items():
        attention = by_name[name].attention
        (zero_mha_heads if _is_mha(attention) else zero_swin_heads)(attention, cut)
    for n, p in work.named_parameters():
        p.requires_grad_(grad_flags.get(n, True))
    work.train(model.training)
    return work, inexact


def apply_policy(model: nn.Module, policy: Policy, example_input: Any, *,
                 protect_output: bool = True) -> nn.Module:
    """A pruned deep copy of `model`; `model` itself is never changed.

    Channel units are removed first (the copy really shrinks; a heads unit loses whole heads,
    an `nn.MultiheadAttention` becoming a `heads.HeadsAttention`, a torchvision Swin attention
    a `swin_heads.SwinHeadsAttention`), then sparse units get their
    `weight_mask` buffers (and `prune_block` for block sparsity) on the shrunk layers. The same
    policy on the same weights gives the same model. Raises PolicyError for a policy that does
    not fit the model (unknown unit, scheme that does not apply, ratio out of range).
    """
    if not isinstance(policy, Policy):
        raise PolicyError(f"apply_policy needs a Policy, got {type(policy).__name__}; load files "
                          "with Policy.load(path)")
    work = copy.deepcopy(model)
    grad_flags = {n: p.requires_grad for n, p in work.named_parameters()}
    graph, by_name, plan, mha_cuts = _channel_plan(work, policy, example_input, protect_output)
    if plan:
        prune_channels(graph, plan)
    kinds = {n: _is_mha(by_name[n].attention) for n in mha_cuts}
    replace_mha_heads(work, {n: cut for n, cut in mha_cuts.items() if kinds[n]})
    replace_swin_heads(work, {n: cut for n, cut in mha_cuts.items() if not kinds[n]})
    modules = dict(work.named_modules())
    for name, up in policy.units.items():
        scheme = up.spec
        if scheme.structural or not _prunes(up):
            continue
        for layer_name in by_name[name].unit.sparse_layers[scheme.key(up)]:
            layer = modules[layer_name]
            try:
                mask = scheme.mask(layer.weight, up)
            except ValueError as err:  # a shape the scheme cannot take after the channel cut
                raise PolicyError(f"unit {name!r}, layer {layer_name!r}: {err}") from None
            scheme.attach(layer, mask, up)
    for n, p in work.named_parameters():
        p.requires_grad_(grad_flags.get(n, True))
    work.train(model.training)
    return work
