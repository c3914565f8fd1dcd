"""What several search tests read back: a search's child runs from MLflow, and how often each
trial reported a final result to Tune."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from prunetune.orchestrator.results import TrialRecord, find_search, search_trials


def children(uri: str, name: str) -> list[TrialRecord]:
    """The search's child runs, or none while its store or parent run does not exist yet."""
    try:
        client = MlflowClient(uri)
        return search_trials(client, find_search(client, "prunetune", name))
    except Exception:  # store or parent not created yet
        return []


def final_reports(experiment: Path) -> dict[str, int]:
    """Final reports per trial in Tune's result.json files (one line per reported result)."""
    counts = {}
    for result in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        counts[result.parent.name] = sum(bool(r.get("final")) for r in rows)
    return counts
