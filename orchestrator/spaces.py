"""From a config to a search space: the one place the `space` section becomes a `PruningSpace`.

`build_space` is what a search uses (a latency budget is fitted from the latency table first);
`space_from_analysis` is the pure mapping, shared with `prunetune analyze`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from prunetune.errors import SearchError, SpaceError
from prunetune.search_spaces import (
    Budget,
    BudgetError,
    LatencyWeights,
    ModelAnalysis,
    PruningSpace,
    SchemeScan,
    analyze,
    scan_templates,
    sparse_keys,
)
from prunetune.search_spaces.schemes import key_scheme

from .config import PrunetuneConfig

__all__ = ["build_space", "latency_table_file", "round_to", "scheme_gains", "space_defaults",
           "space_from_analysis"]


def latency_table_file(cfg: PrunetuneConfig, workdir: Path | None = None) -> Path:
    """The search's latency table: `search.latency_table`, else `<workdir>/latency_table.json`
    (shared by the latency budget's fit and the trials' predictions)."""
    default = (workdir or cfg.workdir_path()) / "latency_table.json"
    return Path(cfg.search.latency_table or default).expanduser().resolve()


def space_defaults(cfg: PrunetuneConfig) -> tuple[int | str | None, bool]:
    """(`n_groups`, `fill_budget`) of the config's space: `space.groups: auto` and
    `space.budget.fill: null` take the searcher's own defaults (`PolicySearcher.default_groups`
    / `default_fill_budget`). Raises SearcherError for an unknown searcher."""
    from .searchers import searcher_class

    s = cfg.space
    if s.groups != "auto" and (s.budget is None or s.budget.fill is not None):
        return s.groups, bool(s.budget and s.budget.fill)
    cls = searcher_class(cfg.search.searcher)
    groups = cls.default_groups if s.groups == "auto" else s.groups
    fill = cls.default_fill_budget if s.budget is None or s.budget.fill is None else s.budget.fill
    return groups, fill


def round_to(cfg: PrunetuneConfig) -> int | None:
    """`space.round_to` as an integer or None; "auto" asks the latency backend what widths it
    runs fastest on its device (1, any width, is None)."""
    if cfg.space.round_to != "auto":
        return cfg.space.round_to
    import torch

    from prunetune.kernels import get_backend

    from .config import latency_device

    backend = get_backend(cfg.latency.backend)
    multiple = backend.channel_multiple(torch.device(latency_device(cfg)))
    return multiple if multiple > 1 else None


def space_from_analysis(cfg: PrunetuneConfig, analysis: ModelAnalysis, *,
                        latency: LatencyWeights | None = None, with_budget: bool = True,
                        mapping_device: str = "gpu", scan: SchemeScan | None = None,
                        ) -> PruningSpace:
    """The `PruningSpace` of the config's `space` section over `analysis`.

    `latency`: the weights a latency budget needs; `with_budget=False` leaves the budget out
    (for looking at the space only); `mapping_device`: the rule-based scheme mapping's
    target. `scan`: the sensitivity scan a measured mapping (`space.mapping: measured`)
    chooses each unit's scheme from (`scheme_map.measured_scan`). Raises SearchError naming
    `space.budget` or `space` when the section cannot be met or built.
    """
    s = cfg.space
    budget = Budget(kind=s.budget.kind, keep=s.budget.keep) if (s.budget and with_budget) \
        else None
    n_groups, fill = space_defaults(cfg)
    if s.mapping == "measured" and scan is None:
        raise SearchError("space.mapping: measured needs the sensitivity scan of this model "
                          "(build_space makes it; or run `prunetune map CONFIG` first)")
    try:
        templates = None if scan is None else scan_templates(analysis, scan, tuple(s.schemes))
        return PruningSpace(None, schemes=tuple(s.schemes), ratio_bounds=tuple(s.ratio_bounds),
                            budget=budget, n_groups=n_groups, fill_budget=fill,
                            scheme_search=s.scheme_search, seed=cfg.seed,
                            device=mapping_device, analysis=analysis, latency=latency,
                            templates=templates, round_to=round_to(cfg),
                            importance=s.importance)
    except BudgetError as err:
        raise SearchError(f"space.budget: {err}") from err
    except SpaceError as err:
        raise SearchError(f"space: {err}") from err


def _latency_weights(cfg: PrunetuneConfig, model: nn.Module, example_input: object,
                     analysis: ModelAnalysis, workdir: Path | None) -> LatencyWeights:
    """The latency budget's linear model, fitted from the search's latency table (missing
    layer entries measured now by the config's latency backend on its device, then saved for
    later searches)."""
    from prunetune.kernels.service import LatencyService

    from .config import latency_device

    table = latency_table_file(cfg, workdir)
    table.parent.mkdir(parents=True, exist_ok=True)
    service = LatencyService(str(table), device=latency_device(cfg),
                             repeats=cfg.search.latency_repeats, backend=cfg.latency.backend,
                             threads=cfg.latency.threads)
    base_ms, layers = service.linear_terms(model, example_input)
    gains = scheme_gains(service.sparse_gains(model, example_input))
    service.save()
    return LatencyWeights.from_layers(analysis.cost_model, base_ms, layers,
                                      device=service.clock, sparse_gain=gains)


def scheme_gains(format_gains: dict[str, float]) -> dict[str, float]:
    """`LatencyPredictor.sparse_gains` (per kernel format) as `LatencyWeights.sparse_gain`
    (per row of the applicability table), through each scheme's kernel bridge
    (`PruningScheme.kernel_format`): block masks run as block-sparse kernels (`bsr`), 2:4 N:M
    as semi-structured Linear layers (`nm`); no kernel runs the other masks (their zeros are
    multiplied), so they save nothing."""
    out = {}
    for key in sparse_keys():
        fmt = key_scheme(key).kernel_format(key)
        if fmt is not None and fmt in format_gains:
            out[key] = format_gains[fmt]
    return out


def build_space(cfg: PrunetuneConfig, model: nn.Module, example_input: object,
                workdir: Path | None = None, scan: SchemeScan | None = None) -> PruningSpace:
    """The search space the config describes, over `model`. A latency budget is fitted from
    the search's latency table (`latency_table_file`), measuring missing layer entries on the
    trials' device now; `scan`: what `space.mapping: measured` chooses schemes from
    (`scheme_map.measured_scan`)."""
    analysis = analyze(model, example_input, importance=cfg.space.importance)
    latency = None
    if cfg.space.budget is not None and cfg.space.budget.kind == "latency":
        latency = _latency_weights(cfg, model, example_input, analysis, workdir)
    return space_from_analysis(cfg, analysis, latency=latency, scan=scan)
