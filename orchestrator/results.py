"""Reading a search back from MLflow: its parent run, its trials, the best and the Pareto front."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from prunetune.errors import SearchNotFoundError

__all__ = ["SearchNotFoundError", "TrialRecord", "find_search", "search_trials", "pareto_front",
           "format_table", "TAG_ROLE", "TAG_SEARCH", "TAG_TRIAL", "TAG_STATUS"]

TAG_ROLE = "prunetune.role"  # "search" (parent) or "trial" (child)
TAG_SEARCH = "prunetune.search"  # the search name, on parent and children
TAG_TRIAL = "prunetune.trial_id"  # Ray Tune trial id, on children
TAG_STATUS = "prunetune.status"  # running | finished | stopped | error


@dataclass
class TrialRecord:
    trial_id: str
    run_id: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: float = math.nan) -> float:
        return self.metrics.get(key, default)


def find_search(client: MlflowClient, experiment: str, search: str) -> Run:
    """The parent run of a search, by search name (newest first) or by parent run id."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = 'search' and tags.`{TAG_SEARCH}` = '{search}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0]
    try:
        run = client.get_run(search)
        if run.data.tags.get(TAG_ROLE) == "search":
            return run
    except Exception:  # not a run id either
        pass
    names = []
    if exp is not None:
        parents = client.search_runs([exp.experiment_id],
                                     filter_string=f"tags.`{TAG_ROLE}` = 'search'",
                                     order_by=["attributes.start_time DESC"], max_results=10)
        names = [r.data.tags.get(TAG_SEARCH, "?") for r in parents]
    known = ", ".join(names) if names else "none"
    raise SearchNotFoundError(f"no search named or with parent run id {search!r} in experiment "
                              f"{experiment!r} (recent searches: {known})")


def search_trials(client: MlflowClient, parent: Run) -> list[TrialRecord]:
    """Every child (trial) run of a search's parent run."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=10000)
    return [TrialRecord(trial_id=r.data.tags.get(TAG_TRIAL, r.info.run_name or ""),
                        run_id=r.info.run_id, status=r.data.tags.get(TAG_STATUS, "?"),
                        metrics=dict(r.data.metrics), params=dict(r.data.params),
                        tags=dict(r.data.tags)) for r in runs]


def pareto_front(rows: Iterable[Any], *, maximize: str = "accuracy",
                 minimize: str = "latency_ms") -> list[Any]:
    """Rows not dominated in (max `maximize`, min `minimize`), sorted by `minimize`.

    Rows are `TrialRecord`s or dicts; rows missing either metric are ignored.
    """
    def value(row: Any, key: str) -> float:
        v = row.get(key)  # dicts and TrialRecords both answer get()
        return math.nan if v is None else float(v)

    pts = [(value(r, minimize), -value(r, maximize), r) for r in rows]
    pts = [p for p in pts if not (math.isnan(p[0]) or math.isnan(p[1]))]
    pts.sort(key=lambda p: (p[0], p[1]))
    front, best = [], math.inf
    for _cost, neg_gain, row in pts:
        if neg_gain < best:
            front.append(row)
            best = neg_gain
    return front


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned text table."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
