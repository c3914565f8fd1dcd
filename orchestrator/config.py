"""The search config: one YAML file, validated by pydantic, every field defaulted.

Sections: `model`, `data` and `pretrain` (the dense model), `space` (what may be pruned, under
which budget), `search` (searcher, trials, scheduler, latency), `finetune` (each candidate's
fine-tuning), `ray` and `tracking`. A bad field is a `ConfigError` naming the field, the value
and what is allowed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prunetune.errors import ConfigError
from prunetune.trainers.settings import DataConfig, FinetuneConfig, ModelConfig, TrainConfig

__all__ = ["ConfigError", "PrunetuneConfig", "SpaceConfig", "BudgetConfig", "SearchConfig",
           "FinalistsConfig", "SchedulerConfig", "LatencyConfig", "RayConfig", "TrackingConfig",
           "load_config", "apply_overrides", "check_devices", "latency_device"]

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetConfig(_Section):
    kind: Literal["flops", "params", "latency"] = "flops"
    # Allowed fraction of the dense model's cost: 0.5 keeps at most half the FLOPs.
    keep: float = Field(0.5, gt=0, le=1)
    # Decode every point onto the budget (a policy that prunes more than the budget requires
    # is scaled back until it just meets it); null: the searcher's measured default.
    fill: bool | None = None


# The pruning schemes prunetune ships (registered by prunetune.search_spaces.schemes, which is not
# imported to check a config: it needs torch); any other is one registered in this process or
# "package.module:attr" (a PruningScheme subclass, imported when the config is checked).
SHIPPED_SCHEMES = ("channel", "block", "nm", "unstructured", "pattern")


def _known_schemes() -> tuple[str, ...]:
    """The registry's names where it is loaded already (schemes registered in this process
    included), else the shipped ones."""
    registry = sys.modules.get("prunetune.search_spaces.schemes")
    return tuple(registry.scheme_names()) if registry is not None else SHIPPED_SCHEMES


def _check_scheme(name: str) -> None:
    """ConfigError unless `name` is a known scheme, or a `package.module:attr` that imports as
    one (registered under that path, so the analysis and the trials find it)."""
    module, _, attr = name.partition(":")
    if not (module and attr):
        if name not in _known_schemes():
            raise ConfigError(f"{name!r} is not a pruning scheme; use any of "
                              f"{list(_known_schemes())} or 'package.module:attr' (your own "
                              "PruningScheme subclass)")
        return
    from prunetune.errors import PolicyError
    from prunetune.search_spaces.schemes import get_scheme

    try:
        get_scheme(name)
    except PolicyError as err:
        raise ConfigError(str(err)) from None


class SpaceConfig(_Section):
    # Schemes the search may use; the first applicable one is each unit's default. A shipped
    # scheme's name (SHIPPED_SCHEMES), or your own as "package.module:attr".
    schemes: list[str] = Field(default_factory=lambda: ["channel"], min_length=1)
    # Per-unit pruning-ratio range the search vector is scaled into.
    ratio_bounds: tuple[float, float] = (0.0, 0.8)
    # Resource budget every decoded policy meets; null searches without one.
    budget: BudgetConfig | None = Field(default_factory=BudgetConfig)
    # Layer groups (search dimensions): an int, null (one dimension per prunable unit), or
    # "auto": the searcher's own choice (bo: clustered groups, rolled back to one per unit;
    # random, rl: one per unit).
    groups: int | Literal["auto"] | None = "auto"
    # Search the scheme of each group as a categorical dimension.
    scheme_search: bool = False
    # How each unit's scheme is chosen (the first option when scheme_search is on): "rules"
    # (layer type and device) or "measured": the scheme that saves the most latency on the
    # trials' device per point of proxy accuracy lost, from a sensitivity scan that is cached
    # per dense model (`prunetune map CONFIG` shows and makes it).
    mapping: Literal["rules", "measured"] = "rules"
    # Kept channels rounded down to a multiple of this (an int), none (null), or "auto": the
    # latency backend's choice (eager: none; onnxruntime: 8). ONNX Runtime runs a 50%-FLOPs
    # ResNet-20 with arbitrary widths slower than the dense model (0.83x; MobileNetV2 0.52x),
    # with widths of 8 at 1.31x / 1.65x (benchmarks/README.md, "Latency backends").
    round_to: int | Literal["auto"] | None = Field("auto")
    # Which channels a unit's ratio removes: those scoring lowest by this criterion
    # (Torch-Pruning's): "magnitude" (L2 norm of the channel's coupled weights), "l1",
    # "bn_scale" (|BatchNorm gamma|), "lamp" or "fpgm" (distance to the geometric median).
    importance: Literal["magnitude", "l1", "bn_scale", "lamp", "fpgm"] = "magnitude"

    @field_validator("schemes")
    @classmethod
    def _check_schemes(cls, value: list[str]) -> list[str]:
        for name in value:
            _check_scheme(name)
        return value

    @field_validator("round_to")
    @classmethod
    def _check_round_to(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ConfigError("must be an integer >= 1, null or 'auto'")
        return value

    @field_validator("ratio_bounds")
    @classmethod
    def _check_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0.0 <= lo <= hi < 1.0:
            raise ConfigError("must satisfy 0 <= low <= high < 1 (fractions pruned per unit)")
        return value


class SchedulerConfig(_Section):
    # "asha" stops weak trials early (on validation accuracy per fine-tuning epoch).
    kind: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)  # epochs every trial gets before it may be stopped
    reduction_factor: float = Field(2.0, gt=1)


class FinalistsConfig(_Section):
    # How many of the first stage's best policies are fine-tuned in a second stage (0: no
    # second stage; the first stage's trials are then the search's results).
    count: int = Field(4, ge=0)
    # Fine-tuning epochs of each finalist; the rest of the recipe (lr, distillation, BatchNorm
    # calibration) is the `finetune` section's.
    epochs: float = Field(1.0, gt=0)
    # "top": the `count` best by first-stage accuracy; "pareto": `count` spread along the
    # first stage's Pareto front of accuracy against latency_ms.
    select: Literal["top", "pareto"] = "top"


class SearchConfig(_Section):
    # bo | random | same_ratio | rl (experimental: below random search so far), or any
    # PolicySearcher subclass as "package.module:Class".
    # bo (BOCR with its measured defaults) beat random search at the default trial count
    # (benchmarks/README, search efficiency).
    searcher: str = "bo"
    # Extra keyword arguments for the searcher's constructor.
    searcher_options: dict[str, Any] = Field(default_factory=dict)
    # The free policies at the budget (`prunetune baselines`) the first trials run, so a
    # search starts from what a practitioner gets without searching and can only improve:
    # uniform, tp-magnitude, tp-bn-scale, tp-taylor (Torch-Pruning's global pruning); []
    # starts from the searcher's own points. Channel units only; others stay dense in them.
    start_from: list[Literal["uniform", "tp-magnitude", "tp-bn-scale", "tp-taylor"]] = Field(
        default_factory=lambda: ["uniform", "tp-magnitude", "tp-bn-scale"])
    # Earlier searches (names in this MLflow store; one name or a list) this search learns
    # from: their finished first-stage trials become bo's prior observations (mapped into
    # this space, so another budget or depth of the model works), rl transfers the agent one
    # of them kept, and no searcher re-runs a start policy they ran. [] starts from scratch.
    warm_start: list[str] = Field(default_factory=list)
    # Trials of the first stage: with `finetune.epochs: 0` (the default for a model with
    # BatchNorm) each scores a policy by its accuracy after BatchNorm calibration alone, in
    # seconds; a model without BatchNorm is fine-tuned a few steps first (fidelity.py).
    trials: int = Field(100, ge=1)
    # The second stage: the best first-stage policies, fine-tuned.
    finalists: FinalistsConfig = Field(default_factory=FinalistsConfig)
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    # Retries of a trial that raised (node lost, out of memory, ...).
    max_failures: int = Field(1, ge=0)
    # Threads PyTorch uses inside one trial (None: cpus_per_trial rounded up).
    trial_threads: int | None = Field(None, ge=1)
    # Latency measurement repeats per model (median taken).
    latency_repeats: int = Field(20, ge=3)
    # How trials get latency_ms / speedup: "measured" times each whole model; "table"
    # predicts it from a latency table of layer entries (measured once per layer shape, by
    # one shared Ray actor per device, so measurements never overlap) plus a residual.
    latency: Literal["measured", "table"] = "measured"
    # The table's file for latency "table" (grown and saved by the search); None:
    # <workdir>/latency_table.json.
    latency_table: str | None = None

    @field_validator("warm_start", mode="before")
    @classmethod
    def _one_or_more_searches(cls, value: Any) -> Any:
        # `warm_start: resnet20-keep50` reads as a list of one.
        return [value] if isinstance(value, str) else value

    @field_validator("warm_start")
    @classmethod
    def _check_warm_start(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ConfigError("search names must not be empty; give the names of earlier "
                              "searches in this MLflow store (prunetune results NAME shows one)")
        return value


# The latency backends prunetune ships (prunetune.kernels.latency_backends); any other
# backend is named "package.module:attr".
LATENCY_BACKENDS = ("eager", "onnxruntime", "tensorrt")


class LatencyConfig(_Section):
    # What runs a model when it is timed (trials' latency_ms / speedup, the latency table and
    # budget, `prunetune map`, and the format `promote` / `export` write): "eager" (PyTorch as
    # trials run it, block-sparse kernels where they pay), "onnxruntime" (exported to ONNX,
    # ONNX Runtime on the CPU: what a CPU deployment runs), "tensorrt" (NVIDIA GPU), or your
    # own as "package.module:attr" (a LatencyBackendBase subclass).
    backend: str = "eager"
    # Where it is timed, whatever device trials fine-tune on: "auto" (eager: finetune.device;
    # onnxruntime: cpu; tensorrt: cuda), "cpu" or "cuda[:i]".
    device: str = "auto"
    # CPU threads a timed model runs on (eager: torch's intra-op threads; onnxruntime: its
    # session's). One by default: reproducible, least disturbed by other jobs, and timed on
    # the thread's own CPU clock; with more, on the wall clock. Use what deployment will use.
    threads: int = Field(1, ge=1)

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if value not in LATENCY_BACKENDS and not (module and attr):
            raise ConfigError(f"must be one of {list(LATENCY_BACKENDS)} or "
                              "'package.module:attr' (your own LatencyBackendBase subclass)")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ConfigError("must be 'auto', 'cpu' or 'cuda[:i]'")
        return value


class RayConfig(_Section):
    # None starts an embedded local Ray; "auto" or HOST:PORT joins an existing cluster.
    address: str | None = None
    # CPUs of the embedded local Ray (None: all of this machine's).
    num_cpus: int | None = Field(None, ge=1)


class TrackingConfig(_Section):
    # MLflow tracking URI; None: sqlite:///<workdir>/mlflow.db. http:// for a tracking server.
    uri: str | None = None
    experiment: str = "prunetune"
    # Seconds the driver waits, where a stage ends, for a tracking server that stopped
    # answering (trials go on meanwhile, their results kept on disk) before it stops with
    # the command that writes them and resumes.
    wait_s: float = Field(600.0, ge=0)


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
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    # Fine-tuning of each first-stage trial (epochs unset: none for a model with BatchNorm, the
    # policy is scored after BatchNorm calibration alone; 100 steps, at most an epoch, for one
    # without: orchestrator/fidelity.py), and the recipe finalists fine-tune with.
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Ray Tune's storage (experiment state for --resume); None: <workdir>/ray_results.
    storage_path: str | None = None

    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.workdir_path() / 'mlflow.db'}"

    def storage_dir(self) -> Path:
        return Path(self.storage_path).expanduser().resolve() if self.storage_path else (
            self.workdir_path() / "ray_results")


def _format_errors(err: ValidationError, source: str) -> str:
    """One line: every field that broke a rule, with the rule and the value it had."""
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"{field}: unknown field (check the spelling; examples/ shows the "
                            "allowed fields)")
        else:
            problems.append(f"{field}: {e['msg']}, got {e.get('input')!r}")
    return f"invalid config {source}: " + "; ".join(problems)


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


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one clause: what is wrong and at which line and column."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


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
            raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(err)}; fix "
                              "the file (a YAML linter shows the spot)") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {p} cannot be read ({err}); check its permissions "
                              "and that it is a UTF-8 text file") from None
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


def check_devices(cfg: PrunetuneConfig,
                  fields: tuple[str, ...] = ("pretrain.device", "finetune.device")) -> None:
    """Every device the config names exists on this machine (`cuda` without a GPU is refused
    here, in seconds, not after the pretraining), and the latency backend runs on its device.
    Imports torch."""
    from prunetune.trainers.train import resolve_device

    for field in fields:
        section, key = field.split(".")
        try:
            resolve_device(getattr(getattr(cfg, section), key))
        except ConfigError as err:
            raise ConfigError(f"{field}: {err}") from None
    latency_device(cfg)


def latency_device(cfg: PrunetuneConfig, trial_device: Any = None) -> str:
    """The device the config's latency backend times on (`latency.device`, "auto" resolved
    by the backend given `trial_device`, default `finetune.device`), checked: a backend that
    cannot run there, or whose package is missing, is a ConfigError naming `latency.backend`
    and the fix. Imports torch."""
    from prunetune.errors import KernelError, KernelUnavailableError
    from prunetune.kernels.latency_backends import timing_device
    from prunetune.trainers.train import resolve_device

    try:
        return str(timing_device(cfg.latency.backend, cfg.latency.device,
                                 trial_device if trial_device is not None
                                 else resolve_device(cfg.finetune.device)))
    except (KernelError, KernelUnavailableError) as err:
        raise ConfigError(f"latency.backend: {err}") from None

