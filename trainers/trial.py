"""The trial function Ray Tune runs: decode, prune, fine-tune, evaluate, time, report.

Trials only return numbers through `ray.tune.report`; they never open MLflow (the driver is the
one writer). Dense weights arrive through the Ray object store via `tune.with_parameters`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunetune.errors import ConfigError

from .checkpoint import model_from_checkpoint
from .data import DataBundle, DataConfig, load_data
from .prune import prune_and_evaluate
from .train import TrainConfig, resolve_device

__all__ = ["FINAL_KEY", "TrialSetup", "dense_reference_ms", "evaluate_policy", "run_trial"]

# Set to True on a trial's last report only; searchers take only such results as final, so a
# trial stopped early by a scheduler is never mistaken for a finished one.
FINAL_KEY = "final"


@dataclass
class TrialSetup:
    """Everything a trial needs besides its config; shipped once through the object store."""

    dense_checkpoint: dict[str, Any]  # a prunetune dense checkpoint dict (weights included)
    data: DataConfig
    finetune: TrainConfig
    dense_val_accuracy: float
    # The search's seed: a trial fine-tunes with the seed its searcher gave it (derived from
    # this one), or with this one when the searcher gives none (a plain Ray Tune searcher).
    seed: int = 0
    threads: int = 1
    latency_repeats: int = 20
    latency_batch: int = 1
    # What runs a model when it is timed (a `prunetune.kernels.latency_backends` name or
    # "package.module:attr"), and where (None: the backend's default given the fine-tuning
    # device, e.g. eager times where it fine-tunes, onnxruntime on the CPU).
    latency_backend: str = "eager"
    latency_device: str | None = None
    latency_threads: int = 1  # CPU threads a timed model runs on
    # A latency table file: predict latency from it (via the shared per-device Ray actor when
    # Ray runs) instead of timing whole models.
    latency_table: str | None = None
    # (device name, ms): the dense model's latency measured once for the search, so that every
    # trial on that device reports latency_ms = reference / its own speedup, and the latency
    # and speedup columns of all trials agree (see `dense_reference_ms`).
    reference_latency: tuple[str, float] | None = None
    # Names this setup's dense model and data in a trial process's cache (`_context`): a
    # reused trial actor builds them once per search, not once per trial.
    context_key: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class _Context:
    """What every trial of a search starts from: the dense model and the loaded dataset."""

    key: str
    dense: nn.Module
    data: DataBundle


_CONTEXT: _Context | None = None  # this process's (a trial actor serves one search at a time)


def _context(setup: TrialSetup) -> _Context:
    """The dense model and data of `setup`, built on this process's first trial of it and
    kept for the next ones (reused Ray actors), so a trial costs its own work only."""
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT.key != setup.context_key:
        _CONTEXT = None  # free the previous search's model and data first
        _CONTEXT = _Context(setup.context_key, model_from_checkpoint(setup.dense_checkpoint),
                            load_data(setup.data))
    return _CONTEXT


def evaluate_policy(policy_json: str, setup: TrialSetup, *, report: Any = None,
                    seed: int = 0) -> dict[str, Any]:
    """Apply a policy to the dense model, fine-tune (seeded by `seed`), evaluate and time it.

    `report(metrics)` (e.g. `ray.tune.report`) receives intermediate metrics after each
    fine-tuning epoch but the last, then the final metrics with `FINAL_KEY` set. Returns the
    final metrics.
    """
    from prunetune.kernels import measured_models_ms, speedup
    from prunetune.search_spaces import Policy

    torch.set_num_threads(setup.threads)
    t0 = time.perf_counter()
    policy = Policy.from_json(policy_json)
    context = _context(setup)
    data, dense = context.data, context.dense
    epochs = setup.finetune.epochs
    last_epoch = int(-(-epochs // 1)) if epochs else 0

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        if report is not None and epoch < last_epoch:
            report({"accuracy": metrics["val_accuracy"], "val_loss": metrics["val_loss"],
                    "train_loss": metrics["train_loss"], "epoch": epoch, FINAL_KEY: False})

    result = prune_and_evaluate(dense, policy, data, setup.finetune, seed=seed,
                                on_epoch_end=on_epoch_end)
    finetune_s = time.perf_counter() - t0
    val, pruned = result.scores["val"], result.model
    device = latency_device(setup)
    # Timed on the trial's own node, dense and pruned alike (in turn, in bursts), so the
    # speedup compares like with like wherever the trial landed, whatever the machine's drift.
    batch = _latency_input(data, setup.latency_batch)
    clock = latency_clock(setup.latency_backend, device, setup.latency_threads)
    measured: dict[str, float] = {}
    if setup.latency_table is not None:
        dense_ms, pruned_ms = _table_latency_ms(setup, dense, pruned, batch, device)
    else:
        dense_ms, pruned_ms = measured_models_ms([dense, pruned], batch, device=device,
                                                 repeats=setup.latency_repeats,
                                                 backend=setup.latency_backend,
                                                 threads=setup.latency_threads)
        ref = setup.reference_latency
        if ref is not None and ref[0] == clock:
            measured = {"measured_latency_ms": pruned_ms, "measured_dense_latency_ms": dense_ms}
            # The speedup is this trial's own (dense and pruned timed in turn); the latency
            # follows from it and the search's one dense reference.
            dense_ms, pruned_ms = ref[1], ref[1] * pruned_ms / dense_ms
    final = {
        "accuracy": val.accuracy,
        "val_loss": val.loss,
        "accuracy_drop": setup.dense_val_accuracy - val.accuracy,
        **result.cost_metrics(),
        "latency_ms": pruned_ms,
        "dense_latency_ms": dense_ms,
        "speedup": speedup(dense_ms, pruned_ms),
        **measured,
        "latency_backend": setup.latency_backend,
        "latency_clock": clock,
        "epoch": last_epoch,
        "finetune_s": finetune_s,
        "seed": seed,
        "policy": policy.to_json(),
        FINAL_KEY: True,
    }
    if report is not None:
        report(final)
    return final


def _latency_input(data: DataBundle, batch: int) -> torch.Tensor:
    """The task's example input of `batch` samples, the input a trial times the models on.
    The latency code times a model of one input tensor: a task of several is refused here in
    one line, not deep inside the timing."""
    example = data.example_input(batch)
    if not isinstance(example, torch.Tensor):
        raise ConfigError(f"data.task {data.config.task!r} gives its model "
                          f"{len(example)} inputs; latency is timed on models of one input "
                          "tensor so far: use a task of one input to search")
    return example


def latency_device(setup: TrialSetup) -> str:
    """The device a trial times on: the setup's latency device, else the backend's choice
    given the trial's fine-tuning device (resolved where the trial runs)."""
    from prunetune.kernels.latency_backends import timing_device

    return str(timing_device(setup.latency_backend, setup.latency_device or "auto",
                             resolve_device(setup.finetune.device)))


def latency_clock(backend: str, device: str, threads: int = 1) -> str:
    """The name of the clock `backend` times with on `device` with `threads` CPU threads:
    latencies of two different clocks are never compared."""
    from prunetune.kernels import clock_name, default_measurer

    return clock_name(backend, default_measurer(device, threads))


def dense_reference_ms(dense: torch.nn.Module, batch: torch.Tensor, device: str,
                       repeats: int, backend: str = "eager", threads: int = 1,
                       ) -> tuple[str, float]:
    """(clock name, ms): the dense model timed once for a whole search by `backend`, in 6
    bursts of 3x the trials' repeats (one reference, so it gets more time than a trial's own
    timing)."""
    from prunetune.kernels import measured_models_ms

    (ms,) = measured_models_ms([dense], batch, device=device, repeats=6 * max(1, repeats // 2),
                               bursts=6, backend=backend, threads=threads)
    return latency_clock(backend, device, threads), ms


def _table_latency_ms(setup: TrialSetup, dense: torch.nn.Module, pruned: torch.nn.Module,
                      batch: torch.Tensor, device: str) -> tuple[float, float]:
    """(dense, pruned) latency predicted from the search's latency table. Under Ray, one named
    actor per device owns the table and measures missing entries one at a time; the table is
    saved (merged into its file) after every trial."""
    import ray

    from prunetune.kernels.service import LatencyService

    from .latency_actor import latency_service

    if ray.is_initialized():
        svc = latency_service(setup.latency_table, device=device,
                              repeats=setup.latency_repeats, backend=setup.latency_backend,
                              threads=setup.latency_threads)
        dense_ms = ray.get(svc.predict_ms.remote(dense, dense, batch))
        pruned_ms = ray.get(svc.predict_ms.remote(pruned, dense, batch))
        ray.get(svc.save.remote())
        return dense_ms, pruned_ms
    local = LatencyService(setup.latency_table, device=device, repeats=setup.latency_repeats,
                           backend=setup.latency_backend, threads=setup.latency_threads)
    out = local.predict_ms(dense, dense, batch), local.predict_ms(pruned, dense, batch)
    local.save()
    return out


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable: `config` holds `policy` (JSON) and `seed` from the
    searcher (a searcher that gives no seed leaves the search's own)."""
    import ray
    from ray import tune

    # Nodes of a cluster on one host share IP and hostname; the node id tells them apart.
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, "node_id": node_id})

    evaluate_policy(config["policy"], setup, report=report,
                    seed=int(config.get("seed", setup.seed)))
