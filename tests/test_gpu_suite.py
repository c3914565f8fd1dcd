"""`benchmarks/gpu_suite.sh --smoke`: the GPU suite's code paths on CPU (Triton interpreter,
tiny shapes), with prunetune taken from the source tree as on the bare GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bare_python(tmp_path: Path) -> dict[str, str]:
    """An environment whose python sees this venv's packages but not its installed prunetune
    (no site processing: the editable install's .pth hook is not run), like the GPU image."""
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    packages = [p for p in sys.path if p.endswith("site-packages")]
    return {**os.environ, "PYTHON": str(wrapper), "PYTHONPATH": os.pathsep.join(packages)}


@pytest.mark.slow  # minutes on 2 cores: `make test-slow` runs it
def test_gpu_suite_smoke_writes_every_result_and_a_summary(tmp_path: Path) -> None:
    env = _bare_python(tmp_path)
    if subprocess.run([env["PYTHON"], "-c", "import prunetune"], env=env,
                      cwd=tmp_path).returncode == 0:
        raise AssertionError("the bare python still imports an installed prunetune")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--smoke",
                           "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kernels = json.loads((tmp_path / "out" / "kernels-cpu-smoke.json").read_text())
    assert kernels["smoke"] and kernels["summary"]["max_abs_err"] < 1e-3
    semi = json.loads((tmp_path / "out" / "semi_structured-cpu-smoke.json").read_text())
    assert semi["summary"]["shapes"] == 1 and semi["rows"][0]["dense_ms"] > 0
    table = json.loads((tmp_path / "out" / "latency_table-cpu-smoke.json").read_text())
    assert table["overall"]["median_based"]["n"] == 2
    mapping = json.loads((tmp_path / "out" / "scheme_mapping-cpu-smoke-resnet20.json").read_text())
    assert mapping["choice"] and all(r["unit"] in mapping["choice"] for r in mapping["rows"])
    backends = json.loads((tmp_path / "out" / "latency_backends-cpu-smoke.json").read_text())
    assert "refused" in backends["models"]["resnet20"]["tensorrt"]  # no CUDA here: told why
    for name in ("eager", "onnxruntime"):
        assert backends["models"]["resnet20"][name]["batches"]["1"]["speedup"]["uniform-x8"] > 0
    assert "latency backends (speedup over dense per batch)" in proc.stdout
    assert "GPU suite summary (cpu-smoke)" in proc.stdout
    assert "measured mapping resnet20" in proc.stdout
    # The package came from this source tree, not from the installed copy.
    assert "prunetune from the source tree: " in proc.stdout
    assert proc.stdout.split("prunetune from the source tree: ")[1].split()[0].endswith(
        "/src/prunetune")
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--fast"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr
