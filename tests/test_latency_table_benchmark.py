"""`benchmarks/latency_table.py --smoke`: predicted vs measured latency on real policies."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "latency_table.py"


def test_latency_table_benchmark_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_latency_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "latency_table-smoke.json"
    module.main(["--smoke", "--out", str(out)])
    result = json.loads(out.read_text())
    (model,) = result["models"]
    assert model["model"] == "resnet20" and len(model["rows"]) == 2
    assert model["table_entries"] > 0 and model["median_based"]["n"] == 2
    for row in model["rows"]:
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0 and row["linear_ms"] > 0
