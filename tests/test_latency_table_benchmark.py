"""`benchmarks/latency_table.py --smoke`: predicted vs measured latency on real policies, in
eager PyTorch and through a runtime backend (ONNX Runtime: real exports and sessions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "latency_table.py"


def _run(out: Path, *args: str) -> dict[str, Any]:
    """The benchmark's `main` on `args` (plus `--smoke --out out`); its result file."""
    spec = importlib.util.spec_from_file_location("bench_latency_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--smoke", *args, "--out", str(out)])
    return json.loads(out.read_text())


def test_latency_table_benchmark_smoke(tmp_path: Path) -> None:
    result = _run(tmp_path / "latency_table-smoke.json")
    (model,) = result["models"]
    assert model["model"] == "resnet20" and len(model["rows"]) == 2
    assert model["table_entries"] > 0 and model["median_based"]["n"] == 2
    for row in model["rows"]:
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0 and row["linear_ms"] > 0


def test_latency_table_benchmark_runs_through_onnxruntime(tmp_path: Path) -> None:
    out = tmp_path / "latency_table-ort-smoke.json"
    result = _run(out, "--backend", "onnxruntime", "--round-to", "8")
    # Every entry and whole model was timed by ONNX Runtime, and the file names its clock.
    assert result["backend"] == "onnxruntime" and result["clock"].startswith("onnxruntime ")
    assert result["schemes"] == ["channel"] and result["round_to"] == 8
    (model,) = result["models"]
    assert model["call_overhead_ms"]["min"] > 0  # a runtime's per-call cost, taken off layers
    for row in model["rows"]:
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0
        assert row["gemm_out_elements"] < model["dense_gemm_out_elements"]
        assert row["convs_width_mult16_share"] >= 0
    # The per-model cache is gone once the result is written.
    assert not out.with_suffix(".partial.json").exists()
