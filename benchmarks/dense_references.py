"""Dense reference models trained to their plateau, for the benchmarks that prune them.

    python benchmarks/dense_references.py [CONFIG ...] [--threads N]

Each config (default: examples/e2e-resnet56.yaml, examples/e2e-mobilenetv2.yaml,
examples/e2e-vit.yaml) is pretrained
through the product's own path (`pretrain_dense`, content-addressed cache: a model trained once
is loaded on the next run, so an interrupted run loses at most the model it was training). For
each, the result records the training curve (val accuracy and loss, running train accuracy per
epoch), the final accuracy on the clean (un-augmented) training images and on the full test
split, and `still_improving`'s verdict on the curve: the plateau check `prunetune pretrain`
warns with. Results are written after each model to benchmarks/results/dense_references.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import (  # noqa: E402
    keep_dense_model,
    machine_info,
    restore_dense_models,
    write_result,
)

from prunetune.orchestrator.config import load_config  # noqa: E402
from prunetune.trainers import evaluate, load_data, pretrain_dense  # noqa: E402
from prunetune.trainers.pretrain import still_improving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "dense_references.json"
# ResNet-56 and MobileNetV2 (about 3 MB each) are committed; the ViT (about 22 MB, 30 minutes to
# train again) is not.
MAX_COMMITTED_BYTES = 8 << 20
CONFIGS = ("examples/e2e-resnet56.yaml", "examples/e2e-mobilenetv2.yaml",
           "examples/e2e-vit.yaml")


def reference(config: str, threads: int | None = None) -> dict[str, Any]:
    """Pretrain (or load) one config's dense model and describe how far it trained;
    `threads` overrides the config's (not part of the cache key)."""
    cfg = load_config(ROOT / config, {"pretrain.threads": threads} if threads else {})
    data = load_data(cfg.data)
    t0 = time.perf_counter()
    result = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir, data=data)
    # the training images without augmentation: how well the model fits what it was taught
    clean = DataLoader(data.train.with_augment(False), batch_size=cfg.data.eval_batch_size)
    train_acc = evaluate(result.model, clean).accuracy
    curve = dict(result.checkpoint.get("curve") or {})
    verdict = still_improving(list(curve.get("epoch", [])), list(curve.get("val_accuracy", [])),
                              float(curve.get("val_samples", 0)))
    return {
        "config": config, "model": cfg.model.name, "dataset": cfg.data.name,
        "train_samples": len(data.train), "val_samples": len(data.val),
        "test_samples": len(data.test), "pretrain": cfg.pretrain.model_dump(),
        "train_accuracy_clean": train_acc,
        "val_accuracy": result.metrics.get("val_accuracy"),
        "test_accuracy": result.metrics.get("test_accuracy"),
        "train_wall_s": result.metrics.get("wall_s"),
        "trained_this_run": not result.cached, "load_or_train_s": time.perf_counter() - t0,
        "still_improving": None if verdict is None else {"gain": verdict[0], "span": verdict[1]},
        "plateau": verdict is None and len(curve.get("epoch", [])) >= 3,
        "curve": curve, "checkpoint": str(result.checkpoint_path),
        "committed_copy": _committed_copy(result.checkpoint_path),
    }


def _committed_copy(checkpoint: Path) -> str | None:
    """The checkpoint's copy in the committed store (`keep_dense_model`), for a benchmark
    machine that starts with an empty cache; None for one too large to commit."""
    if checkpoint.stat().st_size > MAX_COMMITTED_BYTES:
        return None
    return str(keep_dense_model(checkpoint).relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the config's); one thread holds up "
                             "best on a machine busy with other work")
    args = parser.parse_args()
    restore_dense_models()
    for config in args.configs:
        print(f"[dense_references] {config}", flush=True)
        entry = reference(config, args.threads)
        # read just before writing: another run of this script (another model) may have
        # written its entry meanwhile
        done: dict[str, Any] = json.loads(OUT.read_text()).get("models", {}) \
            if OUT.exists() else {}
        done[entry["model"]] = entry
        write_result(OUT, {"models": done, "machine": machine_info()})
        print(f"[dense_references] {entry['model']}: train {entry['train_accuracy_clean']}, val "
              f"{entry['val_accuracy']}, test {entry['test_accuracy']}, plateau "
              f"{entry['plateau']}", flush=True)


if __name__ == "__main__":
    main()
