"""The search config: one YAML file, validated by pydantic, every field defaulted.

Sections: `model`, `data`, `pretrain` (dense training) here; the pruning space, searcher,
fine-tuning, tracking and Ray sections join as their parts land. A bad field is a `ConfigError`
naming the field, the value and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunetune.trainers import DataConfig, ModelConfig, TrainConfig

__all__ = ["ConfigError", "PrunetuneConfig", "load_config", "apply_overrides"]


class ConfigError(ValueError):
    """The config file is missing, not YAML, or has fields with values that are not allowed."""


class PrunetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Name of the search: the Ray Tune experiment name and the MLflow parent run's name.
    name: str | None = None
    # Folder for runs, the MLflow sqlite store and results (relative to the current directory).
    workdir: str = "runs"
    # Where dense checkpoints are cached; None: $PRUNETUNE_CACHE or ~/.cache/prunetune.
    cache_dir: str | None = None
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: TrainConfig = Field(default_factory=TrainConfig)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field; check the spelling (see examples/ for the "
                         "allowed fields)")
        else:
            lines.append(f"  {field}: {e['msg']}, got {e.get('input')!r}")
    return "\n".join(lines)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[leaf] = value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`search.trials`) in a raw config dict; None values are skipped."""
    for key, value in overrides.items():
        if value is not None:
            _set_path(raw, key, value)
    return raw


def load_config(path: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> PrunetuneConfig:
    """Read and validate a YAML config; `overrides` maps dotted field names to values."""
    raw: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got "
                              f"{type(loaded).__name__}")
        raw = loaded
    apply_overrides(raw, overrides or {})
    try:
        return PrunetuneConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
