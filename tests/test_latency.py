"""Latency measurement, per-device serialisation, the latency table and predictions (CPU)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from prunetune.kernels import (
    BlockSparseConv2d,
    DeviceMeasurer,
    LatencyKey,
    LatencyPredictor,
    LatencyTable,
    bucket_density,
    build_layer,
    measure_interleaved,
    measure_latency,
    measured_models_ms,
    model_latency_ms,
    predict_latency,
    speedup,
)
from prunetune.kernels.service import LatencyService


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def block_pruned(net: nn.Module) -> nn.Module:
    """Keep one of the two 16-channel input groups of the second conv (as the engine would)."""
    pruned = tiny_net()
    pruned.load_state_dict(net.state_dict())
    conv = pruned[3]
    mask = torch.zeros_like(conv.weight)
    mask[:, :16] = 1.0
    with torch.no_grad():
        conv.weight.mul_(mask)
    conv.register_buffer("weight_mask", mask)
    conv.prune_block = (16, 144)
    return pruned


def sleepy(x: torch.Tensor) -> torch.Tensor:
    time.sleep(0.01)  # a "model" that takes a while, so unserialised runs would overlap
    return x


def assert_disjoint(intervals: list[tuple[float, float]]) -> None:
    ordered = sorted(intervals)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert start >= end, f"measurements overlapped: {ordered}"


def test_measure_latency_cpu_fields() -> None:
    m = measure_latency(nn.Linear(64, 64), torch.randn(8, 64), device="cpu", repeats=5, warmup=2)
    assert m.median_ms > 0 and m.p25_ms <= m.median_ms <= m.p75_ms
    assert m.repeats == 5 and "1 threads" in m.device and m.method.startswith("torch-timer")
    assert m.started_at <= m.ended_at
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), repeats=0)


def run_together(targets: list[Any]) -> None:
    """Start one thread per target, then wait for them all."""
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


def test_measurements_never_overlap_across_threads(tmp_path: Path) -> None:
    measurer = DeviceMeasurer("cpu", lock_dir=tmp_path)
    barrier = threading.Barrier(5)
    results = []

    def work() -> None:
        barrier.wait()
        for _ in range(2):
            with measurer.exclusive():  # nested use in one thread must not deadlock
                results.append(measurer.measure(sleepy, torch.zeros(1), repeats=2, warmup=1))

    def interleaved() -> None:  # holds the device for all its bursts
        barrier.wait()
        results.append(measurer.measure_interleaved(
            [(sleepy, torch.zeros(1)), (sleepy, torch.zeros(1))], repeats=2, warmup=1,
            bursts=3)[0])

    run_together([work] * 4 + [interleaved])
    assert len(results) == 9
    assert_disjoint([(r.started_at, r.ended_at) for r in results])


class Busy:
    """A callable that spins for `ms` of thread CPU time per call and logs its calls."""

    def __init__(self, label: str, ms: float, log: list[str]) -> None:
        self.label, self.ms, self.log = label, ms, log

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.label)
        end = time.thread_time() + self.ms / 1e3
        while time.thread_time() < end:
            pass
        return x


def test_measure_interleaved_takes_turns_in_bursts() -> None:
    log: list[str] = []
    x = torch.zeros(1)
    fast, slow = Busy("fast", 0.5, log), Busy("slow", 2.0, log)
    out = measure_interleaved([(fast, x), (slow, x)], repeats=3, warmup=1, bursts=4)
    assert [m.repeats for m in out] == [12, 12]  # bursts x repeats runs each
    assert 2.0 < out[1].median_ms / out[0].median_ms < 6.0  # results in the items' order
    assert all(m.min_ms <= m.p25_ms <= m.median_ms <= m.p75_ms for m in out)
    assert out[0].started_at == out[1].started_at and out[0].ended_at == out[1].ended_at
    # Calls come in runs, one per burst and item, alternating: fast, slow, fast, slow, ...
    runs = [label for label, _ in itertools.groupby(log)]
    assert runs == ["fast", "slow"] * 4
    with pytest.raises(ValueError, match="bursts"):
        measure_interleaved([(fast, x)], bursts=0)
    with pytest.raises(ValueError, match="device"):
        measure_interleaved([(fast, x)], device="meta")


def test_measurements_never_overlap_across_processes(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys, time, torch
        from prunetune.kernels import DeviceMeasurer
        def sleepy(x):
            time.sleep(0.01)
            return x
        m = DeviceMeasurer("cpu", lock_dir={str(tmp_path)!r})
        out = []
        for _ in range(3):
            r = m.measure(sleepy, torch.zeros(1), repeats=2, warmup=1)
            out.append([r.started_at, r.ended_at])
        print(json.dumps(out))
        print("ray imported:", "ray" in sys.modules)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    intervals = [tuple(iv) for out in outputs for iv in json.loads(out.splitlines()[0])]
    assert len(intervals) == 6
    assert_disjoint(intervals)
    # prunetune.kernels must not pull Ray in (the Ray actor is opt-in).
    assert all(out.splitlines()[1] == "ray imported: False" for out in outputs)


def test_key_bucketing_and_round_trip() -> None:
    assert bucket_density(0.01) == 0.05 and bucket_density(0.0) == 0.0
    assert bucket_density(0.33) == 0.35 and bucket_density(1.0) == 1.0
    key = LatencyKey("dev", "conv2d", (3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 8, 8), "bsr",
                     (16, 32), 0.42, torch.float16, 4)
    assert key.density == 0.4 and key.dtype == "float16"
    assert LatencyKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    with pytest.raises(ValueError, match="scheme"):
        LatencyKey("dev", "linear", (1, 1, 0, 1), scheme="sparse")
    with pytest.raises(ValueError, match="density"):
        bucket_density(1.5)


def test_table_save_merges_atomically(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    keys = [LatencyKey("dev", "linear", (i, 4, 0, 1)) for i in range(1, 41)]

    def writer(part: list[LatencyKey]) -> None:
        for k in part:  # one save per entry: many interleaved read-merge-replace cycles
            t = LatencyTable()
            t.put(k, 1.0)
            t.save(path)

    threads = [threading.Thread(target=writer, args=(keys[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    loaded = LatencyTable.load(path)
    assert len(loaded) == 40 and all(k in loaded for k in keys)
    assert not list(tmp_path.glob("*.tmp"))
    better = LatencyTable()
    better.put(keys[0], 2.0, repeats=10)
    assert loaded.merge(better).get(keys[0]) == 2.0  # more repeats wins
    assert LatencyTable.load(tmp_path / "missing.json").entries == {}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="latency table"):
        LatencyTable.load(tmp_path / "bad.json")


def test_build_layer_matches_key_density() -> None:
    key = LatencyKey("dev", "conv2d", (32, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 6, 6), "bsr",
                     (16, 16), 0.3, "float32", 2)
    layer, x = build_layer(key, backend="torch")
    assert isinstance(layer, BlockSparseConv2d) and bucket_density(layer.density) == 0.3
    assert layer(x).shape == (2, 48, 6, 6)


def test_predictor_caches_and_handles_pruned_models(tmp_path: Path) -> None:
    dense, x = tiny_net(), torch.randn(2, 3, 8, 8)
    table = LatencyTable()
    measurer = DeviceMeasurer("cpu", lock_dir=tmp_path)
    predictor = LatencyPredictor(dense, x, table, measurer=measurer, repeats=3, warmup=1)
    ops = sorted({k.op for k in table})
    assert ops == ["conv2d", "linear", "residual"]
    assert predictor.c1_ms_per_elem >= 0.0
    dense_pred = predictor.predict(dense)
    assert dense_pred.total_ms > 0 and set(dense_pred.per_layer) == {"0", "3", "7"}
    n_entries = len(table)
    again = LatencyPredictor(dense, x, table, measurer=measurer, repeats=3, warmup=1)
    assert len(table) == n_entries  # residual and layers came from the table
    assert (again.c0_ms, again.c1_ms_per_elem) == (predictor.c0_ms, predictor.c1_ms_per_elem)

    pruned = block_pruned(dense)
    pred = predictor.predict(pruned)
    bsr_keys = [k for k in table if k.scheme == "bsr"]
    assert pred.total_ms > 0 and len(bsr_keys) == 1 and bsr_keys[0].density == 0.5
    assert predictor.predict_policy(dense, "half", lambda m, p, e: block_pruned(m)) == \
        pytest.approx(pred.total_ms)
    assert predict_latency(pruned, x, table, dense_model=dense).total_ms == \
        pytest.approx(pred.total_ms)
    path = tmp_path / "t.json"
    table.save(path)
    assert len(LatencyTable.load(path)) == len(table)


def test_model_latency_ms_and_speedup() -> None:
    dense, x = tiny_net(), torch.randn(1, 3, 8, 8)
    measured = model_latency_ms(dense, x, device="cpu", repeats=3)
    predicted = model_latency_ms(block_pruned(dense), x, device="cpu", table=LatencyTable(),
                                 dense_model=dense)
    assert measured > 0 and predicted > 0
    # A model 16x wider in its hidden layer measures slower when timed in turn with the small.
    small = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()
    big = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 64)).eval()
    small_ms, big_ms = measured_models_ms([small, big], torch.randn(32, 64), repeats=8)
    assert 0 < small_ms < big_ms
    with pytest.raises(ValueError, match="repeats"):
        measured_models_ms([small], torch.randn(1, 64), repeats=0)
    assert speedup(2.0, 1.0) == 2.0
    with pytest.raises(ValueError, match="> 0"):
        speedup(1.0, 0.0)


def test_latency_service_without_ray(tmp_path: Path) -> None:
    service = LatencyService(str(tmp_path / "shared.json"), device="cpu", repeats=3)
    dense, x = tiny_net(), torch.randn(1, 3, 8, 8)
    assert service.predict_ms(block_pruned(dense), dense, x) > 0
    assert service.measure_ms(dense, x) > 0
    assert service.save() == len(service.entries()) > 0
    assert len(LatencyTable.load(tmp_path / "shared.json")) == service.save()


def test_latency_service_ray_actor(tmp_path: Path) -> None:
    """The named actor is shared (get_if_exists) and answers predictions and measurements."""
    ray = pytest.importorskip("ray")
    from prunetune.trainers.latency_actor import latency_service

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        path = str(tmp_path / "ray-table.json")
        first = latency_service(path, device="cpu", name="test-latency", repeats=3)
        second = latency_service(path, device="cpu", name="test-latency", repeats=3)
        assert first._actor_id == second._actor_id
        dense, x = tiny_net(), torch.randn(1, 3, 8, 8)
        assert ray.get(first.predict_ms.remote(block_pruned(dense), dense, x)) > 0
        assert ray.get(second.measure_ms.remote(dense, x)) > 0
        assert ray.get(first.save.remote()) == len(LatencyTable.load(path)) > 0
        ray.kill(first)
    finally:
        if started_here:
            ray.shutdown()
