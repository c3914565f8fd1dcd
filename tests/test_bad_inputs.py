"""Bad inputs through the real command line (a subprocess per case, `benchmarks/bad_inputs.py`
holds the cases): each ends with exit 2, exactly one line `prunetune COMMAND: error: ...` on
stderr naming the field or file, nothing left behind, and a config error without importing
torch. The times are the benchmark's to report (benchmarks/README.md), never asserted here."""

from __future__ import annotations

import ast
import importlib.util
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "benchmarks" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = bad_inputs
_spec.loader.exec_module(bad_inputs)  # type: ignore[union-attr]
CASES = {case.name: case for case in bad_inputs.CASES}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("bad-inputs")
    marks = bad_inputs.prepare(base)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        marks["{BUSY}"] = str(busy.getsockname()[1])
        yield base, marks


def test_there_are_at_least_30_cases() -> None:
    assert len(CASES) >= 30


# Config errors (a fraction of a second each) run in every suite; the inputs whose check needs
# torch (seconds each) with the slow drills.
@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if case.imports_torch
                                               else []) for name, case in CASES.items()])
def test_a_bad_input_is_one_line_exit_2_and_leaves_nothing(bench, name: str) -> None:
    base, marks = bench
    case = CASES[name]
    r = bad_inputs.run_case(case, base, marks)
    assert r["exit"] == 2, r
    assert r["one_line"], r["stderr"]
    assert r["names_it"], (case.expect, r["stderr"])
    assert r["left_behind"] == [], r["left_behind"]
    if not case.imports_torch:  # a config error is told before torch (seconds) is imported
        assert not r["torch_imported"], r


def _probe(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    probe = ("import runpy, sys; sys.argv = ['prunetune', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('prunetune.orchestrator.cli', run_name='__main__')\n"
             "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    return subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_help_and_results_do_not_import_torch(bench) -> None:
    base, _ = bench
    env = bad_inputs.case_env(base)
    helped = _probe(["--help"], base, env)
    assert helped.returncode == 0 and helped.stdout.strip().endswith("NO-TORCH")
    shown = _probe(["results", "fake", "--workdir", str(base / "store")], base, env)
    assert shown.returncode == 0, shown.stderr
    assert "trial-000" in shown.stdout and shown.stdout.strip().endswith("NO-TORCH")


def _lines_until(proc: subprocess.Popen, marker: str, timeout_s: float) -> list[str]:
    """stdout lines of `proc` up to the one holding `marker` (a `|` separates alternatives),
    or all of them at the timeout or the end. A reader thread, not select() on the pipe: a
    buffered readline can hold the next lines where select() no longer sees them."""
    found: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            found.put(line)
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = found.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        lines.append(line)
        if any(m in line for m in marker.split("|")):
            break
    return lines


def test_ui_prints_its_address_only_once_it_answers(bench) -> None:
    base, _ = bench
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "prunetune.orchestrator.cli", "ui",
                             "--workdir", str(base / "store"), "--port", str(port)],
                            cwd=base, env=bad_inputs.case_env(base), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        lines = _lines_until(proc, "MLflow UI for", 240)
        assert lines and "MLflow UI for" in lines[-1], lines
        # the address printed answers at once
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            assert answer.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_pretraining_says_what_it_trains_before_it_ends(tmp_path: Path) -> None:
    """stdout a pipe (a log file, a job's output): the plan and the data are shown as the
    pretraining starts, not when it ends minutes later."""
    cfg = tmp_path / "long.yaml"
    cfg.write_text("model: {name: resnet20}\ndata: {name: digits}\npretrain: {epochs: 500}\n")
    env = {**os.environ, "PRUNETUNE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "prunetune.orchestrator.cli", "pretrain",
                             str(cfg)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        lines = _lines_until(proc, "a line per epoch follows|epoch 1/", 120)
        assert proc.poll() is None  # still training: the lines came as it started
    finally:
        proc.kill()
        proc.wait(timeout=60)
    text = "".join(lines)
    # shown before the first epoch ends (not held in a buffer until its line flushes them)
    assert "epoch 1/" not in text, text
    assert "training resnet20 on digits for 500.0 epochs" in text, text
    assert "1294 train / 144 val / 359 test images" in text, text


# ---- plain built-in raises: only internal invariants may stay --------------------------------

PACKAGES = ("search_spaces", "kernels", "trainers", "orchestrator", "prunetune")
# (file, function) -> why a plain built-in error fits: it guards an invariant of prunetune's
# own code, which no config, file or command line can break.
INTERNAL_RAISES = {
    ("prunetune/files.py", "atomic_writer"): "mode is one of two literals in prunetune's calls",
    ("search_spaces/channel.py", "prune_channels"): "Torch-Pruning disagreeing with our graph",
    ("trainers/data.py", "__init__"): "TensorImageDataset built by the loaders only",
    ("orchestrator/driver.py", "_check_tune_state"): "caught at once, told as a SearchError",
}


def _plain_raises() -> list[tuple[str, str, int]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text())
            for func in ast.walk(tree):
                if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(func):
                    exc = node.exc if isinstance(node, ast.Raise) else None
                    name = getattr(getattr(exc, "func", None), "id", None)
                    if name in {"ValueError", "RuntimeError", "TypeError"}:
                        found.append((rel, func.name, node.lineno))
    return found


def test_user_caused_errors_are_prunetune_errors() -> None:
    """Every plain ValueError / RuntimeError / TypeError left is an allowed internal one; a
    condition a user can cause raises a `prunetune.errors` subclass (which keeps its built-in
    base), so the CLI tells it in one line."""
    unexpected = sorted({(f, fn, line) for f, fn, line in _plain_raises()
                         if (f, fn) not in INTERNAL_RAISES})
    assert unexpected == [], ("raise a prunetune.errors subclass (or allow-list an internal "
                              f"invariant in INTERNAL_RAISES): {unexpected}")
