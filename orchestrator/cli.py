"""The `prunetune` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from prunetune.errors import EXIT_NO_RESULT, EXIT_OK

from .cli_common import (
    add_search_override_args,
    add_tracking_args,
    run_command,
    search_overrides,
    tracking_from,
)

__all__ = ["main", "build_parser"]


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, {"pretrain.epochs": args.epochs, "pretrain.device": args.device,
                                    "cache_dir": args.cache_dir})
    from prunetune.trainers import pretrain_dense  # torch: only once the config is good

    result = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                            force=args.force, progress=not args.quiet)
    summary = {"model": cfg.model.name, "dataset": cfg.data.name, "cached": result.cached,
               "checkpoint": str(result.checkpoint_path), **result.metrics}
    if result.warning:  # also printed on stderr: still improving, train longer
        summary["warning"] = result.warning
    print(json.dumps(summary, indent=2))
    return 0


def _run_search(cfg, resume: bool) -> int:  # type: ignore[no-untyped-def]
    from prunetune.files import check_writable

    from .config import check_devices

    # What would fail only after the pretraining or deep inside Ray, refused in seconds with
    # nothing created: folders the search writes to, devices it trains and times on.
    check_writable(cfg.workdir_path(), "workdir")
    check_writable(cfg.storage_dir(), "storage_path")
    check_devices(cfg)
    from prunetune.trainers.pretrain import check_dense_inputs

    check_dense_inputs(cfg.model, cfg.data)
    from .driver import run_search

    summary = run_search(cfg, resume=resume)
    if summary.trials_finished == 0:
        print("prunetune search: no trial finished; see the errors above", file=sys.stderr)
        return EXIT_NO_RESULT
    return EXIT_OK


def _cmd_search(args: argparse.Namespace) -> int:
    from .config import load_config

    return _run_search(load_config(args.config, search_overrides(args)), args.resume)


def _cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from .config import load_config
    from .demo import DEMO_YAML

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(DEMO_YAML)
    try:
        cfg = load_config(f.name, {"workdir": args.workdir, "name": args.name})
    finally:
        import os

        os.unlink(f.name)
    return _run_search(cfg, args.resume)


def _cmd_results(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from .results import deciding_trials, find_search, format_table, pareto_front, search_trials

    uri, experiment = tracking_from(args)
    client = MlflowClient(uri)
    parent = find_search(client, experiment, args.search)
    trials = search_trials(client, parent)
    rows = [{"trial": t.name, "trial_id": t.trial_id, "stage": t.stage, "status": t.status,
             **t.metrics} for t in trials]
    deciding = {t.trial_id for t in deciding_trials(trials)}
    front = pareto_front([r for r in rows if r["trial_id"] in deciding])
    if args.json:
        print(json.dumps({"search": parent.data.tags.get("prunetune.search"),
                          "parent_run_id": parent.info.run_id, "trials": rows,
                          "pareto": front}, indent=2, default=str))
        return 0
    counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    print(f"search {parent.data.tags.get('prunetune.search')} (parent run {parent.info.run_id}, "
          f"{uri}): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    cols = ["trial", "accuracy", "accuracy_drop", "speedup", "latency_ms", "flops_ratio",
            "params_ratio", "sparsity"]
    finished = sorted((r for r in rows if r["status"] == "finished"),
                      key=lambda r: r.get("accuracy", -1.0), reverse=True)
    finalists = [r for r in finished if r["stage"] == "finalist"]
    if finalists:
        print(f"\nfinalists ({len(finalists)}, fine-tuned; proxy_accuracy: their first-stage "
              "score):")
        print(format_table(finalists, ["trial", "proxy_accuracy", *cols[1:]]))
    first = [r for r in finished if r["stage"] != "finalist"]
    stage = "proxy trials" if finalists or any(r["stage"] == "proxy" for r in first) else "trials"
    print(f"\ntop {min(args.top, len(first))} {stage} by accuracy:")
    print(format_table(first[: args.top], cols))
    print(f"\nPareto front (accuracy vs latency_ms{', finalists' if finalists else ''}):")
    print(format_table(front, cols))
    return 0


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _wait_until_answers(url: str, server: object, timeout_s: float) -> bool:
    """Poll `url` until it answers HTTP (True), the server process ends or `timeout_s` passes
    (False): the UI's address is printed only once it can be opened."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:  # type: ignore[attr-defined]
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answered, with an HTTP status
        except OSError:  # not listening yet (URLError is an OSError)
            time.sleep(0.5)
    return False


def _cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from mlflow.tracking import MlflowClient

    from prunetune.errors import CLIError

    from .tracking import ui_url

    uri, experiment = tracking_from(args)
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    if uri.startswith(("http://", "https://")):  # a server has its UI already
        print(ui_url(uri, exp.experiment_id) if exp else uri)
        return EXIT_OK
    if not 1 <= args.port <= 65535:
        raise CLIError(f"--port must lie in 1..65535, got {args.port}")
    if _port_in_use(args.host, args.port):
        raise CLIError(f"port {args.port} on {args.host} is in use (another UI or server?), or "
                       f"{args.host} is not an address of this machine; choose a free one with "
                       "--port (and --host)")
    base = f"http://{args.host}:{args.port}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]  # one user: one worker
    print(f"starting the MLflow UI for {uri} on {base} ...", file=sys.stderr, flush=True)
    server = subprocess.Popen(cmd)
    try:
        if not _wait_until_answers(base, server, args.start_timeout):
            server.terminate()
            server.wait(timeout=30)
            raise CLIError(f"the MLflow UI on {base} did not answer within "
                           f"{args.start_timeout:.0f} s (its own output above says why); "
                           "try again, or raise --start-timeout")
        print(f"MLflow UI for {uri} at {base} (Ctrl-C stops it)\n  runs of experiment "
              f"{experiment!r}: {ui_url(base, exp.experiment_id) if exp else base}", flush=True)
        return server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


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

    p = sub.add_parser("search", help="run a pruning-policy search (Ray Tune + MLflow)")
    p.add_argument("config", help="YAML config (see examples/)")
    add_search_override_args(p)
    p.add_argument("--address", dest="ray_address",
                   help="Ray cluster: auto or HOST:PORT (default: a local Ray)")
    p.add_argument("--workdir", help="override workdir")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search (the named one, else the newest)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("demo", help="the demo search: ResNet-20 on Fashion-MNIST, 50 proxy "
                       "trials of BO, then 4 fine-tuned finalists")
    p.add_argument("--workdir", help="override workdir (default: runs)")
    p.add_argument("--name", help="override the search name")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("results", help="best trials and Pareto front of a search, from MLflow")
    p.add_argument("search", help="search name or MLflow parent run id")
    p.add_argument("--top", type=int, default=10, help="rows of the top table (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_tracking_args(p)
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the search store")
    add_tracking_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--start-timeout", type=float, default=300.0,
                   help="seconds to wait for the UI to answer before giving up (default 300)")
    p.set_defaults(func=_cmd_ui)

    from .cli_baselines import add_baselines_command
    from .cli_cluster import add_cluster_commands
    from .cli_engine import add_engine_commands
    from .cli_export import add_export_command

    add_engine_commands(sub)
    add_baselines_command(sub)
    add_export_command(sub)
    add_cluster_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `prunetune` command; exit codes as in `prunetune.errors` (README)."""
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
