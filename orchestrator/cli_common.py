"""Command-line pieces shared by the `prunetune` commands (search, submit, results, promote)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from prunetune.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USER_ERROR, PrunetuneError

from .interrupts import handle_sigterm_as_interrupt, terminated

__all__ = ["add_search_override_args", "search_overrides", "add_tracking_args", "run_command",
           "tracking_from"]


def quiet_libraries() -> None:
    """Silence what libraries print on every command that is not for the user: torch's
    deprecation of `torch.jit.script` (which linear_operator, under BoTorch, still calls), its
    note that a CPU-only machine has no CUDA runtime, and MLflow's download progress bars."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated",
                            category=FutureWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # A progress bar per artifact read back (a search's summary reads every trial's policy).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command (`args.func`) under the exit-code scheme of `prunetune.errors`: a
    `PrunetuneError` is one line on stderr and `EXIT_USER_ERROR`, never a traceback; SIGTERM
    ends it as Ctrl-C does (a search saves its state), with `EXIT_TERMINATED`."""
    quiet_libraries()
    handle_sigterm_as_interrupt()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PrunetuneError as err:
        # One line, whatever the message holds (a list of places looked in, a library's
        # multi-line report): scripts and people read the first line of stderr.
        message = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"prunetune {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if terminated():
            print(f"prunetune {args.command}: terminated (SIGTERM)", file=sys.stderr)
            return EXIT_TERMINATED
        print(f"prunetune {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def add_search_override_args(p: argparse.ArgumentParser) -> None:
    """The config overrides every command that starts a search takes."""
    p.add_argument("--name", help="override the search name")
    p.add_argument("--trials", type=int, help="override search.trials")
    p.add_argument("--max-concurrent", type=int, help="override search.max_concurrent")
    p.add_argument("--searcher", help="override search.searcher (random, same_ratio, bo, rl, ...)")
    p.add_argument("--tracking-uri", help="override tracking.uri (http:// for a server)")
    p.add_argument("--experiment", help="override tracking.experiment")


def search_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the parsed flags (unset flags are None and skipped)."""
    return {"search.trials": args.trials, "search.max_concurrent": args.max_concurrent,
            "search.searcher": args.searcher, "tracking.uri": args.tracking_uri,
            "tracking.experiment": args.experiment, "name": args.name,
            "ray.address": getattr(args, "ray_address", None),
            "workdir": getattr(args, "workdir", None)}


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    """Where to read a search from: a config, or the tracking URI / experiment / workdir."""
    p.add_argument("--config", help="a search config to take tracking settings from")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///runs/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: prunetune)")
    p.add_argument("--workdir", help="workdir whose mlflow.db to use (default: runs)")


def tracking_from(args: argparse.Namespace) -> tuple[str, str]:
    """(tracking URI, experiment) from the flags of `add_tracking_args`; the store must exist
    (a sqlite file is never created empty, a server must answer: `results.check_store`)."""
    import os

    from .config import load_config
    from .results import check_store

    uri = args.tracking_uri or (None if args.config else os.environ.get("MLFLOW_TRACKING_URI"))
    cfg = load_config(args.config, {"tracking.uri": uri, "tracking.experiment": args.experiment,
                                    "workdir": args.workdir})
    check_store(cfg.tracking_uri())
    return cfg.tracking_uri(), cfg.tracking.experiment
