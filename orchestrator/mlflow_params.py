"""What the MLflow tracker writes, named: a config as dotted string params, one param per
policy unit, the dense baseline's metric names, the search's experiment, and the error for a
store the search cannot do without."""

from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient

from prunetune.errors import SearchError

__all__ = ["dense_metric_names", "flatten", "get_or_create_experiment", "tracking_failed",
           "unit_params"]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict to dotted keys with string values (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


def get_or_create_experiment(client: MlflowClient, name: str,
                             artifact_root: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


def unit_params(policy: Any) -> dict[str, str]:
    """One param per unit: `ratio.<unit>` and `scheme.<unit>` (MLflow keys: at most 250
    characters, of which unit names use letters, digits, '.', '_' and '-')."""
    out = {}
    for name, up in policy.units.items():
        out[f"ratio.{name}"[:250]] = f"{up.ratio:.4f}"
        out[f"scheme.{name}"[:250]] = up.scheme
    return out


def dense_metric_names(metrics: dict[str, float]) -> dict[str, float]:
    """The dense baseline's metrics as the parent run logs them: `dense_` before each name
    that does not start with it already (`val_accuracy` -> `dense_val_accuracy`,
    `dense_latency_ms` stays)."""
    return {(k if k.startswith("dense_") else f"dense_{k}"): v for k, v in metrics.items()}


def tracking_failed(search: str, err: BaseException) -> SearchError:
    """The one-line error for an MLflow write or read the search cannot do without, with the
    command that continues the search once the store takes writes again."""
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return SearchError(f"search {search}: the MLflow tracking store refused a write or read "
                       f"({type(err).__name__}: {first}). The search's results are kept by Ray "
                       f"Tune; make the store (and its artifact folder) writable, then continue "
                       f"with: prunetune search CONFIG --resume --name {search}")
