"""Pretrain the dense ResNet-20 on full Fashion-MNIST and time a second (cached) run.

    python benchmarks/pretrain.py [examples/fashion-resnet20.yaml] [--force]

Writes benchmarks/results/pretrain.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, write_result  # noqa: E402

from prunetune.orchestrator.config import load_config  # noqa: E402
from prunetune.trainers import load_data, pretrain_dense  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="examples/fashion-resnet20.yaml")
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    args = parser.parse_args()
    cfg = load_config(args.config)
    data = load_data(cfg.data)
    first = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                           data=data, force=args.force)
    t0 = time.perf_counter()
    second = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir)
    cache_load_s = time.perf_counter() - t0
    if not second.cached:
        raise SystemExit("second pretraining did not hit the cache")
    result = {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "train_samples": len(data.train),
        "val_samples": len(data.val),
        "test_samples": len(data.test),
        "test_accuracy": first.metrics["test_accuracy"],
        "val_accuracy": first.metrics.get("val_accuracy"),
        "epochs": first.metrics["epochs"],
        "wall_s": first.metrics["wall_s"],
        "trained_this_run": not first.cached,
        "cache_load_s": cache_load_s,
        "config": args.config,
        "machine": machine_info(),
    }
    write_result(RESULTS / "pretrain.json", result)


if __name__ == "__main__":
    main()
