"""`benchmarks/latency_table.py --smoke --backend onnxruntime`: the latency table's accuracy
measured through a runtime backend (issue 28), on real exports and ONNX Runtime sessions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "latency_table.py"


def test_latency_table_benchmark_runs_through_onnxruntime(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_latency_table_ort", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "latency_table-ort-smoke.json"
    module.main(["--smoke", "--backend", "onnxruntime", "--round-to", "8", "--out", str(out)])
    result = json.loads(out.read_text())
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
