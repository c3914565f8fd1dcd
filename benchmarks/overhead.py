"""Orchestration overhead and concurrency scaling of a search.

    python benchmarks/overhead.py [--trivial-trials 40] [--real-trials 16] [--proxy-trials 100]
    python benchmarks/overhead.py --proxy-only      # only the proxy-trial throughput

1. Overhead per trial: a search of trivial trials (they report a final result at once)
   through the full stack (Ray Tune, the RandomSearcher over a real PruningSpace, the MLflow
   tracker on sqlite): wall time / trials.
2. Trials per hour of real prune-finetune trials (the demo's: ResNet-20 on a 12k Fashion-MNIST
   subset, one fine-tuning epoch) with 1 vs 2 concurrent trials on this machine (1 CPU and 1
   thread per trial).
3. The hardware ceiling: the same training arithmetic in 1 process, then 2 at once, without
   Ray or MLflow: what scaling this machine allows at all (shared-host VMs often lose
   10-20% per core when both are busy).
4. Proxy trials per hour (the demo's model and data, `finetune.epochs: 0`: accuracy after
   BatchNorm calibration, no fine-tuning) through `run_search`, 2 at a time, against the same
   policies evaluated by the same trial function in 2 plain processes: what the orchestration
   costs a search of cheap trials.

Writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray  # noqa: E402
import yaml  # noqa: E402
from _machine import machine_info, write_result  # noqa: E402
from ray import tune  # noqa: E402

from prunetune.orchestrator.config import load_config  # noqa: E402
from prunetune.orchestrator.driver import build_space, run_search  # noqa: E402
from prunetune.orchestrator.searchers import make_searcher  # noqa: E402
from prunetune.orchestrator.tracking import MLflowTracker  # noqa: E402
from prunetune.trainers import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def trivial_trial(config: dict) -> None:
    tune.report({"accuracy": 0.5, "latency_ms": 1.0, "flops_ratio": 0.5, "speedup": 2.0,
                 "policy": config["policy"], "final": True})


def overhead_per_trial(n: int, workdir: Path) -> dict:
    import torch

    cfg = load_config(None, {"workdir": str(workdir), "name": "overhead"})
    model = build_model("resnet20", num_classes=10, in_channels=1)
    space = build_space(cfg, model, torch.zeros(1, 1, 28, 28))
    searcher = make_searcher("random", space=space, metric="accuracy", mode="max", seed=0)
    tracker = MLflowTracker(tracking_uri=cfg.tracking_uri(), experiment="overhead",
                            search_name="overhead", config={}, space_description={},
                            dense_metrics={}, artifact_root=(workdir / "art").as_uri())
    tuner = tune.Tuner(
        tune.with_resources(trivial_trial, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n, max_concurrent_trials=2,
                                    metric="accuracy", mode="max", reuse_actors=True),
        run_config=tune.RunConfig(name="overhead", storage_path=str(workdir / "ray"),
                                  callbacks=[tracker], verbose=0))
    t0 = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - t0
    return {"trials": n, "wall_s": wall, "overhead_s_per_trial": wall / n,
            "max_concurrent": 2}


def real_throughput(n: int, concurrent: int, workdir: Path) -> dict:
    raw = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    raw.update(name=f"throughput-{concurrent}", workdir=str(workdir))
    raw["search"].update(searcher="random", trials=n, max_concurrent=concurrent,
                         cpus_per_trial=1, trial_threads=1, finalists={"count": 0})
    raw["finetune"] = {"epochs": 1, "lr": 0.01}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"c{concurrent}.yaml"
    path.write_text(yaml.safe_dump(raw))
    # Warm-up: the dense model gets cached and imports are paid before the timed search.
    run_search(load_config(path, {"search.trials": 2}), progress=False)
    cfg = load_config(path, {"name": f"throughput-{concurrent}-timed"})
    t0 = time.perf_counter()
    summary = run_search(cfg, progress=False)
    wall = time.perf_counter() - t0
    return {"trials": summary.trials_finished, "max_concurrent": concurrent, "wall_s": wall,
            "trials_per_hour": 3600 * summary.trials_finished / wall}


def _proxy_config(n: int, concurrent: int, workdir: Path) -> Path:
    """The demo's model and data as a one-stage search of `n` random proxy trials (no
    fine-tuning: accuracy after BatchNorm calibration), `concurrent` at a time, one CPU and
    one thread each."""
    raw = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    raw.update(name="proxy-throughput", workdir=str(workdir))
    raw["search"].update(searcher="random", trials=n, max_concurrent=concurrent,
                         cpus_per_trial=1, trial_threads=1, finalists={"count": 0})
    raw["finetune"] = {"epochs": 0}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _evaluate_share(setup: Any, policies: list[str], start: Any, out: Any) -> None:
    """One process of the plain loop: the trial function's own evaluation of each policy."""
    import torch

    from prunetune.trainers import evaluate_policy

    torch.set_num_threads(1)
    start.wait()
    for i, policy in enumerate(policies):
        evaluate_policy(policy, setup, seed=i)
    out.put(time.perf_counter())


def _plain_loop(cfg: Any, policies: list[str], concurrent: int) -> float:
    """Wall time of evaluating `policies` in `concurrent` plain processes (no Ray, no MLflow,
    no searcher), each building its dense model and data once, as a reused trial actor does."""
    import multiprocessing as mp

    from prunetune.trainers import TrialSetup, evaluate, load_data, pretrain_dense

    dense = pretrain_dense(cfg.model, cfg.data, cfg.pretrain, cache_dir=cfg.cache_dir)
    setup = TrialSetup(dense_checkpoint=dense.checkpoint, data=cfg.data, finetune=cfg.finetune,
                       dense_val_accuracy=evaluate(dense.model,
                                                   load_data(cfg.data).loader("val")).accuracy,
                       seed=cfg.seed, threads=1, latency_repeats=cfg.search.latency_repeats)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    shares = [policies[i::concurrent] for i in range(concurrent)]
    procs = [ctx.Process(target=_evaluate_share, args=(setup, share, start, out))
             for share in shares]
    for p in procs:
        p.start()
    time.sleep(5)  # every process has imported torch and prunetune
    t0 = time.perf_counter()
    start.set()
    ends = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(ends) - t0


def proxy_throughput(n: int, concurrent: int, workdir: Path) -> dict:
    """Proxy trials per hour through `prunetune search` (`run_search`: Ray Tune, the searcher,
    the MLflow tracker, the trial function) against the same policies evaluated by the same
    trial function in a plain in-process loop at the same concurrency."""
    from mlflow.tracking import MlflowClient

    from prunetune.orchestrator.results import find_search, search_trials

    path = _proxy_config(n, concurrent, workdir)
    # Warm-up: the dense model gets cached and imports are paid before the timed search.
    run_search(load_config(path, {"search.trials": 2, "name": "proxy-warm-up"}), progress=False)
    cfg = load_config(path)
    t0 = time.perf_counter()
    summary = run_search(cfg, progress=False)
    wall = time.perf_counter() - t0
    client = MlflowClient(cfg.tracking_uri())
    runs = search_trials(client, find_search(client, "prunetune", cfg.name))
    infos = [client.get_run(t.run_id).info for t in runs]
    # From the first trial's start to the last one's end: the search without its set-up.
    steady = (max(i.end_time for i in infos) - min(i.start_time for i in infos)) / 1000
    policies = [client.download_artifacts(t.run_id, "policy.json", str(workdir / t.name))
                for t in runs]
    loop = _plain_loop(cfg, [Path(p).read_text() for p in policies], concurrent)
    done = summary.trials_finished
    return {"trials": done, "max_concurrent": concurrent, "search_wall_s": wall,
            "search_trials_per_hour": 3600 * done / wall,
            "search_steady_s": steady, "search_steady_trials_per_hour": 3600 * done / steady,
            "loop_wall_s": loop, "loop_trials_per_hour": 3600 * len(policies) / loop,
            "ratio": (done / wall) / (len(policies) / loop),
            "ratio_steady": (done / steady) / (len(policies) / loop)}


def _train_steps(steps: int, start: Any, out: Any) -> None:
    """One process: `steps` SGD steps of ResNet-20 on 128 Fashion-MNIST-sized images, one
    thread: the arithmetic of a trial's fine-tuning, without Ray, MLflow or data loading."""
    import torch

    torch.set_num_threads(1)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    torch.nn.functional.cross_entropy(model(x), y).backward()  # warm-up
    start.wait()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    out.put(time.perf_counter() - t0)


def hardware_ceiling(steps: int) -> dict:
    """The scaling this machine allows at all: the same training arithmetic in 1 process,
    then in 2 processes at once (each on its own core, nothing else shared)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    times = {}
    for n in (1, 2):
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_train_steps, args=(steps, start, out)) for _ in range(n)]
        for p in procs:
            p.start()
        time.sleep(5)  # every process has built its model and warmed up
        start.set()
        times[n] = [out.get() for _ in procs]
        for p in procs:
            p.join()
    return {"steps": steps, "one_process_s": times[1][0], "two_processes_s": times[2],
            "scaling": 2 * times[1][0] / max(times[2])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trivial-trials", type=int, default=40)
    parser.add_argument("--real-trials", type=int, default=16)
    parser.add_argument("--ceiling-steps", type=int, default=300)
    parser.add_argument("--ceiling-only", action="store_true",
                        help="only (re)measure the hardware ceiling into overhead.json")
    parser.add_argument("--proxy-only", action="store_true",
                        help="only (re)measure proxy-trial throughput into overhead.json")
    parser.add_argument("--proxy-trials", type=int, default=100)
    args = parser.parse_args()
    if args.ceiling_only or args.proxy_only:
        import json

        result = json.loads((RESULTS / "overhead.json").read_text())
        if args.ceiling_only:
            result["hardware_ceiling"] = hardware_ceiling(args.ceiling_steps)
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            with tempfile.TemporaryDirectory() as tmp:
                result["proxy_throughput"] = proxy_throughput(args.proxy_trials, 2, Path(tmp))
            result["targets"]["proxy_throughput_ratio"] = 0.8
            result["proxy_machine"] = machine_info()
        write_result(RESULTS / "overhead.json", result)
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        overhead = overhead_per_trial(args.trivial_trials, work / "trivial")
        one = real_throughput(args.real_trials, 1, work / "real1")
        two = real_throughput(args.real_trials, 2, work / "real2")
        proxy = proxy_throughput(args.proxy_trials, 2, work / "proxy")
    result = {
        "overhead": overhead,
        "throughput": {"concurrent_1": one, "concurrent_2": two,
                       "scaling": two["trials_per_hour"] / one["trials_per_hour"]},
        "proxy_throughput": proxy,
        "hardware_ceiling": hardware_ceiling(args.ceiling_steps),
        "targets": {"overhead_s_per_trial": 0.5, "scaling": 1.8,
                    "proxy_throughput_ratio": 0.8},
        "machine": machine_info(),
    }
    write_result(RESULTS / "overhead.json", result)


if __name__ == "__main__":
    main()
