"""`benchmarks/peers.py --smoke`: prunetune beside Optuna (through a real Ray Tune run) and
NVIDIA ModelOpt's FastNAS on ResNet-20 / digits, a killed-and-resumed Optuna run included.
Needs the `peers` extra (optuna, nvidia-modelopt, torchprofile)."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("optuna", reason="the peers extra is not installed (pip install -e .[peers])")
pytest.importorskip("modelopt.torch.prune",
                    reason="the peers extra is not installed (pip install -e .[peers])")
pytest.importorskip("torchprofile", reason="FastNAS's FLOPs count needs torchprofile (peers extra)")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    # Imported by its own name, as Ray's trial processes import it (pickled by reference).
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    module = importlib.import_module("peers")
    started = module.start_ray()  # one local Ray for both calls, shut down at the end
    yield module
    if started:
        import ray

        ray.shutdown()


@pytest.mark.slow  # minutes on 2 cores: `make test-slow` runs it
def test_peers_smoke_resumes_and_scores_every_tool_by_one_yardstick(bench: Any,
                                                                     tmp_path: Path) -> None:
    out, work = tmp_path / "peers.json", tmp_path / "work"
    args = ["--smoke", "--out", str(out), "--work", str(work),
            "--methods", "fastnas-div8,optuna-tpe,optuna-tpe-raw,optuna-tpe-fill,"
                         "optuna-gp-fill,optuna-cmaes-fill"]
    bench.main([*args, "--trials", "4"])
    # A longer run continues the checkpointed one: the pickled OptunaSearch held all 4 trials.
    res = bench.main([*args, "--trials", "6"])
    saved = json.loads(out.read_text())
    assert saved["summary"] == res["summary"]

    runs = {r["method"]: r for r in saved["runs"]}
    assert set(runs) == {"optuna-tpe", "optuna-tpe-raw", "optuna-tpe-fill", "optuna-gp-fill",
                         "optuna-cmaes-fill"}
    assert {m: r["config"]["sampler"].split("(")[0] for m, r in runs.items()} == {
        "optuna-tpe": "TPESampler", "optuna-tpe-raw": "TPESampler",
        "optuna-tpe-fill": "TPESampler", "optuna-gp-fill": "GPSampler",
        "optuna-cmaes-fill": "CmaEsSampler"}
    for run in runs.values():
        assert run["seed"] == 0 and len(run["rewards"]) == 6 and run["resumed_at"] == [4]
        assert run["optuna_trials_in_study"] == 6
        # every trial of a Tune run in one reused process, which built the objective once
        assert run["objective_builds"] == 1 and len(set(run["trial_pid"][4:])) == 1
    keep = saved["objective"]["budget"]["keep"]
    tpe = runs["optuna-tpe"]  # prunetune's space: the decode projects onto the budget
    assert all(r is not None for r in tpe["rewards"]) and max(tpe["flops_ratio"]) <= keep + 1e-9
    # with `space.budget.fill` every decoded point lies on the budget, without it not
    for method in ("optuna-tpe-fill", "optuna-gp-fill", "optuna-cmaes-fill"):
        assert min(runs[method]["flops_ratio"]) > keep - 0.05, method
    assert min(tpe["flops_ratio"]) < keep - 0.05
    raw = runs["optuna-tpe-raw"]  # raw ratios: over the budget is no result, and penalised
    for reward, acc, flops, score in zip(raw["rewards"], raw["accuracy"], raw["flops_ratio"],
                                         raw["score"], strict=True):
        assert (reward is None) == (flops > keep + 1e-9)
        assert score == pytest.approx(acc - bench.PENALTY * max(0.0, flops - keep))

    (fastnas,) = saved["fastnas"]
    assert fastnas["status"] == "ok", fastnas.get("error")
    assert fastnas["score_calls"] == len(fastnas["calls"]) >= 2
    assert 0.0 < fastnas["accuracy"] <= 1.0 and fastnas["flops_ratio"] < keep + 0.02
    # FastNAS met the constraint by its own count; its default channel divisor cannot
    assert (fastnas["modelopt_best"]["constraints"]["flops"]
            <= keep * fastnas["modelopt_dense_flops"] + 1)
    assert fastnas["space_by_divisor"]["32"]["budget_reachable"] is False

    summary = saved["summary"]
    assert {"bo-default", "random"} <= set(summary["methods"])
    source = saved["prunetune"]["source"]
    assert "search_efficiency" in source and saved["prunetune"]["runs"]
    assert all(r["source"] == source for r in saved["prunetune"]["runs"])
    # bo as `prunetune search` runs it: the free baselines are its first trials, verbatim
    ours = {r["method"]: r for r in json.loads(Path(source).read_text())["runs"]}
    assert ours["bo-default-start"]["start_trials"] == {"uniform": 0, "tp-magnitude": 1,
                                                        "tp-bn-scale": 2}
    assert "start_trials" not in ours["bo-default"]
    assert ours["bo-default-start"]["config"]["start_from"] == ["uniform", "tp-magnitude",
                                                               "tp-bn-scale"]
    assert summary["methods"]["bo-default"]["budget_violations"] == 0
    assert summary["methods"]["optuna-tpe-raw"]["budget_violations"] == sum(
        r is None for r in raw["rewards"])
    assert summary["methods"]["fastnas-div8"]["evaluations"] == fastnas["score_calls"]
    assert set(summary["targets"]) == {"fastnas-div8", *runs}
    assert out.with_suffix(".png").stat().st_size > 0
