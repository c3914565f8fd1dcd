"""`benchmarks/kernels.py --smoke`: the GPU benchmark's plumbing on CPU (Triton interpreter)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def load_benchmark() -> object:
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernels_benchmark_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "kernels-smoke.json"
    result = load_benchmark().main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"] and saved["smoke"] is True
    rows = saved["rows"]
    assert {r["kind"] for r in rows} == {"linear", "conv"}
    assert {r["block"] for r in rows} == {16, 32} and {r["sparsity"] for r in rows} == {0.5, 0.9}
    for r in rows:  # ours and the torch BSR stand-in both agree with the dense reference
        assert r["max_abs_err"] < 1e-3 and r["torch_bsr_max_abs_err"] < 1e-3
        assert r["dense_ms"] > 0 and r["bsr_ms"] > 0 and r["speedup_vs_dense"] > 0


def test_device_slug_and_resnet50_shapes() -> None:
    bench = load_benchmark()
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    convs = bench.resnet50_convs()
    assert all(c["ci"] >= 16 for c in convs) and len(convs) >= 15
    assert {"ci": 64, "co": 64, "k": 3, "stride": 1, "pad": 1, "h": 56, "w": 56} in convs
