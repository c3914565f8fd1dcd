"""`prunetune export`: a pruned model as files to deploy, for any trial of a search or a policy.

    prunetune export SEARCH [--trial NAME | --select EXPR] --out DIR
    prunetune export CONFIG --policy policy.json --out DIR

A trial of a search is rebuilt as `promote` rebuilds it (`registry.choose_trial` +
`registry.rebuild_trial`: its policy re-applied to the search's dense checkpoint, fine-tuned as
the trial was); a policy file is applied to the config's dense model as `prunetune apply` does
(fine-tuned only with `--finetune-epochs`). Both go through `trainers.prune_and_evaluate`.

DIR receives `model.onnx` when the latency backend (`--backend`, else the config's
`latency.backend`) deploys ONNX (round-trip checked against PyTorch within 1e-4 first, see
`deployable.py`), `pruned.pt` (state dict + policy, read with `torch.load(weights_only=True)`
by `prunetune.trainers.pruned_file.load_pruned`), `policy.json` and `export.json` (what was
written and where it came from). Wire it in with `add_export_command(subparsers)`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunetune.errors import CLIError, ConfigError

from .cli_common import add_tracking_args, tracking_from

__all__ = ["PRUNED_FILE", "add_export_command", "cmd_export"]

PRUNED_FILE = "pruned.pt"
POLICY_FILE = "policy.json"
MANIFEST_FILE = "export.json"


@dataclass
class _Built:
    """A pruned model rebuilt for export, with what its files record."""

    model: Any  # nn.Module, CPU, eval mode
    inputs: Any  # the fixed input the round trip is checked on (first test images)
    policy: Any
    model_spec: dict[str, Any]  # name, num_classes, in_channels, kwargs
    metrics: dict[str, float]
    source: dict[str, Any]
    trial_metrics: dict[str, float] = field(default_factory=dict)


def _test_inputs(data: Any) -> Any:
    return next(iter(data.loader("test", shuffle=False)))[0][:4].contiguous()


def _from_policy(args: argparse.Namespace, cfg: Any) -> _Built:
    """Apply `--policy` to the config's dense model (as `prunetune apply`)."""
    from prunetune.search_spaces import Policy, PolicyError
    from prunetune.trainers import prune_and_evaluate

    from .cli_engine import _setup

    try:
        policy = Policy.load(args.policy)
    except PolicyError as err:
        raise CLIError(f"--policy {args.policy}: {err}") from None
    cfg, data, dense, _ = _setup(args)
    ft = cfg.finetune.model_copy(update={"epochs": args.finetune_epochs or 0.0})
    try:
        pruned = prune_and_evaluate(dense, policy, data, ft, seed=cfg.seed, device="cpu",
                                    progress=not args.quiet, desc="export")
    except PolicyError as err:
        raise CLIError(f"policy {args.policy} does not fit model {cfg.model.name}: "
                       f"{err}") from None
    model_spec = {"name": cfg.model.name, "num_classes": data.num_classes,
                  "in_channels": data.in_channels, "kwargs": dict(cfg.model.kwargs)}
    metrics = {"val_accuracy": pruned.scores["val"].accuracy, **pruned.cost_metrics(),
               "finetune_epochs": float(args.finetune_epochs or 0.0)}
    source = {"config": str(args.source), "policy": str(args.policy)}
    return _Built(pruned.model.cpu().eval(), _test_inputs(data), policy, model_spec, metrics,
                  source)


def _from_search(args: argparse.Namespace, chosen: Any) -> _Built:
    """Rebuild the chosen trial as `promote` does (its seed, its stage's epochs)."""
    from .registry import rebuild_trial, trial_epochs

    epochs = trial_epochs(chosen, args.finetune_epochs)
    r = rebuild_trial(chosen, epochs, not args.quiet)
    source = {"search": chosen.search, "search_run_id": chosen.parent.info.run_id,
              "trial": chosen.trial.name, "trial_id": chosen.trial.trial_id,
              "trial_run_id": chosen.trial.run_id, "selection": chosen.how}
    trial_metrics = {k: v for k, v in chosen.trial.metrics.items()
                     if k in ("accuracy", "latency_ms", "dense_latency_ms", "speedup")
                     and math.isfinite(v)}
    return _Built(r.model, r.inputs, chosen.policy, r.spec["model"], r.metrics, source,
                  trial_metrics)


def _write(built: _Built, backend: Any, out: Path) -> dict[str, Any]:
    """The files of `built` in `out`; the manifest (also written as export.json)."""
    from prunetune.files import atomic_write_json
    from prunetune.trainers.pruned_file import save_pruned

    from .deployable import write_deployable

    # The deployable file first: one that fails its round trip stops the export before the rest.
    dep = write_deployable(built.model, built.inputs, backend, out)
    manifest: dict[str, Any] = {
        "latency_backend": backend.name, "format": dep.format or "pytorch",
        "onnx_max_abs_diff": dep.max_abs_diff, "input_shape": list(built.inputs.shape[1:]),
        "model": built.model_spec, "metrics": built.metrics,
        "trial_metrics": built.trial_metrics, "source": built.source}
    # File names inside `out` (the folder travels as a whole to where it is deployed).
    files = {dep.format or "deploy": dep.path.name} if dep.path is not None else {}
    files.update(pruned=PRUNED_FILE, policy=POLICY_FILE, manifest=MANIFEST_FILE)
    manifest["files"] = files
    m = built.model_spec
    save_pruned(out / PRUNED_FILE, built.model, built.policy, model_name=m["name"],
                num_classes=m["num_classes"], in_channels=m["in_channels"],
                input_shape=tuple(built.inputs.shape[1:]), kwargs=m.get("kwargs", {}),
                result={k: v for k, v in manifest.items() if k != "files"})
    built.policy.save(out / POLICY_FILE)
    atomic_write_json(out / MANIFEST_FILE, manifest, indent=2)
    return manifest


def _check_args(args: argparse.Namespace) -> None:
    from prunetune.files import check_writable

    if args.policy and (args.trial or args.select):
        raise CLIError("--trial / --select choose a trial of a search; with --policy the first "
                       "argument is a config and the policy file is the model: give one or the "
                       "other")
    if args.finetune_epochs is not None and args.finetune_epochs < 0:
        raise CLIError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder (created if absent)")
    try:
        check_writable(out, "--out")
    except ConfigError as err:  # a usage problem here, not the config's
        raise CLIError(str(err)) from None


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trial's (or a policy's) pruned model in its latency backend's format."""
    from .deployable import resolve_backend

    _check_args(args)
    out = Path(args.out)
    # Everything that can be refused (config, store, trial, backend, format) is, before any
    # pretraining or fine-tuning.
    if args.policy:
        from .config import load_config

        cfg = load_config(args.source, {"cache_dir": args.cache_dir})
        args.config = args.source  # what cli_engine._setup reads
        backend = resolve_backend(args.backend or cfg.latency.backend, args.format)
        with contextlib.redirect_stdout(sys.stderr):
            built = _from_policy(args, cfg)
    else:
        from .registry import choose_trial, parse_select

        if args.select is not None:
            parse_select(args.select)  # a typo is told before the store is read
        uri, experiment = tracking_from(args)
        chosen = choose_trial(args.source, tracking_uri=uri, experiment=experiment,
                              select=args.select, trial=args.trial)
        backend = resolve_backend(args.backend or chosen.cfg.latency.backend, args.format)
        with contextlib.redirect_stdout(sys.stderr):
            built = _from_search(args, chosen)
    manifest = _write(built, backend, out)
    if args.json:
        print(json.dumps(manifest, indent=2, default=str))
        return 0
    print(f"exported {built.model_spec['name']} pruned by "
          + (f"trial {built.source['trial']} of search {built.source['search']}"
             if "search" in built.source else f"policy {args.policy}")
          + f" (latency backend {backend.name}, format {manifest['format']}) to {out}:")
    for what, name in manifest["files"].items():
        print(f"  {what:9s}{out / name}")
    if manifest["onnx_max_abs_diff"] is not None:
        print(f"ONNX Runtime reproduces the PyTorch outputs within "
              f"{manifest['onnx_max_abs_diff']:.2g} (allowed 1e-4); load it with "
              "onnxruntime.InferenceSession(path), input 'input' (N, "
              f"{', '.join(str(v) for v in manifest['input_shape'])})")
    print(f"the PyTorch model: prunetune.trainers.pruned_file.load_pruned('{out / PRUNED_FILE}')"
          " (torch.load(weights_only=True))")
    return 0


def add_export_command(subparsers: Any) -> None:
    """Add `export` to the `prunetune` sub-command parsers."""
    p = subparsers.add_parser(
        "export", help="write a trial's (or a policy's) pruned model in its latency backend's "
                       "deployment format (ONNX for onnxruntime / tensorrt) plus its state dict")
    p.add_argument("source", metavar="SEARCH|CONFIG",
                   help="a search name or MLflow parent run id; with --policy, a YAML config")
    p.add_argument("--out", required=True, help="folder to write into (created if absent)")
    p.add_argument("--policy", help="a policy JSON file to export instead of a search's trial")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="the search's trial (trial-003, finalist-1, a Tune id "
                                       "or MLflow run id; default: as promote chooses)")
    which.add_argument("--select", help="e.g. 'max accuracy where speedup >= 2' (default: max "
                                        "accuracy, among the finalists when there are any)")
    p.add_argument("--backend", help="latency backend whose format to write (eager, "
                                     "onnxruntime, tensorrt, module:attr; default: the "
                                     "config's latency.backend)")
    p.add_argument("--format", choices=("onnx",),
                   help="require this format: refused when the backend does not write it")
    p.add_argument("--finetune-epochs", type=float,
                   help="fine-tuning before export (default: a trial's own; with --policy 0)")
    p.add_argument("--cache-dir", help="override cache_dir (with --policy)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_tracking_args(p)
    p.set_defaults(func=cmd_export)
