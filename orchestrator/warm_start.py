"""`search.warm_start`: what a search learns from earlier searches in its MLflow store.

Read before any training (`read_history`: a name that is not a search of the store fails in
seconds), then mapped into the new search's space once it is built (`prior_trials`). Every
searcher gets the earlier searches' finished first-stage trials (policy and metrics) as prior
trials (`PolicySearcher.set_prior`); a searcher that transfers a saved state of its own kind
(`rl`'s `warm_start` option) gets the first one a named search kept instead, and then no
prior trials: the state already holds what that search learned.
"""

from __future__ import annotations

import inspect
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune.errors import SearchError

from .config import PrunetuneConfig

__all__ = ["SEARCHER_ARTIFACT", "History", "prior_trials", "read_history", "takes_state"]

# Where a search keeps its searcher's final state on its MLflow parent run.
SEARCHER_ARTIFACT = "searcher/state.json"
# The stages whose trials the searcher proposed (a finalist re-runs one of them, longer).
_SEARCHED_STAGES = ("trial", "proxy")


@dataclass
class History:
    """The earlier searches `search.warm_start` names, as read from the store."""

    searches: list[str] = field(default_factory=list)
    # (label `search/trial-007`, policy JSON, final metrics) per finished first-stage trial
    trials: list[tuple[str, str, dict[str, float]]] = field(default_factory=list)
    state: str | None = None  # a saved state of this search's searcher, downloaded
    state_from: str | None = None  # the search that kept it


def takes_state(searcher_cls: type) -> bool:
    """Whether the searcher transfers a saved searcher state (`warm_start=`, as `rl`)."""
    return "warm_start" in inspect.signature(searcher_cls.__init__).parameters


def _store_client(cfg: PrunetuneConfig, tracking_uri: str) -> Any:
    """The store's client; a sqlite store that does not exist yet holds no search."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///") and not Path(
            tracking_uri[len("sqlite:///"):]).is_file():
        raise SearchError(
            f"search.warm_start names {cfg.search.warm_start}, but there is no MLflow store at "
            f"{tracking_uri} yet: a warm start learns from earlier searches of this search's "
            "store. Run them with the same workdir (or tracking.uri), or leave warm_start out")
    return MlflowClient(tracking_uri)


def read_history(cfg: PrunetuneConfig, tracking_uri: str, workdir: Path,
                 searcher_cls: type) -> History:
    """The searches `cfg.search.warm_start` names: every name checked first (SearchError
    naming a missing one and the store's recent searches), then their finished first-stage
    trials and, for a searcher that takes a saved state, the first such state one kept."""
    from .results import SearchNotFoundError, find_search

    names = list(dict.fromkeys(cfg.search.warm_start))  # once each, in order
    if not names:
        return History()
    client = _store_client(cfg, tracking_uri)
    parents = []
    for name in names:
        try:
            parents.append(find_search(client, cfg.tracking.experiment, name))
        except SearchNotFoundError as err:
            raise SearchError(
                f"search.warm_start: {err}. Name earlier searches of this store "
                f"({tracking_uri}); `prunetune ui --tracking-uri {tracking_uri}` lists them "
                "all") from None
    history = History(searches=names)
    want_state = takes_state(searcher_cls)
    for name, parent in zip(names, parents, strict=True):
        history.trials += _finished_trials(client, name, parent)
        if want_state and history.state is None:
            history.state = _own_kind_state(client, parent, searcher_cls.__name__,
                                            workdir / "warm_start" / parent.info.run_id)
            history.state_from = name if history.state else None
    return history


def _finished_trials(client: Any, name: str, parent: Any) -> list[tuple[str, str, dict]]:
    """(label, policy JSON, metrics) of a search's finished first-stage trials with a finite
    accuracy, in trial order."""
    from .results import search_trials

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in sorted(search_trials(client, parent), key=lambda t: t.name):
            if (t.stage not in _SEARCHED_STAGES or t.status != "finished"
                    or not math.isfinite(t.get("accuracy"))):
                continue
            try:
                path = client.download_artifacts(t.run_id, "policy.json", f"{tmp}/{t.run_id}")
            except Exception:  # MLflow raises several types for a missing artifact
                continue  # a trial without its policy teaches nothing
            out.append((f"{name}/{t.name}", Path(path).read_text(), dict(t.metrics)))
    return out


def _own_kind_state(client: Any, parent: Any, kind: str, dest: Path) -> str | None:
    """The search's saved searcher state (downloaded to `dest`) when a `kind` searcher saved
    it; None when it kept none or another searcher's."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        path = client.download_artifacts(parent.info.run_id, SEARCHER_ARTIFACT, str(dest))
        state = json.loads(Path(path).read_text())
    except Exception:  # no state kept (an older or unfinished search): its trials still count
        return None
    return path if isinstance(state, dict) and state.get("searcher") == kind else None


def prior_trials(history: History, space: Any) -> tuple[list[Any], str]:
    """The history's trials as `PriorTrial`s of `space`'s model, and the line that says what
    was taken. A policy keeps only the units this space prunes (another depth of the model
    family shares some; those it lacks count unpruned); one sharing none is left out."""
    from prunetune.search_spaces import Policy

    from .searchers import PriorTrial

    units = getattr(space, "units", None)
    names = None if units is None else {u.name for u in units}
    out, foreign = [], 0
    for label, text, metrics in history.trials:
        policy = Policy.from_json(text)
        if names is not None:
            kept = {k: v for k, v in policy.units.items() if k in names}
            if not kept:
                foreign += 1
                continue
            policy = Policy(kept, importance=policy.importance, round_to=policy.round_to)
        out.append(PriorTrial(label, policy, metrics))
    where = ", ".join(history.searches)
    line = f"warm start from {where}: {len(out)} earlier trial(s) as prior trials"
    if foreign:
        line += f" ({foreign} left out: they prune no unit of this model)"
    return out, line
