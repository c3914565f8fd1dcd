"""Layer clustering (BOCR): group similar units so the search vector has few dimensions.

Units are described by standardised features (cost shares, depth, width, kernel, and the shape
of their weight-norm distribution) and grouped by scikit-learn's agglomerative clustering with
Ward linkage. Ward builds one merge tree, so cutting it at a larger k only splits groups: a
finer grouping is always nested in a coarser one, which roll-back relies on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .analysis import PrunableUnit

# scikit-learn is imported where it is used: importing it costs seconds, and most users of the
# package (a Ray trial applying a policy) never cluster.

__all__ = ["AUTO_MAX_GROUPS", "FEATURES", "auto_floor", "cluster_units", "feature_matrix"]

# (feature name, log-scaled?)
FEATURES = (("flops_share", False), ("params_share", False), ("depth", False),
            ("channels", True), ("kernel", False), ("stride", False), ("depthwise", False),
            ("n_layers", False), ("imp_cv", False), ("imp_q25", False), ("imp_median", False),
            ("imp_q75", False))
AUTO_MAX_GROUPS = 10


def feature_matrix(units: Sequence[PrunableUnit]) -> np.ndarray:
    """(units, features) matrix of the clustering features, standardised per column."""
    from sklearn.preprocessing import StandardScaler

    raw = np.array([[np.log1p(float(u.features.get(k, 0.0))) if log
                     else float(u.features.get(k, 0.0)) for k, log in FEATURES]
                    for u in units], dtype=float)
    return StandardScaler().fit_transform(raw) if len(units) > 1 else raw


def _labels(x: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)


def _auto_k(x: np.ndarray) -> int:
    """The silhouette's k in [2, AUTO_MAX_GROUPS] (the smaller k on ties), raised to at least
    ceil(sqrt(units)) (`auto_floor`), never above the distinct feature rows."""
    from sklearn.metrics import silhouette_score

    n = len(x)
    if n < 3:
        return n
    distinct = len(np.unique(x.round(12), axis=0))
    best_k, best = 2, -np.inf
    for k in range(2, min(AUTO_MAX_GROUPS, n - 1, distinct) + 1):
        labels = _labels(x, k)
        if len(set(labels)) < 2:
            continue
        score = silhouette_score(x, labels)
        if score > best + 1e-12:
            best_k, best = k, score
    return min(max(best_k, auto_floor(n)), distinct)


def auto_floor(n_units: int) -> int:
    """The fewest groups "auto" gives `n_units` units: ceil(sqrt(n_units)).

    The silhouette favours the most separated split, which on a chain of similar residual
    blocks is 2 (ResNet-56: the 3 residual units against the 27 block-inner ones; a VGG: the
    first layer against the rest), a subspace too coarse to hold good policies
    (benchmarks/README, search efficiency: 6 groups, this floor for 30 units, searched well)."""
    return math.ceil(math.sqrt(n_units))


def cluster_units(units: Sequence[PrunableUnit], n_groups: int | str | None,
                  within: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """Group unit names; None = one group per unit; "auto" = k by silhouette, at least
    `auto_floor(len(units))`.

    within: an existing grouping the result must refine (each new group inside one old group).
    Groups are ordered by their first unit, units inside a group keep the model order.
    """
    names = [u.name for u in units]
    if n_groups is None or (isinstance(n_groups, int) and n_groups >= len(units)):
        groups = [[n] for n in names]
    else:
        x = feature_matrix(units)
        k = _auto_k(x) if n_groups == "auto" else int(n_groups)
        labels = _labels(x, k) if 1 < k < len(units) else np.zeros(len(units), dtype=int)
        by_label: dict[int, list[str]] = {}
        for name, label in zip(names, labels, strict=True):
            by_label.setdefault(int(label), []).append(name)
        groups = list(by_label.values())
    if within is not None:
        parent = {n: i for i, g in enumerate(within) for n in g}
        split: dict[tuple[int, int], list[str]] = {}
        for gi, g in enumerate(groups):
            for n in g:
                split.setdefault((gi, parent[n]), []).append(n)
        groups = list(split.values())
    order = {n: i for i, n in enumerate(names)}
    return sorted(([*sorted(g, key=order.__getitem__)] for g in groups),
                  key=lambda g: order[g[0]])
