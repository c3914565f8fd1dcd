"""`benchmarks/end_to_end.py --smoke` and `benchmarks/proxy_correlation.py --smoke`: one
latency-budget cell (ResNet-20 on tiny Fashion-MNIST subsets, 4-trial searches) through every
method the end-to-end benchmark compares, then the proxy correlation over that cell's search.
Needs the `peers` extra (nvidia-modelopt, torchprofile, scipy)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("modelopt.torch.prune",
                    reason="the peers extra is not installed (pip install -e .[peers])")
pytest.importorskip("torchprofile", reason="FastNAS's FLOPs count needs torchprofile (peers extra)")
pytest.importorskip("scipy", reason="the peers extra is not installed (pip install -e .[peers])")

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CELL = "resnet56-latency60"


def _module(name: str):  # noqa: ANN202 - a benchmark script imported by name
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_every_method_lands_on_the_budget_is_fine_tuned_paired_and_timed(local_ray,
                                                                         tmp_path: Path) -> None:
    e2e = _module("end_to_end")
    work = tmp_path / "work"
    result = e2e.main(["--smoke", "--cells", CELL, "--work", str(work)])
    cell = result["cells"][CELL]
    assert set(cell["methods"]) == set(e2e.METHODS)
    for method, row in cell["methods"].items():
        # every policy at the budget: within 1% of it, never above (analytic latency share)
        share = row["shares"]["latency_share"]
        if method != "prunetune-flops":  # searched under the FLOPs budget instead
            assert 0.59 <= share <= 0.6 + 1e-6, (method, share)
        assert row["seeds"] == 2 and len(row["ms"]) == 2 and row["cost_cpu_min"] >= 0
    runs = cell["runs"]
    seeds = {m: [r["seed"] for r in rs] for m, rs in runs.items()}
    assert all(s == [0, 1] for s in seeds.values()), seeds
    verdict = cell["prunetune_vs_best_free"]
    assert verdict["against"] in e2e.FREE and verdict["verdict"] in ("win", "tie", "loss")
    assert cell["latency_vs_flops_budget"]["against"] == "prunetune-flops"
    speed = cell["prunetune_speedup_b1"]  # batch-1 speedups paired by timing round
    assert set(speed) == {m for m in cell["methods"] if m in (*e2e.FREE, "prunetune-flops")}
    assert all(v["rounds"] == 2 and v["verdict"] in ("win", "tie", "loss")
               for v in speed.values()), speed
    # resumable: a second run reuses every finished piece, and gives the same figures
    again = e2e.main(["--smoke", "--cells", CELL, "--work", str(work)])
    assert again["cells"][CELL]["runs"] == runs
    assert "prunetune - " in e2e.report(again)

    proxy = _module("proxy_correlation")
    out = proxy.main(["--smoke", "--cell", CELL, "--work", str(work)])
    assert out["scored"] == 4 and out["proxy_trials"] >= 4
    truth = [r["fine_tuned"] for r in out["rows"]]
    for score in proxy.SCORES:
        tau = out["all"][score]["kendall_tau"]
        constant = len({r[score] for r in out["rows"]}) == 1 or len(set(truth)) == 1
        assert math.isnan(tau) if constant else -1.0 <= tau <= 1.0, (score, tau)
    assert json.loads((work.with_name("work-smoke") / "proxy_correlation.json").read_text())[
        "scored"] == 4


def test_the_transformer_cells_search_the_vit_beside_the_free_methods(local_ray,
                                                                       tmp_path: Path) -> None:
    """`--transformer --smoke`: the small ViT of examples/e2e-vit.yaml (no BatchNorm, AdamW)
    through uniform, Torch-Pruning's global pruning and the default search; a method that
    cannot reach the budget is reported as such instead of ending the run."""
    e2e = _module("end_to_end")
    work = tmp_path / "work"
    result = e2e.main(["--transformer", "--smoke", "--cells", "vit-flops50", "--work", str(work)])
    cell = result["cells"]["vit-flops50"]
    assert set(cell["methods"]) | set(cell["unreachable"]) == {
        m for m in e2e.TRANSFORMER_METHODS if m != "prunetune-flops"}
    assert "uniform" in cell["methods"] and "prunetune" in cell["methods"]
    for method, row in cell["methods"].items():
        assert 0.49 <= row["shares"]["flops_share"] <= 0.5 + 1e-6, (method, row["shares"])
        assert row["seeds"] == 2
    for method, why in cell["unreachable"].items():
        assert "cannot meet budget" in why, (method, why)
    assert (work.with_name("work-smoke") / "transformer_end_to_end.json").is_file()
