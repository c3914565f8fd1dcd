"""Pruning schemes as registered objects: one `PruningScheme` per scheme owns its name, which
layers it applies to, its mask, its options in a policy (`docs/POLICY.md`), its effect on cost,
its colour in pictures and its bridge to a kernel.

The five built-ins (`channel`, `block`, `nm`, `unstructured`, `pattern`) are registered here;
everything else (a policy's validation, `apply_policy`, the analysis, the mapping, the cost
model's rows, a config's `space.schemes`, the pictures) looks schemes up by name. A new scheme
is one class: subclass `PruningScheme`, then `register_scheme(MyScheme())`, or name it as
`package.module:attr` without touching this package (`tests/toy_scheme.py`): such a scheme is
known by that path, so a policy naming it loads in any process that can import the module (a
Ray worker's included).

The masks themselves are computed in `masks.py` (re-exported here).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from prunetune.errors import PolicyError
from prunetune.registry import Registry

from .masks import (
    BLOCK_SHAPES,
    NM_M_VALUES,
    PATTERN_KINDS,
    attach_mask,
    base_pattern_sparsity,
    block_mask,
    block_sparse_weight,
    enforce_masks,
    from_gemm_view,
    gemm_view,
    gemm_view_of,
    is_gemm_layer,
    nm_from_ratio,
    nm_mask,
    pattern_mask,
    unstructured_mask,
)

__all__ = [
    "BLOCK_SHAPES", "MAX_RATIO", "NM_M_VALUES", "OPTION_FIELDS", "PATTERN_KINDS", "SCHEMES",
    "SPARSE_SCHEMES", "PruningScheme", "attach_mask", "base_pattern_sparsity", "block_mask",
    "block_sparse_weight", "choose_block", "enforce_masks", "fitting_blocks", "from_gemm_view",
    "gemm_view", "gemm_view_of", "get_scheme", "is_gemm_layer", "key_scheme", "layer_applies",
    "nm_from_ratio", "nm_mask", "pattern_mask", "register_scheme", "scheme_names",
    "sparse_key", "sparse_keys", "unstructured_mask",
]

# The option fields of a policy entry (UnitPolicy's fields after scheme and ratio), in the order
# the JSON form writes them. A scheme owns the ones it names in `option_fields`.
OPTION_FIELDS = ("block", "n", "m", "pattern")


# What the mapping rules tell apart: GPUs run linear and 1x1 layers as plain GEMMs (block-sparse
# and 2:4 kernels make them faster); 3x3 convolutions get faster on a GPU by losing channels and
# on a CPU (and mobile runtimes, PatDNN's target) from kernel patterns.
_LAYER_CLASS = {"linear": "gemm", "conv1x1": "gemm", "conv3x3": "conv3x3"}


class UnitLike(Protocol):
    """What a scheme reads of a prunable unit (`analysis.PrunableUnit`)."""

    name: str
    sparse_layers: dict[str, tuple[str, ...]]
    shapes: dict[str, tuple[int, int]]


class PolicyEntry(Protocol):
    """What a scheme reads of a policy entry (`policy.UnitPolicy`)."""

    scheme: str
    ratio: float
    block: tuple[int, int] | None
    n: int | None
    m: int | None
    pattern: str | None


class PruningScheme:
    """One pruning scheme. Subclasses set the class attributes and override what differs.

    name: its config and policy name (a scheme named by `package.module:attr` is known by that
    path); title: what pictures and tables call it (its own `name` by default, also when it
    is known by a path); colour: its colour in pictures (any matplotlib colour);
    max_ratio: the largest ratio a policy may ask for; structural: True for `channel` (it
    removes channels, which `channel.py` does on the dependency graph; it has no mask), False
    for a mask scheme; option_fields: the `OPTION_FIELDS` a policy entry of it may carry.

    A mask scheme prunes the weights of the layers of a unit it `applies` to. Its `keys` are
    its rows in the applicability table (`PrunableUnit.sparse_layers`, `CostModel.applies`):
    one, its name, unless applicability depends on an option (N:M's M: `nm4`, `nm8`).
    """

    name: str = ""
    title: str = ""
    colour: str = "grey"
    max_ratio: float = 0.99
    structural: bool = False
    option_fields: tuple[str, ...] = ()
    # The rule-based mapping's ranks (0 first) by `"<device>:<layer class>"` (device gpu or
    # cpu; class gemm: linear and 1x1 convolutions, conv3x3, or other) and `"depthwise"`; a
    # scheme the rules do not rank is mapped only where nothing ranked applies.
    rule_ranks: Mapping[str, int] = {}

    # ---- applicability ------------------------------------------------------------------------
    def keys(self) -> tuple[str, ...]:
        """Its rows of the applicability table (none for a structural scheme)."""
        return () if self.structural else (self.name,)

    def key(self, up: PolicyEntry) -> str:
        """The row of the applicability table that the entry `up` prunes by."""
        return self.name

    def applies(self, layer: nn.Module, key: str) -> bool:
        """Whether this scheme (as `key`) can prune the weight of the one `layer`."""
        return False

    def check_unit(self, unit: UnitLike, up: PolicyEntry) -> None:
        """Raise PolicyError unless `up` fits `unit` beyond the scheme's name (which the unit
        checks): by default, some layer of the unit takes the entry's row."""
        if not self.structural and not unit.sparse_layers.get(self.key(up)):
            raise PolicyError(f"scheme {self.name!r} applies to no layer of unit "
                              f"{unit.name!r}; use another scheme")

    # ---- options (the policy format) ----------------------------------------------------------
    def normalise(self, options: dict[str, Any], ratio: float, where: str) -> dict[str, Any]:
        """The entry's `option_fields` with defaults filled in, checked against `ratio`;
        PolicyError naming the field and `where` (" for unit 'x'" or "") otherwise."""
        return options

    def with_ratio(self, options: dict[str, Any], ratio: float) -> dict[str, Any]:
        """The options of the same entry at another ratio (N:M's n follows the ratio)."""
        return options

    def snap_ratio(self, ratio: float, options: dict[str, Any]) -> float:
        """The nearest ratio the scheme can prune at (N:M: only 1 - n/m)."""
        return ratio

    def template_options(self, unit: UnitLike) -> dict[str, Any]:
        """The options a mapping gives `unit` under this scheme (shape-derived)."""
        return {}

    def scan_options(self, unit: UnitLike) -> list[dict[str, Any]]:
        """The option sets a measured mapping compares for `unit` (one by default)."""
        return [self.template_options(unit)]

    def rule_rank(self, device: str, kind: str, depthwise: bool) -> int | None:
        """Its rank in the rule-based mapping (lower first; None: not ranked) for a unit whose
        first layer is of `kind` (`PrunableUnit.features["type"]`) on `device`."""
        where = "depthwise" if depthwise else f"{device}:{_LAYER_CLASS.get(kind, 'other')}"
        return self.rule_ranks.get(where)

    def label(self, up: PolicyEntry) -> str:
        """A short human label of the entry (tables of `prunetune map`)."""
        return self.title or self.name

    # ---- masks and cost -----------------------------------------------------------------------
    def prunes(self, up: PolicyEntry) -> bool:
        """Whether the entry removes anything (ratio 0 leaves the layers whole)."""
        return up.ratio > 0

    def mask(self, weight: torch.Tensor, up: PolicyEntry) -> torch.Tensor:
        """The float mask (1 kept, 0 pruned) of `weight`'s exact shape under `up`. It prunes at
        least `up.ratio` of the weight: the cost model counts a masked layer's weight work at
        density `1 - ratio` (`cost.CostModel.scales`), so a budget it meets holds measured."""
        raise PolicyError(f"scheme {self.name!r} removes channels; it has no mask")

    def attach(self, layer: nn.Module, mask: torch.Tensor, up: PolicyEntry) -> None:
        """Store the mask on the layer (`masks.attach_mask`) with what kernels read of it."""
        attach_mask(layer, mask)

    def input_multiple(self, key: str) -> int:
        """Channels feeding a layer this scheme prunes (as `key`) are kept in multiples of
        this, so the layer still fits the scheme after a channel cut (N:M: M)."""
        return 1

    # ---- kernels ------------------------------------------------------------------------------
    def kernel_format(self, key: str) -> str | None:
        """The sparse format of `prunetune.kernels` that runs a layer this scheme prunes (as
        `key`) faster (`bsr`: block-sparse kernels; `nm`: 2:4 semi-structured), or None: no
        kernel skips its zeros, so on a clock it saves nothing."""
        return None

    def __repr__(self) -> str:
        return f"<pruning scheme {self.name}>"


def _has_matrix_weight(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() >= 2


class ChannelScheme(PruningScheme):
    """Channel (structured) pruning: whole channels leave the model (`channel.py`); a unit takes
    it when its dependency group can be cut (`analysis.graph_units`). It keeps at least a tenth
    of a unit, so fine-tuning has something to recover from."""

    name, colour, max_ratio, structural = "channel", "#1f77b4", 0.9, True
    # Anything depthwise only gets faster by really losing channels.
    rule_ranks = {"depthwise": 0, "gpu:gemm": 2, "gpu:conv3x3": 0, "gpu:other": 0,
                  "cpu:conv3x3": 1, "cpu:gemm": 0, "cpu:other": 0}


def fitting_blocks(unit: UnitLike) -> list[tuple[int, int]]:
    """Block shapes, largest first, that divide every block-prunable layer's GEMM view and
    leave at least 4 blocks along each side (so ranking has a choice)."""
    shapes = [unit.shapes[n] for n in unit.sparse_layers.get("block", ()) if n in unit.shapes]
    return [(bo, bi) for bo, bi in sorted(BLOCK_SHAPES, key=lambda b: -b[0] * b[1])
            if shapes and all(o % bo == 0 and k % bi == 0 and o >= 4 * bo and k >= 4 * bi
                              for o, k in shapes)]


def choose_block(unit: UnitLike) -> tuple[int, int]:
    """The largest fitting block shape (`fitting_blocks`); (4, 4) when none fits."""
    return next(iter(fitting_blocks(unit)), (4, 4))


class BlockScheme(PruningScheme):
    """Block sparsity on the tap-major GEMM view (`masks.block_mask`), `block = (bo, bi)`
    (default (8, 8)); run by the block-sparse kernels (`bsr`)."""

    name, colour, option_fields = "block", "#ff7f0e", ("block",)
    rule_ranks = {"gpu:gemm": 0, "gpu:conv3x3": 2, "gpu:other": 1}

    def applies(self, layer: nn.Module, key: str) -> bool:
        return _has_matrix_weight(layer) and is_gemm_layer(layer)

    def normalise(self, options: dict[str, Any], ratio: float, where: str) -> dict[str, Any]:
        raw = options.get("block")
        block = (8, 8) if raw is None else raw
        try:
            block = (int(block[0]), int(block[1])) if len(block) == 2 else None
        except (TypeError, ValueError):
            block = None
        if block not in BLOCK_SHAPES:
            raise PolicyError(f"block must be one of {list(BLOCK_SHAPES)}{where}, got {raw!r}")
        return {"block": block}

    def template_options(self, unit: UnitLike) -> dict[str, Any]:
        return {"block": choose_block(unit)}

    def scan_options(self, unit: UnitLike) -> list[dict[str, Any]]:
        # Large blocks run faster, small ones keep more accuracy: the two largest that fit.
        return [{"block": b} for b in fitting_blocks(unit)[:2] or [choose_block(unit)]]

    def label(self, up: PolicyEntry) -> str:
        return f"block {up.block[0]}x{up.block[1]}"

    def mask(self, weight: torch.Tensor, up: PolicyEntry) -> torch.Tensor:
        return block_mask(weight, up.ratio, up.block)

    def attach(self, layer: nn.Module, mask: torch.Tensor, up: PolicyEntry) -> None:
        attach_mask(layer, mask, up.block)  # prune_block: the kernels' cue

    def kernel_format(self, key: str) -> str | None:
        return "bsr"


class NMScheme(PruningScheme):
    """N:M sparsity (`masks.nm_mask`): n of every m reduction entries kept, m in `NM_M_VALUES`
    (default 4), n following the ratio (`ratio = 1 - n/m`); 2:4 runs as semi-structured
    sparse Linear layers (`nm`). It keeps at least 1 of M."""

    name, colour, max_ratio, option_fields = "nm", "#2ca02c", 0.875, ("n", "m")
    rule_ranks = {"gpu:gemm": 1}

    def keys(self) -> tuple[str, ...]:
        return tuple(f"nm{m}" for m in NM_M_VALUES)

    def key(self, up: PolicyEntry) -> str:
        return f"nm{up.m or 4}"

    def applies(self, layer: nn.Module, key: str) -> bool:
        return (_has_matrix_weight(layer) and is_gemm_layer(layer)
                and layer.weight[0].numel() % int(key[2:]) == 0)

    def check_unit(self, unit: UnitLike, up: PolicyEntry) -> None:
        if not unit.sparse_layers.get(self.key(up)):
            raise PolicyError(f"N:M with m={up.m} does not apply to unit {unit.name!r}: no layer "
                              "has a reduction size (in*kh*kw) that is a multiple of m; use m=4 "
                              "or another scheme")

    def normalise(self, options: dict[str, Any], ratio: float, where: str) -> dict[str, Any]:
        m = 4 if options.get("m") is None else options["m"]
        if m not in NM_M_VALUES:
            raise PolicyError(f"m must be one of {NM_M_VALUES}{where}, got {options['m']!r}")
        n = nm_from_ratio(ratio, m) if options.get("n") is None else options["n"]
        if not isinstance(n, int) or not 1 <= n <= m:
            raise PolicyError(f"n must be an integer in [1, {m}]{where}, got {options['n']!r}")
        if abs(ratio - (1 - n / m)) > 1e-9:
            raise PolicyError(f"ratio must equal 1 - n/m = {1 - n / m:g}{where} with "
                              f"{n}:{m}, got {ratio:g}; set ratio to that value or drop n")
        return {"n": n, "m": m}

    def with_ratio(self, options: dict[str, Any], ratio: float) -> dict[str, Any]:
        m = options.get("m") or 4
        return {"n": nm_from_ratio(ratio, m), "m": m}

    def snap_ratio(self, ratio: float, options: dict[str, Any]) -> float:
        m = options.get("m") or 4
        return 1.0 - nm_from_ratio(ratio, m) / m

    def template_options(self, unit: UnitLike) -> dict[str, Any]:
        return {"m": 4 if unit.sparse_layers.get("nm4") else 8}

    def label(self, up: PolicyEntry) -> str:
        return f"nm m{up.m}"

    def prunes(self, up: PolicyEntry) -> bool:
        return up.ratio > 0 and up.n != up.m

    def mask(self, weight: torch.Tensor, up: PolicyEntry) -> torch.Tensor:
        return nm_mask(weight, up.n, up.m)

    def input_multiple(self, key: str) -> int:
        return int(key[2:])

    def kernel_format(self, key: str) -> str | None:
        return "nm" if key == "nm4" else None  # only 2:4 has a semi-structured kernel


class UnstructuredScheme(PruningScheme):
    """Magnitude pruning of single weights (`masks.unstructured_mask`), any conv or linear."""

    name, colour = "unstructured", "#d62728"
    rule_ranks = {"gpu:gemm": 3, "gpu:conv3x3": 3, "gpu:other": 2, "cpu:conv3x3": 2,
                  "cpu:gemm": 1, "cpu:other": 1}

    def applies(self, layer: nn.Module, key: str) -> bool:
        return _has_matrix_weight(layer) and isinstance(layer, (nn.Linear,
                                                                nn.modules.conv._ConvNd))

    def mask(self, weight: torch.Tensor, up: PolicyEntry) -> torch.Tensor:
        return unstructured_mask(weight, up.ratio)


class PatternScheme(PruningScheme):
    """3x3 kernel patterns with connectivity pruning (`masks.pattern_mask`), `pattern` in
    `PATTERN_KINDS` (default `patdnn`); dense 3x3 convolutions only."""

    name, colour, option_fields = "pattern", "#9467bd", ("pattern",)
    rule_ranks = {"gpu:conv3x3": 1, "cpu:conv3x3": 0}

    def applies(self, layer: nn.Module, key: str) -> bool:
        return (_has_matrix_weight(layer) and isinstance(layer, nn.Conv2d)
                and layer.groups == 1 and tuple(layer.kernel_size) == (3, 3))

    def normalise(self, options: dict[str, Any], ratio: float, where: str) -> dict[str, Any]:
        raw = options.get("pattern")
        pattern = "patdnn" if raw is None else raw
        if pattern not in PATTERN_KINDS:
            raise PolicyError(f"pattern must be one of {', '.join(PATTERN_KINDS)}{where}, "
                              f"got {raw!r}")
        return {"pattern": pattern}

    def template_options(self, unit: UnitLike) -> dict[str, Any]:
        return {"pattern": "patdnn"}

    def mask(self, weight: torch.Tensor, up: PolicyEntry) -> torch.Tensor:
        return pattern_mask(weight, up.ratio, up.pattern)


# ---- the registry ----------------------------------------------------------------------------
def register_scheme(scheme: PruningScheme) -> PruningScheme:
    """Add `scheme` under its `name` (a later one of the same name replaces it)."""
    if not isinstance(scheme, PruningScheme) or not isinstance(scheme.name, str) \
            or not scheme.name:
        raise PolicyError(f"{scheme!r} is not a pruning scheme: subclass "
                          "prunetune.search_spaces.PruningScheme and give it a name")
    bad = sorted(set(scheme.option_fields) - set(OPTION_FIELDS))
    if bad:
        raise PolicyError(f"scheme {scheme.name!r} names option fields {bad}; a policy entry "
                          f"has only {list(OPTION_FIELDS)}")
    return _REGISTRY.register(scheme)


def _adopt(found: PruningScheme, path: str) -> PruningScheme:
    """An imported scheme, registered under its `package.module:attr`: its policies name it
    so, and load wherever the module imports."""
    scheme = copy.copy(found)
    scheme.title = scheme.title or scheme.name or path.partition(":")[2]
    scheme.name = path
    return register_scheme(scheme)


_REGISTRY: Registry[PruningScheme] = Registry(
    "pruning scheme", PruningScheme, PolicyError, field="pruning scheme",
    base="prunetune.search_spaces.PruningScheme", adopt=_adopt)


def get_scheme(name: str | PruningScheme) -> PruningScheme:
    """The scheme registered as `name`, or the one `package.module:attr` names (imported and
    registered under that path on first use). A scheme object passes through. PolicyError
    naming the choices for anything else."""
    if isinstance(name, PruningScheme):
        return name
    if isinstance(name, str) and (name in _REGISTRY or ":" in name.strip(":")):
        return _REGISTRY.get(name)
    raise PolicyError(f"unknown scheme {name!r}; use one of {', '.join(_REGISTRY)} or "
                      "'package.module:attr' (your own PruningScheme subclass)")


def scheme_names() -> tuple[str, ...]:
    """The registered schemes' names, built-ins first."""
    return tuple(_REGISTRY)


def sparse_keys() -> tuple[str, ...]:
    """The rows of the applicability table: every registered mask scheme's `keys`."""
    return tuple(k for s in _REGISTRY.values() for k in s.keys())


def key_scheme(key: str) -> PruningScheme:
    """The registered scheme whose row of the applicability table `key` is."""
    for scheme in _REGISTRY.values():
        if key in scheme.keys():
            return scheme
    raise PolicyError(f"no registered scheme has the applicability row {key!r}; rows are "
                      f"{list(sparse_keys())}")


def sparse_key(scheme: str, m: int | None = None) -> str:
    """Row of the applicability table for a mask scheme (`nm` is split by its M)."""
    return f"nm{m or 4}" if scheme == "nm" else scheme


def layer_applies(layer: nn.Module, scheme: str, *, m: int = 4) -> bool:
    """Whether a mask `scheme` can prune this one layer (`m` is N:M's group size)."""
    found = get_scheme(scheme)
    return not found.structural and found.applies(layer, sparse_key(found.name, m))


class _Names(Sequence[str]):
    """The registered names as a live, read-only sequence (`SCHEMES`): `name in SCHEMES` is
    also true of a `package.module:attr` that imports as a scheme."""

    def __init__(self, sparse: bool) -> None:
        self._sparse = sparse

    def _names(self) -> tuple[str, ...]:
        return tuple(s.name for s in _REGISTRY.values() if not (self._sparse and s.structural))

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        try:
            found = get_scheme(name)  # type: ignore[arg-type]
        except PolicyError:
            return False
        return not (self._sparse and found.structural)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


class _MaxRatio(Mapping[str, float]):
    """`MAX_RATIO[name]`: the scheme's `max_ratio`, live."""

    def __getitem__(self, name: str) -> float:
        try:
            return get_scheme(name).max_ratio
        except PolicyError:
            raise KeyError(name) from None

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_REGISTRY))


SCHEMES: Sequence[str] = _Names(sparse=False)
SPARSE_SCHEMES: Sequence[str] = _Names(sparse=True)
MAX_RATIO: Mapping[str, float] = _MaxRatio()

for _builtin in (ChannelScheme(), BlockScheme(), NMScheme(), UnstructuredScheme(),
                 PatternScheme()):
    register_scheme(_builtin)
