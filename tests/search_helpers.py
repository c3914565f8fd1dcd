"""What several search tests share: a search config to start from, a search's child runs read
back from MLflow, and how often each trial reported a final result to Tune."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from prunetune.orchestrator.results import TrialRecord, find_search, search_trials

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, name: str, **sections: dict) -> Path:
    """examples/digits-smoke.yaml (a search of a minute) named `name`, its workdir in
    `tmp_path`, with `sections` merged in (`search={"trials": 8}`), written to a file."""
    base = yaml.safe_load((ROOT / "examples" / "digits-smoke.yaml").read_text())
    base.update(name=name, workdir=str(tmp_path / "work"))
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def write_engine_config(root: Path, space: str) -> Path:
    """A ResNet-20 / digits config with a short pretraining, for the engine commands
    (`analyze`, `apply`, `baselines`); `space` is the YAML flow mapping of its `space`."""
    path = root / "cfg.yaml"
    path.write_text(f"""
model: {{name: resnet20}}
data: {{name: digits, batch_size: 64}}
pretrain: {{epochs: 0.3, lr: 0.05}}
finetune: {{epochs: 0.2, lr: 0.01}}
space: {space}
cache_dir: {root / 'cache'}
""")
    return path


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
