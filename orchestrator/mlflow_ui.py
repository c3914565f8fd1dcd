"""The MLflow UI a search opens in: the view stored with its experiment (columns, sort, the
accuracy-against-speedup chart) and the addresses prunetune prints or stores, all in MLflow's
model-training view."""

from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient

__all__ = ["MODEL_TRAINING", "UI_VIEW_KEY", "run_url", "set_up_ui", "ui_url", "ui_view_state"]

# The runs table a search opens on (MLflow's shared view state, an experiment tag).
UI_VIEW_KEY = "prunetune"
UI_COLUMNS = ("accuracy", "speedup", "latency_ms", "flops_ratio", "params_ratio", "sparsity")
# The chart the Charts view of a search's experiment opens with, in a section of its own
# above MLflow's generated ones: accuracy against speedup, one point per trial.
UI_CHART_SECTION = "prunetune-trade-off"
UI_CHART_TITLE = "accuracy against speedup"


def ui_view_state() -> dict[str, Any]:
    """The runs view a search's experiment opens on: the key metrics as columns, best
    accuracy first (sorted by a metric, MLflow lists the trials, not nested in their search),
    and in its Charts view a scatter of accuracy against speedup first (MLflow's shared view
    state holds the runs view's UI state: `compareRunCharts`, `compareRunSections`)."""
    metrics = [f"metrics.`{m}`" for m in UI_COLUMNS]
    scatter = {"type": "SCATTER", "uuid": f"{UI_CHART_SECTION}-scatter", "isGenerated": False,
               "deleted": False, "metricSectionId": UI_CHART_SECTION,
               "displayName": UI_CHART_TITLE, "runsCountToCompare": 1000,
               "xaxis": {"key": "speedup", "type": "METRIC"},
               "yaxis": {"key": "accuracy", "type": "METRIC"}}
    section = {"uuid": UI_CHART_SECTION, "name": "Trade-off", "display": True,
               "isReordered": False}
    return {"orderByKey": "metrics.`accuracy`", "orderByAsc": False,
            "selectedColumns": ["attributes.`Models`", *metrics],
            "compareRunCharts": [scatter], "compareRunSections": [section]}


def set_up_ui(client: MlflowClient, exp_id: str) -> None:
    """Tag the experiment so MLflow's UI opens it as model training (not its GenAI view), with
    the key metrics as columns (`ui_url` gives the address)."""
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{UI_VIEW_KEY}",
                              json.dumps(ui_view_state()))


# MLflow 3's UI picks its GenAI or model-training pages from the address's `workflowType`
# (else from the browser's last choice, GenAI at first), not from the experiment's tags: every
# address prunetune prints or stores says it.
MODEL_TRAINING = "workflowType=machine_learning"


def ui_url(base: str, exp_id: str) -> str:
    """The address of a search's runs in the MLflow UI at `base` (http://HOST:PORT): the
    model-training view, with the shared view state `set_up_ui` stored."""
    return (f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?viewStateShareKey={UI_VIEW_KEY}"
            f"&{MODEL_TRAINING}")


def run_url(base: str, exp_id: str, run_id: str) -> str:
    """The address of one run's page in the MLflow UI at `base` ('' for a link relative to
    the UI, as run descriptions hold them), in the model-training view."""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}?{MODEL_TRAINING}"
