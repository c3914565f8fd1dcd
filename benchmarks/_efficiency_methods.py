"""The search-efficiency benchmark's problems and methods (`search_efficiency.py`): the
objectives (dense model, FLOPs budget, results file, trials per run) and every benchmarked
search method, by the name its runs are kept under in the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune.orchestrator.config import PrunetuneConfig
from prunetune.search_spaces import Budget
from prunetune.trainers import DataConfig, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "search_efficiency.json"

# The dense model: a few epochs on a 12k-image training subset keep pretraining to well under
# an hour on 2 shared cores; cached by content hash afterwards.
PRETRAIN_MODEL = ModelConfig(name="resnet56")
PRETRAIN_DATA = DataConfig(name="fashion-mnist", train_subset=12000, val_subset=2000,
                           test_subset=2000)
# Warm-up matters: without it ResNet-56 at lr 0.1 was still at 20% after an epoch.
PRETRAIN_TRAIN = TrainConfig(epochs=3, lr=0.05, warmup_epochs=0.3)
BUDGET = Budget(kind="flops", keep=0.5)
# The trial count a config gets (`search.trials`), where the defaults are compared too.
DEFAULT_TRIALS = PrunetuneConfig().search.trials


@dataclass(frozen=True)
class ObjectiveSpec:
    """A pruning problem the searchers are compared on: the dense model, the FLOPs budget,
    the results file and the trials per run."""

    model: ModelConfig
    budget: Budget
    out: Path
    trials: int
    data: DataConfig = field(default_factory=lambda: PRETRAIN_DATA)
    pretrain: TrainConfig = field(default_factory=lambda: PRETRAIN_TRAIN)
    val_subset: int = 500  # validation images the reward is measured on (--val-subset)
    work_prefix: str = ""  # keeps its runs in progress apart from another objective's


def converged(config: str, keep: float, out: str) -> ObjectiveSpec:
    """An objective whose dense model is the end-to-end benchmark's (`config`, trained to its
    plateau by `dense_references.py`): its model, data and pretraining recipe, at a FLOPs
    budget of `keep`, 150 trials a run. The reward is measured on 3000 validation images
    (a standard error near 0.6 points at 85% accuracy; 500 would be 1.6)."""
    from prunetune.orchestrator.config import load_config

    cfg = load_config(ROOT / config)
    return ObjectiveSpec(cfg.model, Budget(kind="flops", keep=keep), RESULTS / out, 150,
                         cfg.data, cfg.pretrain, 3000, f"{Path(config).stem}-")


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "resnet56": ObjectiveSpec(PRETRAIN_MODEL, BUDGET, OUT, 200),
    # A second model, so the results are not ResNet-56's alone: depthwise-separable blocks
    # (coupled channels) at a tighter budget.
    "mobilenetv2": ObjectiveSpec(ModelConfig(name="mobilenetv2"), Budget(kind="flops", keep=0.3),
                                 RESULTS / "search_efficiency_mobilenetv2.json", 150),
    # The same two problems from dense models trained to their plateau (issue 27): an
    # under-trained dense model gives a flat objective that separates no searcher.
    "resnet56-converged": converged("examples/e2e-resnet56.yaml", 0.5,
                                    "search_efficiency_resnet56_converged.json"),
    "mobilenetv2-converged": converged("examples/e2e-mobilenetv2.yaml", 0.3,
                                       "search_efficiency_mobilenetv2_converged.json"),
}
# The clustered space's groups. The silhouette's choice ("auto") is 2 here (the 3 residual
# units vs the 27 block-inner ones), a subspace too coarse to hold good policies: a first run
# with it is kept in search_efficiency_auto_groups.json.
CLUSTER_GROUPS = 6
# BOCR's schedule here: roll back on a stall of 10 BO trials (at least 10 per stage), and at
# the latest at 30 / 60 finished trials; 6 groups -> bridge grouping (13) -> one dimension
# per unit (30). The box keeps a margin of 0.5 around the best 5 points, and each roll-back
# starts with 5 Sobol points in the new box, so the GP sees the units of a group move
# apart. History (each kept in the results as its own method, 5 seeds unless said): margin
# 0.1 with roll-backs at 60 / 120 ended at 0.644 (2 seeds), "bo-rollback-narrow" (margin
# 0.25, 40 / 80, stall 15) at 0.665, "bo-rollback-m0.5" (this schedule without the Sobol
# points) at 0.688, "bo-rollback-wide" (that, with the whole box in the full stage) at 0.687
# (4 seeds); plain BO at 0.704 on the same 5 seeds. With the Sobol points: 0.696 (seeds 0-4),
# 0.706 over seeds 0-9 against plain BO's 0.698.
ROLLBACK_M05 = {"stall": 10, "at": [30, 60], "stages": ["bridge", "full"], "top_n": 5,
                "margin": 0.5, "min_trials": 10, "design": 0}
ROLLBACK = {**ROLLBACK_M05, "design": 5}
ROLLBACK_WIDE = {**ROLLBACK_M05, "margin": [0.5, 1.0]}
ROLLBACK_NARROW = {"stall": 15, "at": [40, 80], "stages": ["bridge", "full"], "top_n": 5,
                   "margin": 0.25, "min_trials": 15, "design": 0}


@dataclass(frozen=True)
class Method:
    """A benchmarked search method: searcher name, the space's grouping and options; or, with
    grouping "defaults", exactly what a config naming the searcher gets (`space_from_analysis`
    and the searcher's constructor defaults), with `overrides` (dotted config fields) on top."""

    searcher: str
    # "full": one dimension per unit; "clustered": CLUSTER_GROUPS groups; "defaults": the
    # product's defaults for the searcher
    grouping: str
    options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    # with "defaults": the searcher runs the config's `search.start_from` baselines first, as
    # in `prunetune search` (without it, the searcher alone from its own first points)
    start: bool = False


# The RL searcher's transfer sources: an RL search of SOURCE_TRIALS episodes (seed
# SOURCE_SEED) on another model or budget, run once and kept in --work. "resnet20": the same
# recipe on ResNet-20 (another model); "resnet56-keep0.7": this model at a 70% FLOPs budget.
SOURCES: dict[str, tuple[str, Budget]] = {
    "resnet20": ("resnet20", BUDGET),
    "resnet56-keep0.7": ("resnet56", Budget(kind="flops", keep=0.7)),
}
SOURCE_TRIALS, SOURCE_SEED = 200, 100
# The RL searcher's settings, written out so a change of its defaults makes a new method
# definition (and new runs) rather than silently mixing runs of two agents.
RL_OPTIONS = {"discount": 0.0, "min_delta": 0.05, "warmup": 20, "init_delta": 0.5,
              "delta_decay": 0.95, "transfer_delta": 0.2, "gnn": False, "action": "absolute",
              "lr_actor": 1e-3, "lr_critic": 2e-3}
# The same agent with budget-relative actions (0.5 = the step's fair share of the pruning
# still owed); its transfer sources are searched with it too.
RL_RELATIVE = {**RL_OPTIONS, "action": "relative"}

METHODS: dict[str, Method] = {
    "random": Method("random", "full"),
    # labelled "uniform" in the committed results: every group at one shared ratio
    "uniform": Method("same_ratio", "full"),
    "bo-full": Method("bo", "full", {"rollback": False}),
    "bo-clustered": Method("bo", "clustered", {"rollback": False}),
    "bo-rollback": Method("bo", "clustered", {"rollback": ROLLBACK}),
    "bo-rollback-m0.5": Method("bo", "clustered", {"rollback": ROLLBACK_M05}),
    "bo-rollback-wide": Method("bo", "clustered", {"rollback": ROLLBACK_WIDE}),
    "bo-rollback-narrow": Method("bo", "clustered", {"rollback": ROLLBACK_NARROW}),
    "rl": Method("rl", "full", RL_OPTIONS),
    # The graph-aware state (AutoSculpt-style embeddings of the unit dependency graph).
    "rl-gnn": Method("rl", "full", {**RL_OPTIONS, "gnn": True}),
    # "source:NAME" is replaced by the path of that source search's saved state
    "rl-transfer": Method("rl", "full", {**RL_OPTIONS, "warm_start": "source:resnet20"}),
    "rl-transfer-budget": Method("rl", "full", {**RL_OPTIONS,
                                                "warm_start": "source:resnet56-keep0.7"}),
    # Transfer that explores as much as a fresh agent (sigma from 0.5, not 0.2): the
    # transferred actor is only the starting mean.
    "rl-transfer-explore": Method("rl", "full", {**RL_OPTIONS, "transfer_delta": 0.5,
                                                 "warm_start": "source:resnet20"}),
    "rl-relative": Method("rl", "full", RL_RELATIVE),
    "rl-transfer-relative": Method("rl", "full", {**RL_RELATIVE,
                                                  "warm_start": "source:resnet20"}),
    "rl-transfer-budget-relative": Method("rl", "full", {**RL_RELATIVE,
                                                         "warm_start": "source:resnet56-keep0.7"}),
}
# What a config gets, and each searcher's defaults with `space.budget.fill` set either way
# (the defaults keep whichever measured better, per searcher).
for _name in ("random", "bo", "rl"):
    METHODS[f"{_name}-default"] = Method(_name, "defaults")
    METHODS[f"{_name}-default-fill"] = Method(_name, "defaults",
                                              overrides={"space.budget.fill": True})
    METHODS[f"{_name}-default-nofill"] = Method(_name, "defaults",
                                                overrides={"space.budget.fill": False})
    # exactly what `prunetune search` runs: the defaults, the free baselines first
    METHODS[f"{_name}-default-start"] = Method(_name, "defaults", start=True)
# rl's defaults (baselines first) with random search's own points as its warm-up episodes
# (issue 27: a warm-up that is not random actions clipped by the action wall)
METHODS["rl-default-start-spacewarmup"] = Method(
    "rl", "defaults", overrides={"search.searcher_options": {"warmup_from": "space"}},
    start=True)
# and with AutoSculpt's graph-network state (issue 27: an option only with a measured gain)
METHODS["rl-default-start-gnn"] = Method(
    "rl", "defaults", overrides={"search.searcher_options": {"gnn": True}}, start=True)
DEFAULT_METHODS = ("random", "uniform", "bo-full", "bo-clustered", "bo-rollback")
# The methods drawn solid in the plot (the others: earlier schedules and variants, kept).
MAIN_METHODS = {*DEFAULT_METHODS, "rl", "rl-transfer", "rl-transfer-budget", "random-default",
                "bo-default", "rl-default"}
RL_METHODS = ("rl", "rl-transfer", "rl-transfer-budget", "rl-transfer-explore")
