"""The trial function Ray Tune runs: decode, prune, fine-tune, evaluate, time, report.

Trials only return numbers through `ray.tune.report`; they never open MLflow (the driver is the
one writer). Dense weights arrive through the Ray object store via `tune.with_parameters`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint import model_from_checkpoint
from .data import DataConfig, load_data
from .train import TrainConfig, evaluate, fit, resolve_device, seed_everything

__all__ = ["FINAL_KEY", "TrialSetup", "run_trial", "evaluate_policy"]

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
    threads: int = 1
    latency_repeats: int = 20
    latency_batch: int = 1
    # A latency table file: predict latency from it (via the shared per-device Ray actor when
    # Ray runs) instead of timing whole models.
    latency_table: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate_policy(policy_json: str, setup: TrialSetup, *, report: Any = None,
                    seed: int = 0) -> dict[str, Any]:
    """Apply a policy to the dense model, fine-tune, evaluate and time it.

    `report(metrics)` (e.g. `ray.tune.report`) receives intermediate metrics after each
    fine-tuning epoch but the last, then the final metrics with `FINAL_KEY` set. Returns the
    final metrics.
    """
    from prunetune.kernels import measured_models_ms, speedup
    from prunetune.search_spaces import Policy, apply_policy, count_cost, enforce_masks

    torch.set_num_threads(setup.threads)
    seed_everything(seed)
    t0 = time.perf_counter()
    policy = Policy.from_json(policy_json)
    data = load_data(setup.data)
    shape = (data.in_channels, *data.image_size)
    example = torch.zeros(1, *shape)
    dense = model_from_checkpoint(setup.dense_checkpoint)
    pruned = apply_policy(dense, policy, example)
    device = resolve_device(setup.finetune.device)
    dense_cost, cost = count_cost(dense, example), count_cost(pruned, example)
    epochs = setup.finetune.epochs
    last_epoch = int(-(-epochs // 1)) if epochs else 0

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        if report is not None and epoch < last_epoch:
            report({"accuracy": metrics["val_accuracy"], "val_loss": metrics["val_loss"],
                    "train_loss": metrics["train_loss"], "epoch": epoch, FINAL_KEY: False})

    teacher = dense if setup.finetune.kd_alpha > 0 else None
    fit(pruned, data.loader("train", seed=seed), setup.finetune, val_loader=data.loader("val"),
        teacher=teacher, after_step=enforce_masks, on_epoch_end=on_epoch_end, progress=False,
        desc="finetune")
    finetune_s = time.perf_counter() - t0
    val = evaluate(pruned.to(device), data.loader("val"), device)
    pruned.eval()
    # Timed on the trial's own device, dense and pruned alike (in turn, in bursts), so the
    # speedup compares like with like wherever the trial landed, whatever the machine's drift.
    batch = torch.zeros(setup.latency_batch, *shape)
    if setup.latency_table is not None:
        dense_ms, pruned_ms = _table_latency_ms(setup, dense, pruned, batch, str(device))
    else:
        dense_ms, pruned_ms = measured_models_ms([dense, pruned], batch, device=str(device),
                                                 repeats=setup.latency_repeats)
    final = {
        "accuracy": val.accuracy,
        "val_loss": val.loss,
        "accuracy_drop": setup.dense_val_accuracy - val.accuracy,
        "flops": cost.effective_flops,
        "params": cost.effective_params,
        "flops_ratio": cost.effective_flops / dense_cost.flops,
        "params_ratio": cost.effective_params / dense_cost.params,
        "sparsity": cost.sparsity,
        "latency_ms": pruned_ms,
        "dense_latency_ms": dense_ms,
        "speedup": speedup(dense_ms, pruned_ms),
        "epoch": last_epoch,
        "finetune_s": finetune_s,
        "policy": policy.to_json(),
        FINAL_KEY: True,
    }
    if report is not None:
        report(final)
    return final


def _table_latency_ms(setup: TrialSetup, dense: torch.nn.Module, pruned: torch.nn.Module,
                      batch: torch.Tensor, device: str) -> tuple[float, float]:
    """(dense, pruned) latency predicted from the search's latency table. Under Ray, one named
    actor per device owns the table and measures missing entries one at a time; the table is
    saved (merged into its file) after every trial."""
    import ray

    from prunetune.kernels.ray_service import LatencyService, latency_service

    if ray.is_initialized():
        svc = latency_service(setup.latency_table, device=device,
                              repeats=setup.latency_repeats)
        dense_ms = ray.get(svc.predict_ms.remote(dense, dense, batch))
        pruned_ms = ray.get(svc.predict_ms.remote(pruned, dense, batch))
        ray.get(svc.save.remote())
        return dense_ms, pruned_ms
    local = LatencyService(setup.latency_table, device=device, repeats=setup.latency_repeats)
    out = local.predict_ms(dense, dense, batch), local.predict_ms(pruned, dense, batch)
    local.save()
    return out


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable: `config` holds `policy` (JSON) from the searcher."""
    import ray
    from ray import tune

    # Nodes of a cluster on one host share IP and hostname; the node id tells them apart.
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, "node_id": node_id})

    evaluate_policy(config["policy"], setup, report=report, seed=int(config.get("seed", 0)))
