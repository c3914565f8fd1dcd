"""`prunetune analyze`, `map` and `apply`: the pruning engine from the command line.

`analyze CONFIG` prints the model's prunable units (features and search group) as a table;
`map CONFIG` prints (and saves as JSON) the measured scheme mapping: per unit and candidate
scheme, the latency saved on the device and the proxy accuracy lost, and the choice;
`apply CONFIG --policy P.json` prunes the dense model with a policy file and prints the cost
before / after and the validation accuracy (fine-tuning only with `--finetune-epochs`).
Wire them in with `add_engine_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunetune.errors import CLIError

__all__ = ["add_engine_commands", "cmd_analyze", "cmd_apply", "cmd_map", "format_units"]

_COLUMNS = (("unit", "unit"), ("group", "group"), ("type", "type"), ("channels", "ch"),
            ("heads", "heads"), ("in_channels", "in"), ("out_channels", "out"),
            ("kernel", "k"), ("stride", "s"), ("groups", "g"), ("n_layers", "layers"),
            ("flops_share", "flops%"), ("params", "params"), ("depth", "depth"),
            ("imp_cv", "imp_cv"), ("schemes", "schemes"))


def input_size(text: str) -> tuple[int, int, int]:
    """`C,H,W` (e.g. 3,224,224) as a tuple; the argparse type of `--input-size`."""
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"--input-size must be C,H,W with positive integers, "
                                         f"e.g. 3,224,224; got {text!r}")
    return size  # type: ignore[return-value]


def _setup(args: argparse.Namespace, *, untrained: bool = False) -> tuple[Any, Any, Any, Any]:
    """(config, data bundle or None, dense model, example input) for a config file. With
    `--untrained --input-size C,H,W` no data is read at all (any model, no dataset)."""
    from .config import load_config

    cfg = load_config(args.config, {"cache_dir": getattr(args, "cache_dir", None),
                                    "latency.backend": getattr(args, "backend", None)})
    import torch  # only once the config is good: a typo is told in well under a second

    from prunetune.trainers import build_model, load_data, pretrain_dense

    size = getattr(args, "input_size", None)
    if untrained and size is not None:
        model = build_model(cfg.model.name, num_classes=args.num_classes, in_channels=size[0],
                            **cfg.model.kwargs)
        return cfg, None, model.eval(), torch.zeros(1, *size)
    data = load_data(cfg.data)
    example = torch.zeros(1, *(size or (data.in_channels, *data.image_size)))
    if untrained:
        model = build_model(cfg.model.name, num_classes=data.num_classes,
                            in_channels=data.in_channels, **cfg.model.kwargs)
    else:
        model = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir,
                               data=data, progress=not getattr(args, "quiet", False)).model
    return cfg, data, model.eval(), example


def format_units(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of analysis rows (see `cmd_analyze`)."""
    cells = [[head for _, head in _COLUMNS]]
    for row in rows:
        line = []
        for key, _ in _COLUMNS:
            v = row.get(key, "")
            if key == "flops_share":
                v = f"{100 * v:.1f}"
            elif key == "heads" and not v:
                v = "-"  # not an attention block
            elif isinstance(v, float):
                v = f"{v:.3g}"
            line.append(str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Print the prunable units of the config's model with their features and group."""
    cfg, _, model, example = _setup(args, untrained=args.untrained)
    from prunetune.search_spaces import analyze

    from .spaces import space_from_analysis

    analysis = analyze(model, example)
    if args.groups is not None:
        groups = args.groups if args.groups == "auto" else int(args.groups)
        cfg = cfg.model_copy(update={"space": cfg.space.model_copy(update={"groups": groups})})
    space = space_from_analysis(cfg, analysis, with_budget=False, mapping_device=args.device)
    group_of = {n: i for i, g in enumerate(space.groups) for n in g}
    rows = [{**row, "group": group_of.get(row["unit"], "-")} for row in analysis.table()]
    if args.json:
        print(json.dumps({"model": cfg.model.name, "dense_flops": analysis.dense_flops,
                          "dense_params": analysis.dense_params,
                          "protected": analysis.protected, "groups": space.groups,
                          "units": rows}, indent=2))
        return 0
    print(format_units(rows))
    print(f"\n{len(rows)} units in {space.k} groups; protected (feed the output): "
          f"{', '.join(analysis.protected) or 'none'}; dense {analysis.dense_flops / 1e6:.2f} "
          f"MFLOPs, {analysis.dense_params / 1e6:.3f} M params")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    """Scan (or read from the cache) the config's model on a device; print and save the
    measured scheme mapping."""
    from .config import load_config

    if args.ratios:
        bad = [r for r in args.ratios if not 0.0 < r < 1.0]
        if bad:
            raise CLIError(f"--ratios must lie in (0, 1), got {bad}; e.g. --ratios 0.25 0.5")
    # A bad config is told before torch is imported; a device or backend that cannot time
    # here before any pretraining.
    cfg = load_config(args.config, {"latency.backend": args.backend,
                                    "latency.device": args.device})
    from prunetune.files import atomic_writer
    from prunetune.search_spaces import SCAN_RATIOS, analyze, scan_templates

    from .config import latency_device
    from .scheme_map import check_scan_device, format_mapping, mapping_rows, measured_scan

    check_scan_device(args.device)
    latency_device(cfg)
    args.quiet = args.quiet or args.json  # stdout holds the JSON alone
    cfg, _, model, example = _setup(args)
    scan, cached = measured_scan(cfg, model, device=args.device, progress=not args.quiet,
                                 rescan=args.rescan,
                                 ratios=tuple(args.ratios) if args.ratios else SCAN_RATIOS)
    analysis = analyze(model, example)
    # Without a space (and so without Ray or a searcher): the suite on a bare GPU runs this.
    templates = scan_templates(analysis, scan, tuple(cfg.space.schemes))
    rows = mapping_rows(analysis, scan, templates)
    out = Path(args.out or cfg.workdir_path() / f"{cfg.name or cfg.model.name}-mapping.json")
    result = {"model": cfg.model.name, "device": scan.device, "dense_ms": scan.dense_ms,
              "dense_accuracy": scan.dense_accuracy, "scan_file": str(cached),
              "choice": {n: t.to_dict() for n, t in templates.items()}, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out, "w") as handle:
        json.dump(result, handle, indent=1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_mapping(rows))
    counts: dict[str, int] = {}
    for t in templates.values():
        counts[t.scheme] = counts.get(t.scheme, 0) + 1
    print(f"\nmeasured mapping on {scan.device} (dense {scan.dense_ms:.3f} ms, proxy accuracy "
          f"{scan.dense_accuracy:.4f}): " + ", ".join(f"{s} on {n} units"
                                                     for s, n in sorted(counts.items())))
    print(f"saved to {out}; a search uses it with `space: {{mapping: measured}}`")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Prune the dense model with a policy file; print cost before / after and val accuracy."""
    from prunetune.errors import ConfigError

    from .config import latency_device, load_config

    # A bad config, device or policy file is told before any pretraining (and a bad config
    # before torch is imported).
    device_field = "--device" if args.device else "finetune.device"
    device_name = args.device or load_config(args.config).finetune.device
    from prunetune.kernels import measured_models_ms, speedup
    from prunetune.search_spaces import Policy, PolicyError
    from prunetune.trainers import evaluate, prune_and_evaluate, resolve_device
    from prunetune.trainers.trial import latency_clock

    try:
        device = resolve_device(device_name)
    except ConfigError as err:
        raise ConfigError(f"{device_field}: {err}") from None
    try:
        policy = Policy.load(args.policy)
    except PolicyError as err:
        raise CLIError(str(err)) from None
    cfg, data, dense, example = _setup(args)
    timing = latency_device(cfg, device)  # eager under "auto": the evaluation device
    ft = cfg.finetune.model_copy(update={"epochs": args.finetune_epochs or 0.0})
    try:
        pruned = prune_and_evaluate(dense, policy, data, ft, seed=cfg.seed, device=device,
                                    progress=not args.quiet)
    except PolicyError as err:
        raise CLIError(f"policy {args.policy} does not fit model {cfg.model.name}: {err}") from None
    dense_acc = evaluate(dense.to(device), data.loader("val"), device).accuracy
    val = pruned.scores["val"]
    before, after = pruned.dense_cost, pruned.cost
    # Timed in turn, in bursts, by the config's latency backend (eager: on the evaluation
    # device): a speedup free of the machine's drift.
    dense_ms, pruned_ms = measured_models_ms([dense.eval(), pruned.model],
                                             data.example_input(1), device=timing,
                                             repeats=args.latency_repeats,
                                             backend=cfg.latency.backend,
                                             threads=cfg.latency.threads)
    result = {
        "model": cfg.model.name, "policy": str(args.policy),
        "finetune_epochs": args.finetune_epochs or 0,
        "before": before.to_dict(), "after": after.to_dict(),
        "flops_ratio": after.effective_flops / before.flops,
        "params_ratio": after.effective_params / before.params,
        "dense_val_accuracy": dense_acc, "val_accuracy": val.accuracy, "val_loss": val.loss,
        "dense_latency_ms": dense_ms, "latency_ms": pruned_ms,
        "speedup": speedup(dense_ms, pruned_ms), "latency_backend": cfg.latency.backend,
        "latency_device": latency_clock(cfg.latency.backend, timing, cfg.latency.threads),
    }
    if args.out:
        # Weights, policy and model name, no pickled objects: `load_pruned` rebuilds the
        # model and reads the file with torch.load(weights_only=True).
        from prunetune.trainers.pruned_file import save_pruned

        save_pruned(args.out, pruned.model, policy, model_name=cfg.model.name,
                    num_classes=data.num_classes, in_channels=data.in_channels,
                    input_shape=tuple(example.shape[1:]), kwargs=cfg.model.kwargs,
                    result=result)
        result["out"] = str(args.out)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'':16s}{'dense':>14s}{'pruned':>14s}{'ratio':>8s}")
    for label, b, a in (("FLOPs (MACs)", before.flops, after.effective_flops),
                        ("params", before.params, after.effective_params)):
        print(f"{label:16s}{b:14,.0f}{a:14,.0f}{a / b:8.3f}")
    print(f"{'sparsity':16s}{before.sparsity:14.3f}{after.sparsity:14.3f}")
    print(f"{'val accuracy':16s}{dense_acc:14.4f}{val.accuracy:14.4f}")
    print(f"{'latency (ms)':16s}{dense_ms:14.3f}{pruned_ms:14.3f}{pruned_ms / dense_ms:8.3f}"
          f"   speedup {result['speedup']:.2f}x on {result['latency_device']}")
    if args.out:
        print(f"pruned model saved to {args.out}; load it with prunetune.trainers.pruned_file."
              "load_pruned(path) (state dict + policy, read with torch.load(weights_only=True))")
    return 0


def add_engine_commands(subparsers: Any) -> None:
    """Add `analyze`, `map` and `apply` to the `prunetune` sub-command parsers."""
    p = subparsers.add_parser("analyze", help="list the model's prunable units and groups")
    p.add_argument("config", help="YAML config (see examples/)")
    p.add_argument("--groups", help="override space.groups: an integer or 'auto'")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="target device of the rule-based scheme mapping")
    p.add_argument("--untrained", action="store_true",
                   help="analyse the freshly built model instead of the pretrained one (no "
                        "training; with --input-size, no dataset either)")
    p.add_argument("--input-size", type=input_size, metavar="C,H,W",
                   help="the input to analyse on, e.g. 3,224,224 (default: the dataset's)")
    p.add_argument("--num-classes", type=int, default=10,
                   help="classes of the --untrained --input-size model (default 10)")
    p.add_argument("--cache-dir", help="override cache_dir")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no pretraining progress output")
    p.set_defaults(func=cmd_analyze)

    p = subparsers.add_parser("map", help="measure which pruning scheme pays per unit on a "
                              "device (sensitivity scan) and print the measured mapping")
    p.add_argument("config", help="YAML config (see examples/); space.schemes are the candidates")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="the device whose latency decides (default cpu)")
    p.add_argument("--ratios", type=float, nargs="+",
                   help="pruning ratios each candidate is measured at (default 0.25 0.5 0.75)")
    p.add_argument("--out", help="JSON file (default: <workdir>/<name>-mapping.json)")
    p.add_argument("--rescan", action="store_true", help="measure again, ignoring the cache")
    p.add_argument("--backend", help="override latency.backend: what runs the timed layers "
                   "(eager, onnxruntime, tensorrt or package.module:attr)")
    p.add_argument("--cache-dir", help="override cache_dir")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_map)

    p = subparsers.add_parser("apply", help="prune the dense model with a policy file")
    p.add_argument("config", help="YAML config (see examples/)")
    p.add_argument("--policy", required=True, help="policy JSON (schema 1)")
    p.add_argument("--out", help="save the pruned model here (state dict + policy; load with "
                        "prunetune.trainers.pruned_file.load_pruned(path))")
    p.add_argument("--finetune-epochs", type=float, default=0.0,
                   help="fine-tune this many epochs with the config's finetune settings")
    p.add_argument("--device", help="evaluation / fine-tuning device (default: finetune.device)")
    p.add_argument("--latency-repeats", type=int, default=20,
                   help="timed runs per model for latency and speedup (default 20)")
    p.add_argument("--backend", help="override latency.backend: what runs the models when "
                   "they are timed (eager, onnxruntime, tensorrt or package.module:attr)")
    p.add_argument("--cache-dir", help="override cache_dir")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_apply)
