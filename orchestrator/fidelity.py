"""How the first stage scores a policy when the config leaves `finetune.epochs` unset.

A model with BatchNorm is scored after re-estimating its BatchNorm statistics alone (epochs 0,
seconds per policy). A model without BatchNorm (ViT, Swin, ConvNeXt: LayerNorm) has no
statistics to re-estimate, so that score is its accuracy with normalisation fitted to the dense
model, which ranked pruned ViT policies worst of the candidates measured; a short fine-tune
ranked them best (benchmarks/README.md, "A first-stage proxy without BatchNorm"). Such a model's
first-stage trials fine-tune `NO_BATCHNORM_PROXY_STEPS` steps instead, at most one epoch, and
its finalists (`search.finalists.epochs` unset) `NO_BATCHNORM_FINALIST_FACTOR` times as long.
"""

from __future__ import annotations

from torch import nn

from prunetune.search_spaces import has_batchnorm

from .config import PrunetuneConfig

# Steps of the no-BatchNorm first-stage fine-tune (benchmarks/proxy_candidates.py, `ft100`).
NO_BATCHNORM_PROXY_STEPS = 100
# The finalists' fine-tune against the first stage's: 3x is the fidelity proxy_candidates.py
# ranks against (3 epochs). At the finalists' default of one epoch they would repeat the first
# stage's fine-tune exactly (the same steps under the same seed) and tell nothing new.
NO_BATCHNORM_FINALIST_FACTOR = 3


def first_stage_fidelity(cfg: PrunetuneConfig, model: nn.Module, steps_per_epoch: int
                         ) -> tuple[PrunetuneConfig, str | None]:
    """(`cfg` with the first stage's `finetune.epochs` chosen for `model`, and the
    finalists' `search.finalists.epochs` unless set, the line saying so); `cfg` itself and
    None when the config sets `finetune.epochs` or the model has BatchNorm.
    `steps_per_epoch`: batches in one epoch of the training split."""
    if "epochs" in cfg.finetune.model_fields_set or has_batchnorm(model):
        return cfg, None
    steps = min(NO_BATCHNORM_PROXY_STEPS, max(1, steps_per_epoch))
    epochs = steps / max(1, steps_per_epoch)
    search, finalists = cfg.search, cfg.search.finalists
    then = ""
    if finalists.count and "epochs" not in finalists.model_fields_set:
        longer = max(finalists.epochs, NO_BATCHNORM_FINALIST_FACTOR * epochs)
        search = search.model_copy(update={"finalists": finalists.model_copy(
            update={"epochs": longer})})
        then = f", and the finalists {longer:.3g} epochs (search.finalists.epochs)"
    chosen = cfg.model_copy(update={"search": search, "finetune": cfg.finetune.model_copy(
        update={"epochs": epochs})})
    line = (f"the model has no BatchNorm to re-estimate: first-stage trials fine-tune "
            f"{steps} steps (finetune.epochs {epochs:.3g}) before they are scored, the proxy "
            f"that ranked such policies best (benchmarks/README.md){then}; set "
            f"finetune.epochs to choose (0: score without fine-tuning)")
    return chosen, line
