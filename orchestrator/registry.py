"""Promotion of a search's best policy to the MLflow model registry, and loading it back.

`promote` picks a trial of a finished search (`--select "max accuracy where speedup >= 2"` or
`--trial ID`; among the fine-tuned finalists when the search has any), re-applies its policy to
the dense checkpoint the search used, fine-tunes it as the trial was, evaluates it on the test
split, logs it with `mlflow.pytorch.log_model` under a promote
run (tagged with the source search and trial), registers a new version of the named model,
points the alias at it and tags the version with the policy, the metrics and the source.
Beside the PyTorch model it logs the pruned model in the deployment format of the latency
backend the search was timed with (`latency.backend`; ONNX for onnxruntime and tensorrt, with
MLflow's ONNX flavour, checked to reproduce the PyTorch outputs within 1e-4 first: see
`deployable.py`), and tags the version with the backend, the trial's measured latency and the
ONNX model's URI (`prunetune.onnx_model_uri`). `prunetune export` writes the same files to a
folder (`choose_trial` + `rebuild_trial`).

Every check that can fail (the search, the selection, the config, the dense checkpoint) runs
before anything is written, so a failed promotion registers nothing.

Loading back::

    from prunetune.orchestrator.registry import load_promoted
    model = load_promoted("models:/digits-resnet20@champion")   # a plain torch nn.Module

The logged MLflow model is the pruned network exported with `torch.export` (MLflow's safe
"pt2" format, so `mlflow.pytorch.load_model` and pyfunc serving work without unpickling code);
next to it go `prunetune_model.json` (architecture, policy, cost, metrics, source) and the
pruned `state_dict.pt`, from which `load_promoted` rebuilds the original module classes (read
with `torch.load(..., weights_only=True)`). `load_promoted(uri, sparse=True)` swaps masked
layers for the kernels' sparse modules for the device it loads onto (block-sparse / N:M schemes).
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune.errors import NoMatchingTrialError, PromotionError, SelectionError

from .deployable import Deployable, deploy_tags, log_deployable, resolve_backend, write_deployable
from .results import (
    TAG_SEARCH,
    TAG_TRIAL,
    TrialRecord,
    deciding_trials,
    find_search,
    search_trials,
)

__all__ = [
    "DEFAULT_SELECT",
    "SPEC_FORMAT",
    "Condition",
    "NoMatchingTrialError",
    "PromotionError",
    "PromotionResult",
    "Selection",
    "SelectionError",
    "ChosenTrial",
    "RebuiltTrial",
    "choose_trial",
    "load_promoted",
    "load_promoted_with_spec",
    "parse_select",
    "promote",
    "rebuild_trial",
    "select_trial",
    "trial_epochs",
]

SPEC_FORMAT = "prunetune-promoted/1"
SPEC_FILE = "prunetune_model.json"
STATE_FILE = "state_dict.pt"
DEFAULT_SELECT = "max accuracy"
TAG_PREFIX = "prunetune."
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "=": operator.eq, "!=": operator.ne}
_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SELECT_RE = re.compile(rf"^\s*(max|min)\s+({_NAME})\s*(?:\s(?i:where)\s+(.*))?$", re.IGNORECASE)
_COND_RE = re.compile(rf"^\s*({_NAME})\s*(>=|<=|==|!=|=|>|<)\s*({_NUMBER})\s*$")
_SELECT_RULE = ("a selection reads 'max|min METRIC [where METRIC OP NUMBER [and ...]]' with OP "
                "one of >= <= > < == !=, e.g. 'max accuracy where speedup >= 2'")


# ---------------------------------------------------------------------------------------------
# Selection


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def holds(self, trial: TrialRecord) -> bool:
        v = trial.metrics.get(self.metric)
        return v is not None and math.isfinite(v) and _OPS[self.op](v, self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Selection:
    mode: str  # "max" | "min"
    metric: str
    conditions: tuple[Condition, ...] = ()

    def __str__(self) -> str:
        where = " and ".join(str(c) for c in self.conditions)
        return f"{self.mode} {self.metric}" + (f" where {where}" if where else "")


def parse_select(expr: str) -> Selection:
    """Parse `max accuracy where speedup >= 2 and params_ratio < 0.5` into a Selection."""
    m = _SELECT_RE.match(expr or "")
    if m is None:
        raise SelectionError(f"cannot read --select {expr!r}: {_SELECT_RULE}")
    mode, metric, where = m.group(1).lower(), m.group(2), m.group(3)
    conditions: list[Condition] = []
    if where is not None:
        parts = re.split(r"\s+and\s+", where.strip(), flags=re.IGNORECASE)
        for part in parts:
            c = _COND_RE.match(part)
            if c is None:
                raise SelectionError(f"cannot read the condition {part.strip()!r} of --select "
                                     f"{expr!r}: {_SELECT_RULE}")
            conditions.append(Condition(c.group(1), c.group(2), float(c.group(3))))
    return Selection(mode, metric, tuple(conditions))


def _range(trials: list[TrialRecord], metric: str) -> str:
    vals = [t.metrics[metric] for t in trials if math.isfinite(t.metrics.get(metric, math.nan))]
    return f"{min(vals):.4g}..{max(vals):.4g}" if vals else "absent"


def select_trial(trials: list[TrialRecord], selection: Selection, *,
                 search: str = "") -> TrialRecord:
    """The finished trial that is best by `selection` among those meeting its conditions."""
    finished = [t for t in trials if t.status == "finished"]
    if not finished:
        raise NoMatchingTrialError(f"search {search!r} has no finished trial (of {len(trials)}); "
                                   "promote needs a trial that ran to its final report")
    known = sorted({k for t in finished for k in t.metrics})
    for metric in [selection.metric, *(c.metric for c in selection.conditions)]:
        if metric not in known:
            raise SelectionError(f"--select names the metric {metric!r}, which the trials of "
                                 f"search {search!r} do not have; known metrics: "
                                 f"{', '.join(known)}")
    ok = [t for t in finished if all(c.holds(t) for c in selection.conditions)
          and math.isfinite(t.metrics.get(selection.metric, math.nan))]
    if not ok:
        ranges = "; ".join(f"{c.metric} ranges {_range(finished, c.metric)}"
                           for c in selection.conditions)
        raise NoMatchingTrialError(
            f"no finished trial of search {search!r} satisfies '{selection}' ({len(finished)} "
            f"finished trials; {ranges}). Loosen the condition, or name a trial with --trial ID "
            "(see `prunetune results`)")
    sign = 1.0 if selection.mode == "max" else -1.0
    return max(ok, key=lambda t: (sign * t.metrics[selection.metric], t.trial_id))


def _trial_by_id(trials: list[TrialRecord], trial_id: str, search: str) -> TrialRecord:
    """The trial `trial_id` names: its name as `results` and the UI show it (`trial-003`),
    its Ray Tune trial id or its MLflow run id."""
    match = [t for t in trials if trial_id in (t.name, t.trial_id, t.run_id)]
    if not match:
        some = ", ".join(sorted(t.name for t in trials)[:10]) or "none"
        raise SelectionError(f"--trial {trial_id!r} is not a trial of search {search!r}; its "
                             f"trials are {some} (a name as `prunetune results` shows it, or "
                             "its Tune trial id or MLflow run id)")
    if match[0].status != "finished":
        raise SelectionError(f"trial {match[0].name} of search {search!r} is "
                             f"{match[0].status}, not finished; promote needs a trial that ran "
                             "to its final report")
    return match[0]


# ---------------------------------------------------------------------------------------------
# Promotion


@dataclass
class PromotionResult:
    model_name: str
    version: int
    alias: str
    uri: str  # models:/NAME@ALIAS
    run_id: str  # the promote run
    search: str
    trial_id: str  # its Ray Tune id
    metrics: dict[str, float]
    model: Any = field(repr=False)  # the promoted nn.Module (CPU, eval mode)
    example_input: Any = field(repr=False)  # test-split inputs (tensor)
    trial: str = ""  # the trial's name, as `results` and the UI show it (`trial-003`)
    latency_backend: str = "eager"  # what the search timed with (`latency.backend`)
    onnx_uri: str | None = None  # the ONNX model logged beside it (ONNX backends), else None


def _check_names(model_name: str, alias: str) -> None:
    if not model_name or not model_name.strip() or any(c in model_name for c in "/:"):
        raise PromotionError(f"--model-name must be a non-empty name without '/' or ':', got "
                             f"{model_name!r} (e.g. digits-resnet20)")
    if (not re.fullmatch(r"[\w\-]+", alias) or alias.lower() == "latest"
            or re.fullmatch(r"[vV]\d+", alias)):
        raise PromotionError(f"--alias must be letters, digits, '_' or '-', and neither 'latest' "
                             f"nor a version like 'v2'; got {alias!r} (e.g. champion)")


@contextmanager
def _mlflow_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at `uri`, then put back exactly what
    was there: MLflow mirrors both URIs into environment variables that subprocesses inherit."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                                          "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")}
    tracking, registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow's own "View run at" link opens its GenAI pages; promote prints its own
    # (`tracking.run_url`).
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking)
        registry_utils._registry_uri = registry
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _artifact_text(client: Any, run_id: str, path: str, what: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception as err:  # noqa: BLE001 - MlflowException / OSError from the store
            raise PromotionError(f"{what}: run {run_id} has no artifact {path} ({err}); was it "
                                 "made by `prunetune search`?") from None
        return Path(local).read_text()


def _rebuild_config(client: Any, parent: Any) -> Any:
    from pydantic import ValidationError

    from .config import PrunetuneConfig

    text = _artifact_text(client, parent.info.run_id, "config.json", "search config")
    try:
        return PrunetuneConfig.model_validate(json.loads(text))
    except (ValidationError, json.JSONDecodeError) as err:
        raise PromotionError(f"the config.json of search run {parent.info.run_id} does not "
                             f"validate with this prunetune version: {err}") from None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _tag(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@dataclass
class ChosenTrial:
    """The trial a promotion takes, with what rebuilding it needs."""

    parent: Any  # the search's MLflow parent run
    search: str  # the search's name
    trial: TrialRecord
    how: str  # the selection, as said in tags and descriptions
    cfg: Any  # the search's PrunetuneConfig
    policy: Any  # the trial's Policy


def _choose(client: Any, experiment: str, search: str, select: str | None,
            trial: str | None) -> ChosenTrial:
    """Find the search and its trial, and read back its config and policy (nothing written)."""
    from prunetune.search_spaces import Policy, PolicyError

    selection = parse_select(select or DEFAULT_SELECT)
    parent = find_search(client, experiment, search)
    name = parent.data.tags.get(TAG_SEARCH, search)
    trials = search_trials(client, parent)
    # Fine-tuned finalists outrank first-stage proxy scores when the search has any.
    chosen = (_trial_by_id(trials, trial, name) if trial
              else select_trial(deciding_trials(trials) or trials, selection, search=name))
    cfg = _rebuild_config(client, parent)
    try:
        policy = Policy.from_json(_artifact_text(client, chosen.run_id, "policy.json",
                                                 f"trial {chosen.name}"))
    except PolicyError as err:
        raise PromotionError(f"the policy of trial {chosen.name} does not load: "
                             f"{err}") from None
    return ChosenTrial(parent, name, chosen,
                       f"trial {chosen.name}" if trial else str(selection), cfg, policy)


def choose_trial(search: str, *, tracking_uri: str, experiment: str = "prunetune",
                 select: str | None = None, trial: str | None = None) -> ChosenTrial:
    """The trial of `search` that `select` (default: the best by accuracy, among the finalists
    when there are any) or `trial` (a name or id) names, with its search's config and its
    policy read back; nothing is written. Raises SearchNotFoundError, SelectionError,
    NoMatchingTrialError or PromotionError."""
    from mlflow.tracking import MlflowClient

    if select and trial:
        raise SelectionError("give either --select or --trial, not both")
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    return _choose(client, experiment, search, select, trial)


def trial_epochs(c: ChosenTrial, finetune_epochs: float | None) -> float:
    """The fine-tuning epochs a rebuild of `c` uses: `finetune_epochs`, or None for the trial's
    own (a finalist's epochs, not the first stage's)."""
    if finetune_epochs is None:
        return float(c.trial.params.get("finetune_epochs", c.cfg.finetune.epochs))
    if finetune_epochs < 0:
        raise PromotionError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    return float(finetune_epochs)


def _check_reproduced(c: ChosenTrial, dense: Any, example: Any) -> None:
    """The policy must give the trial's FLOPs on the rebuilt dense model, before any
    fine-tuning or registration (else the dense checkpoint is not the search's)."""
    from prunetune.search_spaces import PolicyError, apply_policy, count_cost

    try:
        cost = count_cost(apply_policy(dense, c.policy, example), example)
    except PolicyError as err:
        raise PromotionError(f"trial {c.trial.name}'s policy does not fit the dense model "
                             f"rebuilt from the search config: {err}") from None
    want = c.trial.metrics.get("flops")
    if want is not None and not _close(cost.effective_flops, want):
        raise PromotionError(
            f"re-applying trial {c.trial.name}'s policy gives {cost.effective_flops:.6g} "
            f"effective FLOPs but the trial reported {want:.6g}: the dense checkpoint differs from "
            "the one the search used (model.checkpoint / cache_dir in the search config must "
            "point at the same weights)")


@dataclass
class RebuiltTrial:
    """A promoted trial's model, rebuilt: what the promote run logs."""

    model: Any  # the pruned, fine-tuned nn.Module (CPU, eval mode)
    metrics: dict[str, float]
    inputs: Any  # the first test images (tensor): the logged model's input example
    spec: dict[str, Any]  # prunetune_model.json, less its source


def rebuild_trial(c: ChosenTrial, epochs: float, progress: bool) -> RebuiltTrial:
    """Re-apply the policy to the dense checkpoint, fine-tune it as the trial was (its own
    seed), evaluate it on the test split."""
    from prunetune.trainers import load_data, pretrain_dense, prune_and_evaluate

    cfg = c.cfg
    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                           progress=progress)
    data = load_data(cfg.data)
    _check_reproduced(c, dense.model, data.example_input(1))
    seed = int(c.trial.params.get("seed", cfg.seed))
    splits = ("test", "val") if len(data.val) else ("test",)
    pruned = prune_and_evaluate(dense.model, c.policy, data,
                                cfg.finetune.model_copy(update={"epochs": epochs}), seed=seed,
                                splits=splits, device="cpu", progress=progress, desc="promote")
    test = pruned.scores["test"]
    metrics: dict[str, float] = {
        "test_accuracy": test.accuracy, "test_loss": test.loss, **pruned.cost_metrics(),
        "dense_test_accuracy": float(dense.metrics.get("test_accuracy", math.nan)),
        "finetune_epochs": float(epochs)}
    if "val" in pruned.scores:
        metrics["val_accuracy"] = pruned.scores["val"].accuracy
    inputs = next(iter(data.loader("test", shuffle=False)))[0][:4].contiguous()
    spec = {"format": SPEC_FORMAT, "model": dense.checkpoint["model"],
            "input_shape": list(inputs.shape[1:]), "dataset": cfg.data.name,
            "policy": c.policy.to_dict(), "cost": pruned.cost.to_dict(), "metrics": metrics}
    return RebuiltTrial(pruned.model, metrics, inputs, spec)


def _register(c: ChosenTrial, r: RebuiltTrial, dep: Deployable, *, model_name: str, alias: str,
              epochs: float, tracking_uri: str, client: Any) -> tuple[int, str, dict[str, str]]:
    """Log the promote run (model, spec, state dict, the deployable file), register a version,
    move the alias: (version, promote run id, the deployment's version tags)."""
    import mlflow
    import torch

    source_tags = {f"{TAG_PREFIX}role": "promote", TAG_SEARCH: c.search,
                   f"{TAG_PREFIX}search_run_id": c.parent.info.run_id,
                   TAG_TRIAL: c.trial.trial_id, f"{TAG_PREFIX}trial_run_id": c.trial.run_id,
                   f"{TAG_PREFIX}trial": c.trial.name,
                   f"{TAG_PREFIX}selection": c.how}
    metrics = r.metrics
    spec = {**r.spec, "source": {"search": c.search, "search_run_id": c.parent.info.run_id,
                               "trial": c.trial.name, "trial_id": c.trial.trial_id,
                               "trial_run_id": c.trial.run_id,
                               "selection": c.how, "tracking_uri": tracking_uri}}
    trial_metrics = {f"trial_{k}": v for k, v in c.trial.metrics.items()
                     if isinstance(v, float) and math.isfinite(v)}
    policy_json = c.policy.to_json(indent=None)
    with tempfile.TemporaryDirectory() as tmp, _mlflow_uri(tracking_uri):
        spec_path, state_path = Path(tmp) / SPEC_FILE, Path(tmp) / STATE_FILE
        spec_path.write_text(json.dumps(spec, indent=2))
        torch.save(r.model.state_dict(), state_path)
        # Nested under the search's parent run, so the UI shows the promotion with the search.
        with mlflow.start_run(experiment_id=c.parent.info.experiment_id,
                              run_name=f"promote-{c.search}-{c.trial.name}",
                              tags={**source_tags,
                                    "mlflow.parentRunId": c.parent.info.run_id}) as run:
            mlflow.log_params({"model_name": model_name, "alias": alias, "selection": c.how,
                               "finetune_epochs": epochs, "trial_id": c.trial.trial_id,
                               "latency_backend": dep.backend})
            mlflow.log_metrics({**metrics, **trial_metrics})
            mlflow.log_text(c.policy.to_json(), "policy.json")
            info = mlflow.pytorch.log_model(
                r.model, name="model", input_example=r.inputs.numpy(),
                serialization_format="pt2", extra_files=[str(spec_path), str(state_path)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}"])
            deploy = {**deploy_tags(dep, c.trial), **log_deployable(dep, r.inputs)}
            version_tags = {**source_tags, **deploy,
                            f"{TAG_PREFIX}promote_run_id": run.info.run_id,
                            f"{TAG_PREFIX}policy": (policy_json if len(policy_json) <= 7500 else
                                                    "see the promote run's policy.json"),
                            **{f"metric.{k}": _tag(v) for k, v in metrics.items()},
                            **{f"{TAG_PREFIX}{k}": _tag(v) for k, v in c.policy.summary().items()}}
            version_tags.pop(f"{TAG_PREFIX}role")
            mv = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
            client.set_registered_model_alias(model_name, alias, mv.version)
            client.update_model_version(model_name, mv.version, description=(
                f"Search {c.search}, trial {c.trial.name} ({c.how}): test accuracy "
                f"{metrics['test_accuracy']:.4f}, FLOPs x{metrics['flops_ratio']:.3f}, params "
                f"x{metrics['params_ratio']:.3f}"))
            mlflow.set_tag(f"{TAG_PREFIX}registered", f"{model_name}/{mv.version}")
    _link_from_search(client, c, model_name, int(mv.version), run.info.run_id, metrics)
    return int(mv.version), run.info.run_id, deploy


def _link_from_search(client: Any, c: ChosenTrial, model_name: str, version: int, run_id: str,
                      metrics: dict[str, float]) -> None:
    """Say on the search's parent run what was promoted from it: a tag per registered version
    and a line in the run's description (shown on its page)."""
    parent = c.parent.info.run_id
    client.set_tag(parent, f"{TAG_PREFIX}registered.{model_name}", str(version))
    note = client.get_run(parent).data.tags.get("mlflow.note.content", "")
    from .mlflow_ui import run_url

    link = run_url("", c.parent.info.experiment_id, run_id)
    line = (f"Promoted {c.trial.name} ({c.how}) to registered model "
            f"{model_name} version {version} ([promote run]({link})): test accuracy "
            f"{metrics['test_accuracy']:.4f}, FLOPs x{metrics['flops_ratio']:.3f}.")
    client.set_tag(parent, "mlflow.note.content", f"{note}\n\n{line}".strip())


def promote(search: str, model_name: str, *, tracking_uri: str, experiment: str = "prunetune",
            select: str | None = None, trial: str | None = None,
            finetune_epochs: float | None = None, alias: str = "champion",
            progress: bool = True) -> PromotionResult:
    """Promote one trial of `search` to a new version of `model_name` with `alias`.

    Without `select` / `trial` the best fine-tuned finalist is taken (the best trial when the
    search had one stage). `finetune_epochs` None fine-tunes as the chosen trial was (its
    stage's epochs, the `finetune` recipe, its own seed); 0 skips fine-tuning. Raises
    SearchNotFoundError, SelectionError, NoMatchingTrialError or PromotionError, in each case
    before anything is registered.
    """
    from mlflow.tracking import MlflowClient

    if select and trial:
        raise SelectionError("give either --select or --trial, not both")
    _check_names(model_name, alias)
    if finetune_epochs is not None and finetune_epochs < 0:
        raise PromotionError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    c = _choose(client, experiment, search, select, trial)
    backend = resolve_backend(c.cfg.latency.backend)  # one that cannot load fails here
    if progress:
        print(f"[promote] search {c.search}: trial {c.trial.name} chosen by '{c.how}' "
              f"(accuracy {c.trial.get('accuracy'):.4f}, speedup "
              f"{c.trial.get('speedup'):.2f}x)", flush=True)
    epochs = trial_epochs(c, finetune_epochs)
    rebuilt = rebuild_trial(c, epochs, progress)
    with tempfile.TemporaryDirectory() as tmp:
        # Written (and round-trip checked) before the promote run starts: a model that does not
        # export registers nothing.
        dep = write_deployable(rebuilt.model, rebuilt.inputs, backend, Path(tmp))
        version, run_id, deploy = _register(c, rebuilt, dep, model_name=model_name, alias=alias,
                                            epochs=epochs, tracking_uri=tracking_uri,
                                            client=client)
    m = rebuilt.metrics
    if progress:
        print(f"[promote] registered {model_name} version {version}, alias {alias}: test "
              f"accuracy {m['test_accuracy']:.4f}, FLOPs x{m['flops_ratio']:.3f}; latency "
              f"backend {dep.backend}" + (f", its {dep.format} model beside it" if dep.format
                                          else ""), flush=True)
        if tracking_uri.startswith(("http://", "https://")):
            from .mlflow_ui import run_url

            print(f"[promote] promote run: "
                  f"{run_url(tracking_uri, c.parent.info.experiment_id, run_id)}", flush=True)
    return PromotionResult(model_name=model_name, version=version, alias=alias,
                           uri=f"models:/{model_name}@{alias}", run_id=run_id, search=c.search,
                           trial_id=c.trial.trial_id, metrics=m, model=rebuilt.model,
                           example_input=rebuilt.inputs, trial=c.trial.name,
                           latency_backend=dep.backend,
                           onnx_uri=deploy.get(f"{TAG_PREFIX}onnx_model_uri"))


# ---------------------------------------------------------------------------------------------
# Loading


def load_promoted_with_spec(uri: str, *, tracking_uri: str | None = None, device: str = "cpu",
                            sparse: bool = False) -> tuple[Any, dict[str, Any]]:
    """`load_promoted`, also returning the model's `prunetune_model.json` spec."""
    import mlflow
    import torch

    from prunetune.search_spaces import Policy, apply_policy
    from prunetune.trainers import build_model

    with tempfile.TemporaryDirectory() as tmp:
        try:
            if tracking_uri:
                with _mlflow_uri(tracking_uri):
                    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            else:
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except Exception as err:  # noqa: BLE001 - MlflowException for unknown models / aliases
            raise PromotionError(f"cannot download {uri}: {err}. Give models:/NAME@ALIAS or "
                                 "models:/NAME/VERSION of a promoted model, and the tracking URI "
                                 "of its registry (--tracking-uri / MLFLOW_TRACKING_URI)") from None
        found = list(Path(local).rglob(SPEC_FILE))
        states = list(Path(local).rglob(STATE_FILE))
        if not found or not states:
            raise PromotionError(f"{uri} is not a model promoted by prunetune (no {SPEC_FILE}); "
                                 "load it with mlflow.pytorch.load_model instead")
        spec = json.loads(found[0].read_text())
        state = torch.load(states[0], map_location="cpu", weights_only=True)
    if spec.get("format") != SPEC_FORMAT:
        raise PromotionError(f"{uri} has spec format {spec.get('format')!r}; this version reads "
                             f"{SPEC_FORMAT!r}")
    m = spec["model"]
    dense = build_model(m["name"], num_classes=m["num_classes"], in_channels=m["in_channels"],
                        **m.get("kwargs", {}))
    example = torch.zeros(1, *spec["input_shape"])
    # The policy fixes every pruned shape; the weights (and masks) then come from the state dict.
    model = apply_policy(dense, Policy.from_dict(spec["policy"]), example)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PromotionError(f"the weights of {uri} do not fit the architecture its policy "
                             f"rebuilds: {err}") from None
    model.eval()
    if sparse:
        from prunetune.kernels import deploy

        return deploy(model, device), spec
    return model.to(device), spec


def load_promoted(uri: str, *, tracking_uri: str | None = None, device: str = "cpu",
                  sparse: bool = False) -> Any:
    """A promoted model as a working `torch.nn.Module` in eval mode.

    `uri`: `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/RUN_ID/model`; the registry is
    `tracking_uri` or MLflow's current one ($MLFLOW_TRACKING_URI). `sparse=True` swaps masked
    layers for the sparse kernel modules suited to `device` (inference only).
    """
    return load_promoted_with_spec(uri, tracking_uri=tracking_uri, device=device,
                                   sparse=sparse)[0]
