"""The pictures a search logs to MLflow: one policy per layer, and the Pareto front.

matplotlib only (Agg); each function returns a Figure the caller logs (`log_figure`) and closes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from prunetune.search_spaces import Policy, PolicyError, get_scheme, scheme_names
from prunetune.search_spaces.channel import kept_channels

__all__ = ["kept_width", "log_figure", "pareto_figure", "policy_figure", "scheme_colour",
           "scheme_colours"]


def scheme_colour(name: str) -> str:
    """A scheme's colour in every picture (`PruningScheme.colour`; the built-ins take
    matplotlib's tab10); grey for a name no scheme has."""
    try:
        return get_scheme(name).colour
    except PolicyError:
        return "grey"


def scheme_colours() -> dict[str, str]:
    """Every registered scheme's colour, by name, in registration order."""
    return {name: scheme_colour(name) for name in scheme_names()}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kept_width(unit: Mapping[str, Any], scheme: str, ratio: float,
               round_to: int | None = None) -> int:
    """Channels a unit keeps: fewer under channel pruning (as `apply_policy` keeps them), all
    of them under a sparse scheme (its weights thin out instead). `unit`: the unit's entry in
    `PruningSpace.describe()["units"]` (channels, ch_groups, multiple)."""
    channels = int(unit["channels"])
    if ratio <= 0 or not get_scheme(scheme).structural:
        return channels
    multiple = math.lcm(int(unit.get("multiple", 1)) or 1, round_to or 1)
    return kept_channels(channels, int(unit.get("ch_groups", 1)), ratio, multiple)


def _label(name: str, up: Any, unit: Mapping[str, Any] | None, round_to: int | None) -> str:
    """A unit's tick label; an attention heads unit's adds its kept and dense head counts."""
    heads = int((unit or {}).get("heads", 0) or 0)
    if not heads:
        return name
    kept = kept_width(unit, up.scheme, up.ratio, round_to) * heads // int(unit["channels"])
    return f"{name} [{kept}/{heads} heads]"


def policy_figure(policy: Policy, units: Mapping[str, Mapping[str, Any]], title: str) -> Any:
    """Per unit, in model order: the pruning ratio coloured by scheme (top), and the dense and
    kept widths in channels (bottom); an attention heads unit's label adds its kept / dense
    heads. `units`: `PruningSpace.describe()["units"]`."""
    plt = _pyplot()
    names = [n for n in units if n in policy.units] or list(policy.units)
    ups = [policy.units[n] for n in names]
    colours = [scheme_colour(u.scheme) for u in ups]
    width = max(6.0, min(24.0, 0.28 * len(names) + 2.0))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 5.4), dpi=100)
    xs = range(len(names))
    # The axes share their x range but only the bottom one has ticks: matplotlib builds an
    # object per tick, and a trial's picture is drawn once per finished trial.
    top.set_xticks([])
    top.set_xlim(-0.6, len(names) - 0.4)
    bottom.set_xlim(-0.6, len(names) - 0.4)
    top.bar(xs, [u.ratio for u in ups], color=colours)
    top.set_ylabel("pruning ratio")
    top.set_ylim(0, 1)
    top.set_title(title, fontsize=10)
    top.grid(axis="y", alpha=0.3)
    shown = [s for s in scheme_names() if any(u.scheme == s for u in ups)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=scheme_colour(s)) for s in shown]
    top.legend(handles, [get_scheme(s).title or s for s in shown], fontsize=8,
               loc="upper right")
    if all(n in units and "channels" in units[n] for n in names):
        dense = [int(units[n]["channels"]) for n in names]
        kept = [kept_width(units[n], u.scheme, u.ratio, policy.round_to)
                for n, u in zip(names, ups, strict=True)]
        bottom.bar(xs, dense, color="lightgrey", label="dense")
        bottom.bar(xs, kept, color=colours, label="kept")
        bottom.set_ylabel("channels")
        bottom.legend(["dense", "kept"], fontsize=8, loc="upper left")
    bottom.set_xticks(list(xs))
    bottom.set_xticklabels([_label(n, u, units.get(n), policy.round_to)
                            for n, u in zip(names, ups, strict=True)], rotation=90, fontsize=7)
    bottom.grid(axis="y", alpha=0.3)
    # Margins from the longest unit name (7-point characters, about 0.06 in each, rotated)
    # instead of tight_layout, which draws every label once more to measure it.
    label_in = 0.06 * max(len(n) for n in names) + 0.15 + 0.9 * any(
        (units.get(n) or {}).get("heads") for n in names)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, top=0.93,
                        bottom=min(0.6, (label_in + 0.1) / 5.4), hspace=0.08)
    return fig


def pareto_figure(rows: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]], *,
                  x: str, y: str, dense: tuple[float, float] | None, title: str,
                  label: str = "trial") -> Any:
    """Trials (`rows`) in (x, y), the Pareto front joined, each front point labelled by its
    `label` field, and the dense model marked at `dense` = (x, y) when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    ax.scatter([r.get(x) for r in rows], [r.get(y) for r in rows], s=18, alpha=0.5,
               label="trials")
    ax.plot([r[x] for r in front], [r[y] for r in front], "r-o", ms=4, label="Pareto front")
    for r in front:
        ax.annotate(str(r.get(label, "")), (r[x], r[y]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    if dense is not None and all(math.isfinite(v) for v in dense):
        ax.scatter([dense[0]], [dense[1]], marker="*", s=160, color="black", zorder=5,
                   label="dense model")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_figure(client: Any, run_id: str, fig: Any, path: str) -> None:
    """Log `fig` as the PNG artifact `path` of run `run_id` (an MlflowClient), then close it."""
    try:
        client.log_figure(run_id, fig, path)
    finally:
        _pyplot().close(fig)
