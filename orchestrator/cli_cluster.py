"""`prunetune` commands for clusters, jobs, the tracking server and the model registry.

`add_cluster_commands(subparsers)` adds: submit, status, logs, stop (Ray Jobs API), server
(MLflow tracking server), promote and load (model registry). Errors are reported by
`cli_common.run_command`, as for every command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .cli_common import (
    add_search_override_args,
    add_tracking_args,
    run_command,
    search_overrides,
    tracking_from,
)

__all__ = ["add_cluster_commands", "main"]


def _quiet_downloads() -> None:
    # MLflow draws a progress bar per artifact download; a command's output stays readable.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# ---------------------------------------------------------------------------------------------
# Jobs


def _cmd_submit(args: argparse.Namespace) -> int:
    from .config import load_config

    overrides = search_overrides(args)
    # A bad config, searcher or searcher option fails before the cluster is contacted (a bad
    # config before the searchers, and torch with them, are imported).
    cfg = load_config(args.config, overrides)
    from .jobs import follow_logs, jobs_client, submit_search, wait_for_job
    from .searchers import check_options

    check_options(cfg.search.searcher, cfg.search.searcher_options)
    client = jobs_client(args.address)
    job = submit_search(args.config, args.address, overrides=overrides,
                        submission_id=args.submission_id, client=client)
    print(job.job_id, flush=True)
    print(f"submitted to {job.address}: {job.entrypoint}\n  follow: prunetune logs {job.job_id} "
          f"--address {job.address} --follow\n  status: prunetune status {job.job_id} --address "
          f"{job.address}", file=sys.stderr, flush=True)
    if not args.wait:
        return 0
    follow_logs(client, job.job_id, lambda s: print(s, end="", file=sys.stderr, flush=True))
    status = wait_for_job(client, job.job_id)
    print(f"job {job.job_id}: {status}", file=sys.stderr, flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from .jobs import job_info, jobs_client

    info = job_info(jobs_client(args.address), args.job)
    fields = {"job": args.job, "status": str(info.status), "message": info.message,
              "entrypoint": info.entrypoint, "start_time": info.start_time,
              "end_time": info.end_time, "driver_node": getattr(info, "driver_node_id", None)}
    if args.json:
        print(json.dumps(fields, indent=2, default=str))
    else:
        for k, v in fields.items():
            print(f"{k:12s} {v}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from .jobs import _call, follow_logs, jobs_client

    client = jobs_client(args.address)
    if args.follow:
        follow_logs(client, args.job, lambda s: print(s, end="", flush=True))
    else:
        print(_call(client.get_job_logs, args.job), end="")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from .jobs import job_info, jobs_client, stop_job, wait_for_job

    client = jobs_client(args.address)
    if stop_job(client, args.job):
        status = wait_for_job(client, args.job, timeout_s=args.timeout)
        print(f"job {args.job}: {status}")
    else:
        print(f"job {args.job} had already ended: {job_info(client, args.job).status}")
    return 0


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the head's Jobs API, http://HEAD:8265 (default: "
                                     "$RAY_API_SERVER_ADDRESS)")


# ---------------------------------------------------------------------------------------------
# Tracking server and registry


def _cmd_server(args: argparse.Namespace) -> int:
    from .jobs import quote_command, server_command, server_env

    cmd = server_command(host=args.host, port=args.port,
                         backend_store_uri=args.backend_store_uri,
                         artifacts_destination=args.artifacts_destination, workdir=args.workdir)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"prunetune server: warning: binding {args.host} exposes the tracking server (no "
              "authentication) beyond this machine", file=sys.stderr)
    print(f"MLflow tracking server at http://{args.host}:{args.port} (Ctrl-C stops it); "
          f"searches use it with --tracking-uri http://{args.host}:{args.port}\n"
          f"  {quote_command(cmd)}", flush=True)
    if args.dry_run:
        return 0
    os.execve(cmd[0], cmd, server_env())
    return 0  # not reached


def _cmd_promote(args: argparse.Namespace) -> int:
    from .registry import parse_select, promote

    _quiet_downloads()
    if args.select is not None:
        parse_select(args.select)  # a typo is told before the store is read
    uri, experiment = tracking_from(args)
    # Progress and MLflow's own messages go to stderr: stdout is the JSON result alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = promote(args.search, args.model_name, tracking_uri=uri, experiment=experiment,
                         select=args.select, trial=args.trial,
                         finetune_epochs=args.finetune_epochs, alias=args.alias,
                         progress=not args.quiet)
    print(json.dumps({"model": result.model_name, "version": result.version,
                      "alias": result.alias, "uri": result.uri, "run_id": result.run_id,
                      "search": result.search, "trial": result.trial,
                      "trial_id": result.trial_id, "metrics": result.metrics,
                      "latency_backend": result.latency_backend, "onnx_uri": result.onnx_uri,
                      "tracking_uri": uri}, indent=2))
    return 0


def _layers(model: Any, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Per conv / linear layer of a promoted model: its widths against the dense model's and the
    share of its weights that are zero."""
    from torch import nn

    from prunetune.trainers import build_model

    m = spec["model"]
    dense = dict(build_model(m["name"], num_classes=m["num_classes"],
                             in_channels=m["in_channels"], **m.get("kwargs", {})).named_modules())
    rows = []
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        w = getattr(layer, "weight", None)
        width = ("out_features", "in_features") if isinstance(layer, nn.Linear) else (
            "out_channels", "in_channels")
        ref = dense.get(name)
        rows.append({"layer": name, "type": type(layer).__name__,
                     "out": getattr(layer, width[0], None), "in": getattr(layer, width[1], None),
                     "dense_out": getattr(ref, width[0], None) if ref is not None else None,
                     "sparsity": float((w == 0).float().mean()) if w is not None else None})
    return rows


def _cmd_load(args: argparse.Namespace) -> int:
    import torch

    from prunetune.search_spaces import count_cost

    from .registry import load_promoted_with_spec

    _quiet_downloads()
    uri = tracking_from(args)[0]
    with contextlib.redirect_stdout(sys.stderr):
        model, spec = load_promoted_with_spec(args.model_uri, tracking_uri=uri,
                                              device=args.device, sparse=args.sparse)
    example = torch.zeros(1, *spec["input_shape"], device=args.device)
    with torch.no_grad():
        out = model(example)
    cost = count_cost(model, example) if not args.sparse else None
    summary: dict[str, Any] = {
        "uri": args.model_uri, "class": type(model).__name__, "model": spec["model"]["name"],
        "input_shape": spec["input_shape"], "output_shape": list(out.shape[1:]),
        "flops": cost.effective_flops if cost else spec["cost"]["effective_flops"],
        "params": cost.effective_params if cost else spec["cost"]["effective_params"],
        "sparsity": spec["cost"]["sparsity"], "metrics": spec["metrics"], "source": spec["source"],
        "layers": _layers(model, spec) if not args.sparse else None}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    from .results import format_table

    print(f"{args.model_uri} (read from {uri}): {summary['model']} {summary['class']}, input "
          f"{summary['input_shape']} -> output {summary['output_shape']}; FLOPs "
          f"{summary['flops']:,.0f}, params {summary['params']:,.0f}, sparsity "
          f"{summary['sparsity']:.3f}")
    print(f"source: search {spec['source'].get('search')}, trial "
          f"{spec['source'].get('trial') or spec['source'].get('trial_id')}; test accuracy "
          f"{spec['metrics'].get('test_accuracy', float('nan')):.4f}")
    if summary["layers"]:
        print(format_table(summary["layers"], ["layer", "type", "dense_out", "out", "in",
                                               "sparsity"]))
    return 0


def add_cluster_commands(sub: Any) -> None:
    """Add submit, status, logs, stop, server, promote and load to a subparsers object."""
    p = sub.add_parser("submit", help="submit a search to a Ray cluster (Jobs API); prints the "
                                      "job id")
    p.add_argument("config", help="YAML config; it travels to the cluster with the job")
    _add_address(p)
    p.add_argument("--wait", action="store_true",
                   help="stream the job's logs and wait; exit 0 only if it SUCCEEDED")
    add_search_override_args(p)
    p.add_argument("--submission-id", help="job id to use (default: generated)")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("status", help="status of a submitted job")
    p.add_argument("job", help="job (submission) id")
    _add_address(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("logs", help="logs of a submitted job")
    p.add_argument("job", help="job (submission) id")
    _add_address(p)
    p.add_argument("--follow", action="store_true", help="stream until the job ends")
    p.set_defaults(func=_cmd_logs)

    p = sub.add_parser("stop", help="stop a submitted job")
    p.add_argument("job", help="job (submission) id")
    _add_address(p)
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for it to stop (default 60)")
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("server", help="start an MLflow tracking server (database backend, "
                                      "served artifacts) on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--backend-store-uri",
                   help="database URI (default sqlite:///<workdir>/mlflow-server.db)")
    p.add_argument("--artifacts-destination",
                   help="artifact root the server writes to (default <workdir>/mlartifacts)")
    p.add_argument("--workdir", default="runs", help="folder for the defaults (default runs)")
    p.add_argument("--dry-run", action="store_true", help="print the command, do not start it")
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser("promote", help="register a search's best (or chosen) policy as a model "
                                       "version with an alias")
    p.add_argument("search", help="search name or MLflow parent run id")
    p.add_argument("--model-name", required=True, help="registered model name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--select", help="e.g. 'max accuracy where speedup >= 2' or 'min "
                                        "latency_ms where accuracy >= 0.9' (default: max accuracy)")
    which.add_argument("--trial", help="a trial as `prunetune results` names it (trial-003, "
                                       "finalist-1), or its Tune id or MLflow run id, instead "
                                       "of --select")
    p.add_argument("--finetune-epochs", type=float,
                   help="fine-tuning before registering (default: as the search's trials; 0: none)")
    p.add_argument("--alias", default="champion", help="alias to point at the new version "
                                                       "(default champion)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_tracking_args(p)
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser("load", help="load a promoted model and print a summary")
    p.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--device", default="cpu", help="device to load onto (default cpu)")
    p.add_argument("--sparse", action="store_true",
                   help="swap masked layers for the sparse kernel modules")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_tracking_args(p)
    p.set_defaults(func=_cmd_load)


def main(argv: Sequence[str] | None = None) -> int:
    """These commands alone (`python -m prunetune.orchestrator.cli_cluster ...`)."""
    parser = argparse.ArgumentParser(prog="prunetune")
    add_cluster_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
