"""The `prunetune` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """An error shown to the user as one message and exit code 2, without a traceback."""


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from prunetune.trainers import pretrain_dense

    from .config import load_config

    cfg = load_config(args.config, {"pretrain.epochs": args.epochs, "pretrain.device": args.device,
                                    "cache_dir": args.cache_dir})
    result = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                            force=args.force, progress=not args.quiet)
    summary = {"model": cfg.model.name, "dataset": cfg.data.name, "cached": result.cached,
               "checkpoint": str(result.checkpoint_path), **result.metrics}
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from prunetune import __version__

    parser = argparse.ArgumentParser(
        prog="prunetune",
        description="Find per-layer pruning policies with Ray Tune, track them in MLflow.")
    parser.add_argument("--version", action="version", version=f"prunetune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("pretrain", help="train (or load from the cache) the dense model")
    p.add_argument("config", help="YAML config (see examples/)")
    p.add_argument("--epochs", type=float, help="override pretrain.epochs")
    p.add_argument("--device", help="override pretrain.device (auto, cpu, cuda, cuda:1)")
    p.add_argument("--cache-dir", help="override cache_dir")
    p.add_argument("--force", action="store_true", help="train even when the cache has it")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_pretrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from prunetune.trainers import CheckpointError, DatasetNotFoundError, ModelNotFoundError

    from .config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CLIError, ConfigError, DatasetNotFoundError, ModelNotFoundError,
            CheckpointError) as err:
        print(f"prunetune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunetune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
