"""Bad inputs through the real `prunetune` command line: each must end in seconds with exit 2,
one line `prunetune COMMAND: error: ...` on stderr naming the field or file, and nothing left
behind (no file or folder created where it ran, no cache, no store).

    python benchmarks/bad_inputs.py [--cases NAME ...] [--table]

Writes benchmarks/results/bad_inputs.json: per case, the command, exit code, the error line,
whether each promise held, and its wall time; `--table` prints the markdown table of
benchmarks/README.md. tests/test_bad_inputs.py runs the same cases (`CASES`, `prepare`,
`run_case`) and asserts the promises, never the times.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bad_inputs.json"
CLI = [sys.executable, "-m", "prunetune.orchestrator.cli"]

GOOD = "model: {name: resnet20}\ndata: {name: digits, train_subset: 64}\npretrain: {epochs: 0.1}\n"


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # after `prunetune`; {R} is the case folder, {RO} a read-only folder
    expect: tuple[str, ...]  # what the error line must name (the field or file, the fix)
    imports_torch: bool = False  # a config error must not: only what needs torch may


# Files every case may use, written by `prepare` (name -> text, or a builder below).
FILES: dict[str, str] = {
    "good.yaml": GOOD,
    "bad_yaml.yaml": "model: {name: resnet20\ndata: [\n",
    "tabs.yaml": "model:\n  name: resnet20\n\tdata: {name: digits}\n",
    "list.yaml": "- model\n- data\n",
    "unknown_top.yaml": GOOD + "nmae: typo\n",
    "unknown_nested.yaml": "model: {name: resnet20}\ndata: {nme: digits}\n",
    "bad_trials.yaml": GOOD + "search: {trials: 0}\n",
    "bad_scheduler.yaml": GOOD + "search: {scheduler: {kind: hyperband}}\n",
    "bad_bounds.yaml": GOOD + "space: {ratio_bounds: [0.5, 0.2]}\n",
    "bad_keep.yaml": GOOD + "space: {budget: {keep: 1.5}}\n",
    "bad_lr.yaml": "model: {name: resnet20}\ndata: {name: digits}\npretrain: {lr: -1}\n",
    "bad_dataset.yaml": "model: {name: resnet20}\ndata: {name: mnist}\n",
    "bad_scheme.yaml": GOOD + "space: {schemes: [channels]}\n",
    "bad_section.yaml": GOOD + "ray: 4\n",
    "ro_workdir.yaml": GOOD + "workdir: {RO}/runs\n",
    "file_workdir.yaml": GOOD + "workdir: {R}/good.yaml/runs\n",
    "ro_cache.yaml": GOOD + "cache_dir: {RO}/cache\n",
    "cuda_search.yaml": GOOD + "finetune: {device: cuda}\n",
    "cuda_pretrain.yaml": GOOD.replace("{epochs: 0.1}", "{epochs: 0.1, device: cuda}"),
    "fmnist_root.yaml": "model: {name: resnet20}\ndata: {name: fashion-mnist, root: {R}/fmnst}\n"
                        "pretrain: {epochs: 0.1}\n",
    "imagefolder_root.yaml": "model: {name: resnet20}\ndata: {name: imagefolder, root: {R}/nope}\n",
    "no_checkpoint.yaml": "model: {name: resnet20, checkpoint: {R}/missing.pt}\n"
                          "data: {name: digits}\n",
    "junk_checkpoint.yaml": "model: {name: resnet20, checkpoint: {R}/junk.pt}\n"
                            "data: {name: digits}\n",
    "gray_on_rgb.yaml": "model: {name: resnet20, checkpoint: {R}/gray.pt}\n"
                        "data: {name: imagefolder, root: {R}/rgb, image_size: 8}\n",
    "factory.yaml": "model: {name: 'grayonly:build'}\n"
                    "data: {name: imagefolder, root: {R}/rgb, image_size: 8}\n"
                    "pretrain: {epochs: 0.1}\n",
    "unknown_model.yaml": "model: {name: resnet21}\ndata: {name: digits}\n",
    "bad_factory.yaml": "model: {name: 'nosuchpkg.models:build'}\ndata: {name: digits}\n",
    "policy_not_json.json": "{not json",
    "junk.pt": "this is not a checkpoint",
    "pkgs/grayonly.py": (
        "from prunetune.trainers import build_model\n\n\n"
        "def build(num_classes=10, in_channels=3):\n"
        "    return build_model('resnet20', num_classes=num_classes, in_channels=1)\n"),
}

_SEARCH = ("search",)
CASES: list[Case] = [
    # the config file itself (no torch, no MLflow)
    Case("config file missing", (*_SEARCH, "nothere.yaml"), ("nothere.yaml", "does not exist")),
    Case("config not YAML", (*_SEARCH, "bad_yaml.yaml"), ("bad_yaml.yaml", "line 2")),
    Case("config with a tab", ("pretrain", "tabs.yaml"), ("tabs.yaml", "line 3")),
    Case("config a list", (*_SEARCH, "list.yaml"), ("list.yaml", "mapping")),
    Case("unknown top-level field", (*_SEARCH, "unknown_top.yaml"), ("nmae", "unknown field")),
    Case("unknown nested field", ("pretrain", "unknown_nested.yaml"), ("data.nme",)),
    Case("search.trials 0", (*_SEARCH, "bad_trials.yaml"), ("search.trials",)),
    Case("--trials 0", (*_SEARCH, "good.yaml", "--trials", "0"), ("search.trials",)),
    Case("--max-concurrent 0", (*_SEARCH, "good.yaml", "--max-concurrent", "0"),
         ("search.max_concurrent",)),
    Case("unknown scheduler", (*_SEARCH, "bad_scheduler.yaml"), ("search.scheduler.kind",)),
    Case("ratio bounds reversed", (*_SEARCH, "bad_bounds.yaml"), ("space.ratio_bounds",)),
    Case("budget keep 1.5", (*_SEARCH, "bad_keep.yaml"), ("space.budget.keep",)),
    Case("negative learning rate", ("pretrain", "bad_lr.yaml"), ("pretrain.lr",)),
    Case("unknown dataset", ("pretrain", "bad_dataset.yaml"), ("data.name", "mnist")),
    Case("unknown scheme", ("analyze", "bad_scheme.yaml"), ("space.schemes",)),
    Case("section not a mapping", (*_SEARCH, "bad_section.yaml"), ("ray",)),
    # folders the command would write to
    Case("read-only workdir", (*_SEARCH, "ro_workdir.yaml"), ("workdir", "not writable")),
    Case("read-only --workdir (demo)", ("demo", "--workdir", "{RO}/demo"),
         ("workdir", "not writable")),
    Case("workdir under a file", (*_SEARCH, "file_workdir.yaml"), ("workdir", "is a file")),
    Case("read-only cache_dir", ("pretrain", "ro_cache.yaml"), ("cache_dir", "not writable"),
         imports_torch=True),
    # devices
    Case("finetune.device cuda without CUDA", (*_SEARCH, "cuda_search.yaml"),
         ("finetune.device", "cuda"), imports_torch=True),
    Case("pretrain.device cuda without CUDA", ("pretrain", "cuda_pretrain.yaml"),
         ("pretrain.device", "cuda"), imports_torch=True),
    Case("--device not a device", ("pretrain", "good.yaml", "--device", "gpu0"),
         ("pretrain.device", "gpu0"), imports_torch=True),
    # data, models, checkpoints
    Case("fashion-mnist data.root missing", ("pretrain", "fmnist_root.yaml"),
         ("data.root", "fmnst", "does not exist"), imports_torch=True),
    Case("imagefolder data.root missing", ("pretrain", "imagefolder_root.yaml"),
         ("data.root",), imports_torch=True),
    Case("model.checkpoint missing", ("pretrain", "no_checkpoint.yaml"),
         ("missing.pt", "does not exist"), imports_torch=True),
    Case("model.checkpoint not a checkpoint", ("pretrain", "junk_checkpoint.yaml"),
         ("junk.pt",), imports_torch=True),
    Case("1-channel checkpoint on RGB data", ("pretrain", "gray_on_rgb.yaml"),
         ("gray.pt", "1-channel", "3-channel"), imports_torch=True),
    Case("1-channel checkpoint on RGB data (search)", (*_SEARCH, "gray_on_rgb.yaml"),
         ("gray.pt", "1-channel", "3-channel"), imports_torch=True),
    Case("factory ignores in_channels", ("pretrain", "factory.yaml"),
         ("grayonly:build", "3x8x8", "in_channels"), imports_torch=True),
    Case("unknown model", ("pretrain", "unknown_model.yaml"), ("resnet21",), imports_torch=True),
    Case("factory module missing", ("pretrain", "bad_factory.yaml"), ("nosuchpkg.models",),
         imports_torch=True),
    # policies
    Case("apply: policy file missing", ("apply", "good.yaml", "--policy", "nope.json"),
         ("nope.json",), imports_torch=True),
    Case("apply: policy not JSON", ("apply", "good.yaml", "--policy", "policy_not_json.json"),
         ("policy_not_json.json",), imports_torch=True),
    Case("apply: bad config", ("apply", "unknown_nested.yaml", "--policy", "nope.json"),
         ("data.nme",)),
    Case("apply: --device cuda without CUDA", ("apply", "good.yaml", "--policy",
                                               "policy_not_json.json", "--device", "cuda"),
         ("--device", "cuda"), imports_torch=True),
    Case("map: --ratios out of range", ("map", "good.yaml", "--ratios", "1.5"), ("--ratios",)),
    # clusters and servers
    Case("submit: bad config", ("submit", "unknown_top.yaml", "--address", "http://127.0.0.1:9"),
         ("nmae", "unknown field")),
    Case("status: no cluster there", ("status", "abc", "--address", "http://127.0.0.1:9"),
         ("http://127.0.0.1:9",)),
    Case("server: port out of range", ("server", "--port", "70000", "--workdir", "{R}/srv"),
         ("--port", "70000")),
    # the tracking store, searches, trials
    Case("results: no store", ("results", "fake", "--workdir", "{R}/empty"),
         ("no MLflow store", "empty")),
    Case("results: unknown search", ("results", "nosuch", "--workdir", "{R}/store"),
         ("nosuch", "fake")),
    Case("results: --config missing", ("results", "fake", "--config", "nothere.yaml"),
         ("nothere.yaml",)),
    Case("promote: bad --select", ("promote", "fake", "--model-name", "m", "--select",
                                   "best accuracy please", "--workdir", "{R}/store"),
         ("--select",)),
    Case("promote: unknown --trial", ("promote", "fake", "--model-name", "m", "--trial",
                                      "trial-999", "--workdir", "{R}/store"), ("trial-999",),
         imports_torch=True),
    Case("ui: no store", ("ui", "--workdir", "{R}/empty"), ("no MLflow store",)),
    Case("ui: port out of range", ("ui", "--workdir", "{R}/store", "--port", "70000"),
         ("--port", "70000")),
    Case("ui: port in use", ("ui", "--workdir", "{R}/store", "--port", "{BUSY}"),
         ("port", "in use")),
]


def _write_fake_fashion_mnist(folder: Path, n: int = 16) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        for kind, tensor in (("images", torch.zeros(n, 28, 28, dtype=torch.uint8)),
                             ("labels", torch.arange(n, dtype=torch.uint8) % 10)):
            head = struct.pack(">HBB", 0, 8, tensor.ndim)
            head += struct.pack(">" + "I" * tensor.ndim, *tensor.shape)
            with gzip.open(folder / f"{split}-{kind}-idx{tensor.ndim}-ubyte.gz", "wb") as f:
                f.write(head + tensor.numpy().tobytes())


def _write_rgb_folder(folder: Path) -> None:
    from PIL import Image

    for c, colour in enumerate(((200, 0, 0), (0, 0, 200))):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), colour).save(folder / f"class{c}" / f"{i}.png")


def _write_fake_search(store: Path) -> None:
    """An MLflow store holding one finished search 'fake' with one finished trial."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.create_experiment("prunetune", artifact_location=str(store / "artifacts"))
    parent = client.create_run(exp, run_name="fake", tags={"prunetune.role": "search",
                                                           "prunetune.search": "fake"})
    child = client.create_run(exp, run_name="trial-000", tags={
        "mlflow.parentRunId": parent.info.run_id, "prunetune.role": "trial",
        "prunetune.search": "fake", "prunetune.trial_id": "abc_00000",
        "prunetune.status": "finished", "prunetune.stage": "proxy"})
    for key, value in (("accuracy", 0.5), ("speedup", 1.5), ("latency_ms", 1.0)):
        client.log_metric(child.info.run_id, key, value)
    client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)


def read_only_folder(base: Path) -> Path:
    """A folder nobody can write in: a chmod 555 one, or under /sys for root (root ignores
    permission bits, a read-only filesystem it does not)."""
    if os.geteuid() == 0:
        return Path("/sys/prunetune-read-only")
    folder = base / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def prepare(base: Path) -> dict[str, str]:
    """Write the cases' files under `base`; returns the placeholders ({R}, {RO}, {BUSY})."""
    from prunetune.trainers import build_model, save_checkpoint
    from prunetune.trainers.checkpoint import CHECKPOINT_FORMAT

    ro = read_only_folder(base)
    marks = {"{R}": str(base), "{RO}": str(ro)}
    for name, text in FILES.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for mark, value in marks.items():
            text = text.replace(mark, value)
        path.write_text(text)
    _write_fake_fashion_mnist(base / "fmnist")
    _write_rgb_folder(base / "rgb")
    save_checkpoint(base / "gray.pt", {
        "format": CHECKPOINT_FORMAT, "metrics": {},
        "model": {"name": "resnet20", "kwargs": {}, "num_classes": 2, "in_channels": 1},
        "state_dict": build_model("resnet20", num_classes=2, in_channels=1).state_dict()})
    (base / "store").mkdir()
    _write_fake_search(base / "store")
    return marks


def case_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PRUNETUNE_CACHE=str(base / "cache"), PRUNETUNE_DATA=str(base / "fmnist"),
               PYTHONPATH=str(base / "pkgs"), PYTHONWARNINGS="ignore")
    return env


def _tree(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in base.rglob("*")
            if not p.name.endswith(("-journal", "-wal", "-shm"))}


def run_case(case: Case, base: Path, marks: dict[str, str]) -> dict[str, object]:
    """Run one case from `base`; returns what happened (exit code, stderr lines, new files,
    whether torch was imported, wall time)."""
    argv = list(case.argv)
    for mark, value in marks.items():
        argv = [a.replace(mark, value) for a in argv]
    probe = ("import runpy, sys; sys.argv = ['prunetune', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('prunetune.orchestrator.cli', run_name='__main__')\n"
             "finally:\n"
             "    print('torch imported' if 'torch' in sys.modules else 'no torch', "
             "file=sys.__stdout__)\n")
    before = _tree(base)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe, *argv], cwd=base, env=case_env(base),
                          capture_output=True, text=True, timeout=300)
    wall_s = time.perf_counter() - t0
    left = sorted(_tree(base) - before)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    command = case.argv[0]
    return {"case": case.name, "command": "prunetune " + " ".join(case.argv),
            "exit": proc.returncode,
            "stderr": lines, "left_behind": left, "wall_s": round(wall_s, 2),
            "torch_imported": proc.stdout.strip().endswith("torch imported"),
            "one_line": len(lines) == 1 and lines[0].startswith(f"prunetune {command}: error: "),
            "names_it": all(e in (lines[0] if lines else "") for e in case.expect)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="run only these cases (by name)")
    parser.add_argument("--table", action="store_true", help="print the README table")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(OUT.read_text())))
        return
    import socket

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine_info, write_result

    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    base = Path(tempfile.mkdtemp(prefix="prunetune-bad-inputs-"))
    rows = []
    try:
        marks = prepare(base)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            marks["{BUSY}"] = str(busy.getsockname()[1])
            for case in cases:
                rows.append(run_case(case, base, marks))
                r = rows[-1]
                print(f"{r['wall_s']:6.2f}s exit {r['exit']} {case.name}: "
                      f"{r['stderr'][0] if r['stderr'] else '(nothing on stderr)'}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    held = [r for r in rows if r["exit"] == 2 and r["one_line"] and r["names_it"]
            and not r["left_behind"]]
    write_result(OUT, {"machine": machine_info(), "cases": rows, "held": len(held),
                       "total": len(rows)}, show={"held": len(held), "total": len(rows)})


def table(result: dict[str, object]) -> str:
    lines = ["| case | command | exit | one line, names it, nothing left | torch imported | "
             "wall s |", "|---|---|---|---|---|---|"]
    for r in result["cases"]:  # type: ignore[union-attr]
        ok = "yes" if r["one_line"] and r["names_it"] and not r["left_behind"] else "**no**"
        lines.append(f"| {r['case']} | `{r['command']}` | {r['exit']} | {ok} | "
                     f"{'yes' if r['torch_imported'] else 'no'} | {r['wall_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
