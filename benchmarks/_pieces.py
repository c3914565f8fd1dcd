"""What the long benchmarks share: finished pieces kept in a JSON file so a run resumes where it
stopped, searches run or resumed through the product's own path and read back from MLflow, and
the state of the code a result came from."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import restore_dense_models, write_result

ROOT = Path(__file__).resolve().parents[1]
# Finished pieces of benchmarks that run for many sessions, committed between them: a machine
# may start with an empty cache, and the pieces (policies, accuracies, timings) stand alone.
PROGRESS = ROOT / "benchmarks" / "progress"


def benchmark_args(doc: str, argv: list[str] | None, work: Path,
                   add: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """A resumable benchmark's arguments: its own (`add`), then `--work` (where its finished
    pieces are kept; a --smoke run's in `<work>-smoke`), `--smoke` and `--report`. The committed
    dense models are put in the cache first (`restore_dense_models`)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add(parser)
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.work = args.work.with_name(args.work.name + "-smoke")
    restore_dense_models()
    return args


def print_report(out: Path, report: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """--report: the table `report` makes of the committed result file `out`."""
    print(report(json.loads(out.read_text())))
    return {}


class Pieces:
    """Finished pieces by key, kept in a JSON file after each one (resumable runs)."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path, self.settings = path, settings
        self.done: dict[str, Any] = {}
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("settings") == settings:
                self.done = saved["pieces"]
                print(f"reusing {len(self.done)} finished pieces from {path}", flush=True)

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.done:
            print(f"== {key}", flush=True)
            self.done[key] = make()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_result(self.path, {"settings": self.settings, "pieces": self.done}, show={})
        return self.done[key]


def timed(make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`make()` with the load average (1, 5, 15 min) before and after and its wall time."""
    before, t0 = os.getloadavg(), time.perf_counter()
    out = make()
    return {**out, "wall_s": time.perf_counter() - t0, "load_average_before": before,
            "load_average_after": os.getloadavg()}


def trial_policy(cfg: Any, run_id: str) -> Any:
    """The policy a trial logged (its `policy.json` artifact)."""
    from mlflow.tracking import MlflowClient

    from prunetune.search_spaces import Policy

    with tempfile.TemporaryDirectory() as tmp:
        path = MlflowClient(cfg.tracking_uri()).download_artifacts(run_id, "policy.json", tmp)
        return Policy.load(path)


def run_or_resume(cfg: Any) -> tuple[Any, float | None]:
    """Run the config's search (`run_search`, the product's path), resume it when
    interrupted, reuse it when finished: (its parent run, the seconds it ran now or None)."""
    from mlflow.tracking import MlflowClient

    from prunetune.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
    from prunetune.orchestrator.driver import run_search
    from prunetune.orchestrator.interrupts import handle_sigterm_as_interrupt, terminated
    from prunetune.orchestrator.results import find_search

    client = MlflowClient(cfg.tracking_uri())
    try:
        status = find_search(client, cfg.tracking.experiment, cfg.name).info.status
    except Exception:  # noqa: BLE001 - no store yet, or no such search
        status = None
    t0 = time.perf_counter()
    if status != "FINISHED":
        # SIGTERM (`timeout`, a scheduler) ends the search as Ctrl-C does, Tune saving its
        # state; Ray's own handler would abort the driver mid-save.
        handle_sigterm_as_interrupt()
        try:
            run_search(cfg, resume=status is not None)
        except KeyboardInterrupt:
            print(f"interrupted in search {cfg.name}: run the same benchmark command again to "
                  "resume it (finished searches and pieces are kept)", file=sys.stderr,
                  flush=True)
            # the product's exit codes: 143 for SIGTERM, 130 for Ctrl-C
            raise SystemExit(EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED) from None
    wall = time.perf_counter() - t0 if status != "FINISHED" else None
    return find_search(client, cfg.tracking.experiment, cfg.name), wall


def code_version() -> dict[str, Any]:
    """The commit the run used and the product files changed in the working tree."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.rstrip()

    changed = [line[3:] for line in git("status", "--porcelain", "-uno").splitlines()
               if not line[3:].startswith(("benchmarks/", "tests/"))]
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_product_files": changed}
