"""The Torch-Pruning dependency graph of a model, and the channel groups read from it.

Two guards keep Torch-Pruning's graph honest on architectures it does not fully understand:

- PyTorch 2 renamed the saved input shape of view / reshape nodes (`_saved_self_sizes` became
  `_saved_self_sym_sizes`); Torch-Pruning 1.6 then skips its own checks and maps the indices of
  any reshape as a flatten. That made Swin's window partitions explode into millions of indices
  and ShuffleNet's channel shuffle divide by zero. `_Graph` gives those nodes the old name back,
  and gives concatenations along -1 their signed dimension (see `_CompatGradFn`).
- Some ops move channels in ways the graph cannot follow: a reshape across 5 or more dimensions
  (a channel shuffle, a window partition) or a concatenation along a negative dimension. Every
  group that reaches one is kept out of channel pruning (`ChannelGraph.groups` reports it as
  blocked), found by plain reachability before Torch-Pruning builds the group's index lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from prunetune.errors import SpaceError

__all__ = ["IMPORTANCES", "ChannelGraph", "make_importance"]

_OPT = tp.ops.OPTYPE

# Channel importance criteria by name (Torch-Pruning's): magnitude = group L2 norm.
_IMPORTANCE_FACTORIES = {
    "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
}
IMPORTANCES = tuple(_IMPORTANCE_FACTORIES)


def make_importance(name: str) -> Any:
    """Torch-Pruning importance criterion by name (one of `IMPORTANCES`)."""
    if name not in _IMPORTANCE_FACTORIES:
        raise SpaceError(f"unknown importance {name!r}; use one of {', '.join(IMPORTANCES)}")
    return _IMPORTANCE_FACTORIES[name]()


class _CompatGradFn:
    """A grad_fn seen the way Torch-Pruning 1.6 expects: the input shape of a view under its
    old name, and a concatenation's dimension signed (PyTorch stores -1 as 2**64 - 1, which
    Torch-Pruning reads as "unknown, assume channels")."""

    def __init__(self, grad_fn: Any) -> None:
        self._grad_fn = grad_fn

    def __getattr__(self, name: str) -> Any:
        if name == "_saved_self_sizes":
            return tuple(self._grad_fn._saved_self_sym_sizes)
        value = getattr(self._grad_fn, name)
        if name == "_saved_dim" and value >= 2**63:
            return value - 2**64
        return value


def _input_rank(node: Any) -> int | None:
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    return None if sizes is None else len(sizes)


def _untraceable(node: Any) -> bool:
    """A reshape that moves data across 5 or more dimensions (a channel shuffle, a window
    partition), or a concatenation along a negative (so unknown) dimension."""
    if node.type == _OPT.RESHAPE:
        return (_input_rank(node) or 0) >= 5
    if node.type == _OPT.CONCAT:
        return getattr(node.grad_fn, "_saved_dim", 1) < 0
    return False


class _Graph(tp.DependencyGraph):
    def _trace(self, *args: Any, **kwargs: Any) -> dict:
        module2node = super()._trace(*args, **kwargs)
        for node in module2node.values():
            fn = node.grad_fn
            if ((node.type == _OPT.RESHAPE and not hasattr(fn, "_saved_self_sizes")
                 and hasattr(fn, "_saved_self_sym_sizes"))
                    or (node.type == _OPT.CONCAT and hasattr(fn, "_saved_dim"))):
                node.grad_fn = _CompatGradFn(fn)
        return module2node


class ChannelGraph:
    """Dependency graph of `model` (traced on `example_input`) with an importance criterion.

    Building it needs autograd, so gradients are switched on and every parameter is made to
    require grad (callers that work on a copy restore the flags).
    """

    root_types = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM)

    def __init__(self, model: nn.Module, example_input: Any,
                 importance: str = "magnitude") -> None:
        self.model = model
        self.importance = make_importance(importance)
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.dg = _Graph().build_dependency(model, example_input, verbose=False)
        # Grouped convolutions split their channels into equal groups (depthwise excluded:
        # Torch-Pruning prunes those through their input).
        self._in_groups: dict[nn.Module, int] = {}
        self._out_groups: dict[nn.Module, int] = {}
        for m in model.modules():
            pruner = self.dg.get_pruner_of_module(m)
            if pruner is None or (isinstance(m, tp.ops.TORCH_CONV)
                                  and m.groups == m.out_channels):
                continue
            if pruner.get_in_channel_groups(m) > 1:
                self._in_groups[m] = pruner.get_in_channel_groups(m)
            if pruner.get_out_channel_groups(m) > 1:
                self._out_groups[m] = pruner.get_out_channel_groups(m)
        self.blocked_nodes = {n for n in self.dg.module2node.values() if _untraceable(n)}

    def _root_fn(self, module: nn.Module) -> Any:
        return self.dg.get_pruner_of_module(module).prune_out_channels

    def reach(self, module: nn.Module) -> tuple[bool, set[nn.Module]]:
        """(reaches a blocked node, modules whose outputs the group would prune): the group's
        propagation without index lists, so it cannot explode."""
        dg = self.dg
        start = dg.module2node[module]
        fn = self._root_fn(module)
        if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels > 1:
            fn = tp.pruner.function.prune_depthwise_conv_out_channels
        stack, seen, outs, blocked = [(start, fn)], set(), {module}, False
        while stack:
            node, fn = stack.pop()
            if (node, fn) in seen:
                continue
            seen.add((node, fn))
            blocked |= node in self.blocked_nodes
            for dep in node.dependencies:
                if dep.is_triggered_by(fn):
                    if dg.is_out_channel_pruning_fn(dep.handler):
                        outs.add(dep.target.module)
                    stack.append((dep.target, dep.handler))
        return blocked, outs

    def groups(self) -> Iterator[tuple[nn.Module, Any]]:
        """(root module, Torch-Pruning group with all channels, or None when blocked) for
        every channel group, like `DependencyGraph.get_all_groups`."""
        visited: set[nn.Module] = set()
        for m in list(self.dg.module2node):
            if not isinstance(m, self.root_types) or m in visited:
                continue
            pruner = self.dg.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            blocked, outs = self.reach(m)
            if blocked:
                visited |= outs
                yield m, None
                continue
            group = self.dg.get_pruning_group(m, pruner.prune_out_channels,
                                              list(range(pruner.get_out_channels(m))))
            for dep, _ in group:
                if self.dg.is_out_channel_pruning_fn(dep.handler):
                    visited.add(dep.target.module)
            yield m, group

    def channel_groups(self, group: Any) -> int:
        """Equal channel groups the group's channels fall into (1 without grouped convs)."""
        counts = [1]
        for dep, _ in group:
            table = (self._out_groups if self.dg.is_out_channel_pruning_fn(dep.handler)
                     else self._in_groups)
            counts.append(table.get(dep.target.module, 1))
        return max(counts)

    @torch.no_grad()
    def estimate_importance(self, group: Any) -> torch.Tensor | None:
        return self.importance(group)
