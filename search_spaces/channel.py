"""Channel pruning: structural removal of whole channels through Torch-Pruning.

The dependency graph (`graph.ChannelGraph`, a `tp.DependencyGraph`) couples layers
that must lose the same channels (residual adds, concatenations, depthwise convolutions). We
decide the kept-channel count of every unit ourselves (`kept_channels`, shared with the analytic
cost model so the space's budget arithmetic and the real pruned model agree exactly), rank the
channels with a Torch-Pruning importance and let Torch-Pruning remove them group by group.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from .graph import ChannelGraph, make_importance
from .heads import cut_heads, fix_heads

__all__ = ["channel_cuts", "kept_channels", "kept_channels_np", "max_channel_ratio",
           "prune_channels", "zero_channels"]

# Torch-Pruning pruners of layers after which a zeroed channel is exactly a removed one: the
# layer's weights and bias for that channel (and a BatchNorm's scale and shift) are zero, so
# the channel carries 0, and 0 stays 0 through the activations and pooling that follow. The
# pruners of parameter-free ops (`tp.ops`: adds, concatenations, reshapes) only pass channels
# through.
_ZERO_EXACT = {"ConvPruner", "DepthwiseConvPruner", "LinearPruner", "BatchnormPruner",
               "PReLUPruner", "ElementWisePruner", "ReshapePruner", "ConcatPruner",
               "SplitPruner", "SlicePruner", "UnbindPruner", "ExpandPruner", "OutputPruner"}


def kept_channels(channels: int, ch_groups: int, ratio: float, multiple: int = 1) -> int:
    """Channels a unit keeps at `ratio`.

    Torch-Pruning ranks channels within each of `ch_groups` channel groups (grouped convs) and
    keeps `int(per_group * (1 - ratio))` per group; we round that down to `multiple` (round_to,
    attention heads) and never below `multiple` or 1.
    """
    per_group = channels // ch_groups
    kept = int(per_group * (1.0 - ratio))
    if multiple > 1:
        kept -= kept % multiple
    kept = max(kept, min(multiple, per_group), 1)
    return kept * ch_groups


def kept_channels_np(channels: np.ndarray, ch_groups: np.ndarray, ratio: np.ndarray,
                     multiple: np.ndarray) -> np.ndarray:
    """Vectorised `kept_channels` (same float arithmetic, so the same integers)."""
    per_group = channels // ch_groups
    kept = np.floor(per_group * (1.0 - ratio))
    kept = kept - np.where(multiple > 1, np.mod(kept, multiple), 0)
    kept = np.maximum(kept, np.maximum(np.minimum(multiple, per_group), 1))
    return kept * ch_groups


def max_channel_ratio(channels: int, ch_groups: int, multiple: int, cap: float) -> float:
    """The largest ratio that still removes nothing below the unit's minimum width."""
    per_group = channels // ch_groups
    return max(0.0, min(cap, (per_group - max(multiple, 1)) / per_group))


def _fix_torchvision(model: nn.Module) -> None:
    """Torchvision models that cache a width outside any layer need it updated after pruning."""
    # Only a model built by torchvision can need this, and then torchvision is imported
    # already: looking it up instead of importing it saves seconds for every other model.
    vit = sys.modules.get("torchvision.models.vision_transformer")
    if vit is None:
        return
    VisionTransformer = vit.VisionTransformer
    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels


def _head_cut(graph: ChannelGraph, proj: nn.Module, kept: int, ch_groups: int,
              head_dim: int) -> tuple[nn.Module, Any, list[int]] | None:
    """A timm attention's cut by whole heads: its `proj`'s input columns of the lowest-ranked
    heads (the group's importance, averaged over each head's columns, as Torch-Pruning's
    `prune_num_heads` ranks them); Torch-Pruning's graph removes their q, k and v rows."""
    dg = graph.dg
    width = proj.in_features
    handler = dg.get_pruner_of_module(proj).prune_in_channels
    group = dg.get_pruning_group(proj, handler, list(range(width)))
    imp = graph.estimate_importance(group)
    if imp is None:  # e.g. bn_scale on a unit without batch norm
        imp = make_importance("magnitude")(group)
    scores = imp.view(width // head_dim, head_dim).mean(1)
    cut = cut_heads(scores, kept // (ch_groups * head_dim))
    if not cut:
        return None
    return proj, handler, [h * head_dim + j for h in cut for j in range(head_dim)]


@torch.no_grad()
def channel_cuts(graph: ChannelGraph, plan: list[tuple[Any, ...]]
                 ) -> list[tuple[nn.Module, Any, list[int]]]:
    """The channels `plan` removes: (root module, Torch-Pruning handler, channel indices) per
    group that loses any. `plan` lists (Torch-Pruning group, kept channels, ch_groups[, the
    `proj` of a timm attention whose heads the group's channels are, and its head_dim]).

    As in Torch-Pruning's own pruner, every group's channel importance is computed on the
    unpruned model first; each group loses its lowest-ranked channels (the same ones in each
    of its `ch_groups` channel groups, so grouped convolutions stay valid), a heads group its
    lowest-ranked heads.
    """
    fallback = make_importance("magnitude")
    cuts = []
    for group, kept, ch_groups, *heads in plan:
        if heads and heads[0] is not None:
            cut = _head_cut(graph, heads[0], kept, ch_groups, heads[1])
            cuts += [cut] if cut else []
            continue
        imp = graph.estimate_importance(group)
        if imp is None:  # e.g. bn_scale on a unit without batch norm
            imp = fallback(group)
        per_group = len(imp) // ch_groups
        score = imp.view(ch_groups, per_group).mean(0) if ch_groups > 1 else imp
        n_cut = per_group - kept // ch_groups
        if n_cut <= 0:
            continue
        order = torch.argsort(score.cpu(), stable=True)[:n_cut]
        idxs = sorted(int(i) + g * per_group for g in range(ch_groups) for i in order)
        cuts.append((group[0].dep.target.module, group[0].dep.handler, idxs))
    return cuts


@torch.no_grad()
def prune_channels(graph: ChannelGraph, plan: list[tuple[Any, ...]]) -> None:
    """Remove the channels of `channel_cuts(graph, plan)` from the graph's model, in place."""
    dg = graph.dg
    for root, handler, idxs in channel_cuts(graph, plan):
        group = dg.get_pruning_group(root, handler, idxs)
        if not dg.check_pruning_group(group):
            raise RuntimeError(f"Torch-Pruning refused to remove {len(idxs)} channels of "
                               f"{dg._module2name.get(root, root)}: too few would remain")
        group.prune()
    _fix_torchvision(graph.model)
    fix_heads(graph.model)


@torch.no_grad()
def zero_channels(graph: ChannelGraph, plan: list[tuple[Any, ...]]) -> list[str]:
    """Zero, in the graph's (unpruned) model, what `prune_channels` would remove for `plan`:
    the out-channel rows of every coupled conv / linear layer and the scale and shift of every
    coupled BatchNorm. Returns the handlers of coupled layers for which a zeroed channel is
    not a removed one (a LayerNorm's statistics span all channels, say); empty when the
    zeroed model must compute exactly what the pruned one does."""
    dg, inexact = graph.dg, set()
    for root, handler, idxs in channel_cuts(graph, plan):
        for dep, group_idxs in dg.get_pruning_group(root, handler, idxs):
            module = dep.target.module
            name = type(getattr(dep.handler, "__self__", dep.handler)).__name__
            if name not in _ZERO_EXACT or isinstance(module, nn.modules.conv._ConvTransposeNd):
                inexact.add(name)
            if not dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(module,
                                                                               nn.Module):
                continue
            for param in ("weight", "bias"):
                tensor = getattr(module, param, None)
                if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1:
                    tensor[list(group_idxs)] = 0.0
    return sorted(inexact)
