"""Reading a search back from MLflow: its parent run, its trials, the best and the Pareto front."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from prunetune.errors import SearchNotFoundError

__all__ = ["SearchNotFoundError", "TrialRecord", "find_search", "search_trials", "pareto_front",
           "check_store", "format_table", "trial_name", "deciding_trials", "select_finalists",
           "latency_share",
           "STAGES", "TAG_LATENCY_CLOCK", "TAG_ROLE", "TAG_SEARCH", "TAG_STAGE", "TAG_TRIAL",
           "TAG_STATUS"]

TAG_ROLE = "prunetune.role"  # "search" (parent) or "trial" (child)
TAG_SEARCH = "prunetune.search"  # the search name, on parent and children
TAG_TRIAL = "prunetune.trial_id"  # Ray Tune trial id, on children
TAG_STATUS = "prunetune.status"  # running | finished | stopped | error | interrupted
# The stage a trial ran in: "proxy" and "finalist" in a two-stage search (the best proxy
# policies fine-tuned), "trial" in a search of one stage.
TAG_STAGE = "prunetune.stage"
# The clock a trial's latency_ms / speedup came from: latency backend, device, threads.
TAG_LATENCY_CLOCK = "prunetune.latency_clock"
STAGES = ("trial", "proxy", "finalist")


@dataclass
class TrialRecord:
    trial_id: str
    run_id: str
    name: str  # the child run's name (`trial-007`)
    status: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: float = math.nan) -> float:
        return self.metrics.get(key, default)

    @property
    def stage(self) -> str:
        return self.tags.get(TAG_STAGE, "trial")


def deciding_trials(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The trials a search's result is read from: its finished finalists when it has any
    (fine-tuned, they outrank the proxy scores), else every finished trial."""
    finished = [t for t in trials if t.status == "finished"]
    finalists = [t for t in finished if t.stage == "finalist"]
    return finalists or finished


def select_finalists(trials: list[TrialRecord], count: int, how: str,
                     max_latency_share: float | None = None) -> list[TrialRecord]:
    """`count` finished first-stage trials to fine-tune: the best by accuracy ("top"), or
    spread evenly along the Pareto front of accuracy against latency_ms ("pareto"; a front
    shorter than `count` is topped up with the best of the rest). Ties go to the earlier
    trial, so the choice is the same whenever it is made again (a resumed search).

    `max_latency_share`: a latency budget checked on the trials' measured latency
    (`latency_ms / dense_latency_ms`): trials within it are chosen from first, and ones over
    it only where too few are within. The space meets a latency budget on its linear latency
    model, which is a few percent off a runtime's measured latency either way."""
    ranked = sorted((t for t in trials if t.status == "finished"
                     and math.isfinite(t.get("accuracy"))),
                    key=lambda t: (-t.get("accuracy"), t.name))
    if max_latency_share is not None:
        within = [t for t in ranked if latency_share(t) <= max_latency_share]
        if len(within) >= count:
            ranked = within
        else:  # top up with the least over-budget ones, still by accuracy in the end
            over = sorted((t for t in ranked if t not in within), key=latency_share)
            ranked = sorted(within + over[:count - len(within)],
                            key=lambda t: (-t.get("accuracy"), t.name))
    if how == "top" or count >= len(ranked):
        return ranked[:count]
    front = pareto_front(ranked)
    if len(front) <= count:
        chosen = list(front)
    else:  # evenly spaced positions along the front, its two ends included
        picks = sorted({round(i * (len(front) - 1) / max(1, count - 1)) for i in range(count)})
        chosen = [front[i] for i in picks]
    chosen += [t for t in ranked if t not in chosen][:count - len(chosen)]
    return sorted(chosen, key=lambda t: (-t.get("accuracy"), t.name))


def latency_share(trial: TrialRecord) -> float:
    """A trial's measured latency over its dense model's (inf where it has none)."""
    latency, dense = trial.get("latency_ms"), trial.get("dense_latency_ms")
    return latency / dense if math.isfinite(latency) and dense > 0 else math.inf


# Seconds to wait for a tracking server before calling it unreachable.
_SERVER_TIMEOUT_S = 5.0


def check_store(uri: str) -> None:
    """Refuse, in seconds, a tracking store that is not there: a sqlite file that does not
    exist (MLflow would create an empty one and find no search in it) or a server that does
    not answer. Raises SearchNotFoundError naming the store and what to do."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise SearchNotFoundError(
                f"no MLflow store at {path} (tracking URI {uri}): run this in the folder the "
                "search ran in, or give --workdir DIR, --config CONFIG or --tracking-uri URI")
    elif uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health",
                                        timeout=_SERVER_TIMEOUT_S) as reply:
                reply.read()
        except (urllib.error.URLError, OSError) as err:
            raise SearchNotFoundError(
                f"the MLflow tracking server at {uri} does not answer ({err}); start it with "
                "`prunetune server --port PORT` (or check --tracking-uri)") from None


def trial_name(index: int, stage: str = "trial") -> str:
    """The name people see for the `index`-th trial (from 1) of a stage: `trial-007`,
    `proxy-017`, `finalist-3`."""
    return f"finalist-{index}" if stage == "finalist" else f"{stage}-{index:03d}"


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
    """Every trial (child run) of a search's parent run (its promote runs left out)."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                       f"tags.`{TAG_ROLE}` = 'trial'"),
        max_results=10000)
    return [TrialRecord(trial_id=r.data.tags.get(TAG_TRIAL, r.info.run_name or ""),
                        run_id=r.info.run_id, name=r.info.run_name or "",
                        status=r.data.tags.get(TAG_STATUS, "?"),
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
