"""Measuring latency, one measurement at a time per device.

`measure_latency` times a model or layer: on CUDA with events around each call, after a warm-up
and with the L2 cache flushed before every call; on CPU with `torch.utils.benchmark.Timer` at a
fixed thread count. Both report the median of the repeats. `measure_interleaved` times several
models in turn, in bursts spread over time: what a shared CPU needs to give steady numbers and
drift-free speedups.

`DeviceMeasurer` serialises measurements per device across threads *and* processes (Ray workers
included) with a file lock (`filelock`) on a per-device lock file, so two measurements never
overlap and concurrent trials do not add noise to each other's numbers.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from prunetune.errors import KernelError

__all__ = [
    "CLOCKS",
    "DEFAULT_CPU_THREADS",
    "DeviceMeasurer",
    "LatencyMeasurement",
    "default_measurer",
    "device_name",
    "measure_interleaved",
    "measure_latency",
    "resolve_clock",
    "torch_threads",
]

CLOCKS = ("auto", "wall", "thread")
# One thread by default on CPU: reproducible, and least disturbed by other jobs on the machine.
DEFAULT_CPU_THREADS = 1
# Each CPU timing block runs the callable often enough to last this long (timer resolution).
_CPU_BLOCK_S = 2e-3
# Bytes written to flush the GPU L2 cache before each timed call (larger than any L2 today).
_L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class LatencyMeasurement:
    """One measurement: the median, quartiles and minimum over `repeats` timed runs, in ms.

    The median is the default statistic; the minimum is the better estimate of the undisturbed
    time on a machine shared with other jobs (interference only ever adds time).

    `started_at` / `ended_at` are wall-clock (`time.time()`) bounds of the timed section, so
    callers can check that measurements on one device never overlapped.
    """

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    repeats: int
    device: str
    method: str
    started_at: float
    ended_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device | str, threads: int | None = None,
                clock: str = "auto") -> str:
    """A stable name for the latency table: the GPU's name, or the CPU's model, thread count
    and clock (entries timed differently are not mixed)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        threads = threads or DEFAULT_CPU_THREADS
        return f"{_cpu_model_name()} ({threads} threads, {resolve_clock(clock, threads)} clock)"
    return device.type


def _as_tuple(example_input: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)


def _prepare(model: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device,
             dtype: torch.dtype | None) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Model and inputs on `device` (and `dtype`), without moving the caller's model."""
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    same = first is None or (first.device == device and (dtype is None or first.dtype == dtype))
    if not same:
        model = copy.deepcopy(model).to(device=device, dtype=dtype)
    model.eval()
    moved = tuple(t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point()
                       else t.dtype) for t in inputs)
    return model, moved


def _quartiles(times_ms: list[float]) -> tuple[float, float, float]:
    if len(times_ms) < 2:
        return times_ms[0], times_ms[0], times_ms[0]
    q = statistics.quantiles(times_ms, n=4, method="inclusive")
    return statistics.median(times_ms), q[0], q[2]


def _time_cuda(fn: Callable[[], Any], device: torch.device, repeats: int,
               warmup: int) -> list[float]:
    with torch.cuda.device(device):
        for _ in range(warmup):
            fn()
        flush = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            flush.zero_()  # evict the previous call's data from L2: each run starts cold
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def resolve_clock(clock: str, threads: int) -> str:
    """'auto' -> 'thread' (CPU time of the calling thread) with one thread, else 'wall'."""
    if clock not in CLOCKS:
        raise KernelError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if clock == "thread" and threads != 1:
        raise KernelError(f"clock='thread' counts only the calling thread, so it needs threads=1, "
                          f"got threads={threads}; use clock='wall'")
    if clock == "auto":
        return "thread" if threads == 1 else "wall"
    return clock


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch's CPU ops on `threads` threads inside the block (None: as they are), then
    restore the count. With other jobs on the cores, extra threads wait on each other: a single
    forward pass can take 100x longer, a small GP fit or DDPG update 10-25x."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _time_cpu(fn: Callable[[], Any], repeats: int, warmup: int, threads: int,
              clock: str) -> list[float]:
    from torch.utils.benchmark import Timer

    with torch_threads(threads):  # warm-up at the measured thread count too
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            fn()
        per_call = (time.perf_counter() - start) / max(1, warmup)
    number = max(1, math.ceil(_CPU_BLOCK_S / max(per_call, 1e-9)))
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads,
                  timer=time.thread_time if clock == "thread" else time.perf_counter)
    return [timer.timeit(number).median * 1e3 for _ in range(repeats)]


def _caller(model_or_layer: nn.Module | Callable[..., Any],
            example_input: torch.Tensor | Sequence[torch.Tensor], device: torch.device,
            dtype: torch.dtype | None) -> Callable[[], Any]:
    """A no-argument callable running one inference-mode forward call on `device`."""
    inputs = _as_tuple(example_input)
    if isinstance(model_or_layer, nn.Module):
        model, inputs = _prepare(model_or_layer, inputs, device, dtype)
    else:
        model = model_or_layer
        inputs = tuple(t.to(device) for t in inputs)

    def call() -> Any:
        with torch.inference_mode():
            return model(*inputs)

    return call


def _sample(call: Callable[[], Any], device: torch.device, repeats: int, warmup: int,
            threads: int, clock: str) -> tuple[list[float], str]:
    """`repeats` timings of `call` in ms on a CUDA device or the CPU, and the method's name."""
    if device.type == "cuda":
        return _time_cuda(call, device, repeats, warmup), "cuda-events+l2-flush"
    clock = resolve_clock(clock, threads)
    return _time_cpu(call, repeats, warmup, threads, clock), f"torch-timer-{threads}t-{clock}"


def _summary(times: list[float], device: torch.device, threads: int, clock: str, method: str,
             started: float, ended: float) -> LatencyMeasurement:
    median, p25, p75 = _quartiles(times)
    return LatencyMeasurement(median_ms=median, p25_ms=p25, p75_ms=p75, min_ms=min(times),
                              repeats=len(times), device=device_name(device, threads, clock),
                              method=method, started_at=started, ended_at=ended)


def measure_latency(model_or_layer: nn.Module | Callable[..., Any],
                    example_input: torch.Tensor | Sequence[torch.Tensor], *,
                    device: torch.device | str = "cpu", repeats: int = 20, warmup: int = 5,
                    threads: int | None = None, dtype: torch.dtype | None = None,
                    clock: str = "auto") -> LatencyMeasurement:
    """Median latency of one forward call (inference mode), in milliseconds.

    `example_input`: a tensor or a sequence of tensors (the call's positional arguments).
    `repeats`: timed runs (CPU: timing blocks of >= 2 ms each, per-call time reported).
    `warmup`: untimed calls first. `threads`: CPU threads (default 1). `dtype`: cast the model
    and floating inputs (default: as given). The caller's model is not moved or modified.
    `clock` (CPU only): 'wall', or 'thread' = CPU time of the calling thread, which with one
    thread is the undisturbed latency even while other jobs compete for the cores (time spent
    waiting for a core is not counted); 'auto' picks 'thread' for one thread, else 'wall'.
    This does not lock the device; use `DeviceMeasurer.measure` to serialise.
    """
    return measure_interleaved([(model_or_layer, example_input)], device=device,
                               repeats=repeats, warmup=warmup, bursts=1, threads=threads,
                               dtype=dtype, clock=clock)[0]


def measure_interleaved(items: Sequence[tuple[nn.Module | Callable[..., Any],
                                              torch.Tensor | Sequence[torch.Tensor]]], *,
                        device: torch.device | str = "cpu", repeats: int = 21,
                        warmup: int = 3, bursts: int = 6, threads: int | None = None,
                        dtype: torch.dtype | None = None,
                        clock: str = "auto") -> list[LatencyMeasurement]:
    """Time several models in turn, `bursts` times round: burst b of every item, then burst
    b + 1. Returns one measurement per item (in order) over all its `bursts x repeats` runs.

    Why: a shared CPU's speed drifts over seconds. Runs taken back to back all see one moment
    of it, so 100 of them spread no less than 20 (benchmarks/README.md, "latency table");
    bursts spread over time do, and interleaving times the items under the same conditions,
    so their ratios (a speedup over the dense model) do not follow the drift either.
    `repeats` and `warmup` are per burst; the other arguments are as for `measure_latency`.
    """
    if repeats < 1 or warmup < 0 or bursts < 1:
        raise KernelError(f"repeats and bursts must be >= 1 and warmup >= 0, got "
                          f"repeats={repeats}, warmup={warmup}, bursts={bursts}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise KernelError(f"device must be 'cpu' or 'cuda[:i]', got {device}")
    threads = threads or DEFAULT_CPU_THREADS
    calls = [_caller(model, inputs, device, dtype) for model, inputs in items]
    times: list[list[float]] = [[] for _ in calls]
    started, method = time.time(), ""
    for _ in range(bursts):
        for call, sink in zip(calls, times, strict=True):
            sample, method = _sample(call, device, repeats, warmup, threads, clock)
            sink.extend(sample)
    ended = time.time()
    return [_summary(t, device, threads, clock, method, started, ended) for t in times]


# --------------------------------------------------------------------------------------------
# Serialising measurements per device


def _default_lock_dir() -> Path:
    return Path(os.environ.get("PRUNETUNE_LOCK_DIR")
                or Path(tempfile.gettempdir()) / "prunetune-locks")


# Per lock file, one pair shared by the process: a re-entrant lock for its threads, and the
# file lock for other processes. Only the thread holding the first touches the second, and a
# FileLock counts nested acquisitions, so nested use in one thread is fine.
_LOCKS: dict[str, tuple[threading.RLock, FileLock]] = {}
_REGISTRY_GUARD = threading.RLock()


class DeviceMeasurer:
    """Runs measurements on one device one at a time, across threads and processes.

    The lock is an exclusive `filelock.FileLock` on `<lock_dir>/<device>.lock` (default lock dir:
    `$PRUNETUNE_LOCK_DIR`, else `<tmp>/prunetune-locks`, shared by every process of a node,
    Ray workers included) plus a re-entrant in-process lock, so nested use in one thread is fine.
    """

    def __init__(self, device: torch.device | str = "cpu", *,
                 lock_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
                 clock: str = "auto") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.threads = threads or DEFAULT_CPU_THREADS
        self.clock = resolve_clock(clock, self.threads)
        self.lock_dir = Path(lock_dir) if lock_dir is not None else _default_lock_dir()
        tag = str(self.device).replace(":", "-")
        self.lock_path = self.lock_dir / f"{tag}.lock"
        with _REGISTRY_GUARD:
            self._rlock, self._file_lock = _LOCKS.setdefault(
                str(self.lock_path), (threading.RLock(), FileLock(self.lock_path,
                                                                  thread_local=False)))

    def __getstate__(self) -> dict[str, Any]:  # picklable for Ray: locks are rebuilt
        return {"device": str(self.device), "lock_dir": str(self.lock_dir),
                "threads": self.threads, "clock": self.clock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["device"], lock_dir=state["lock_dir"], threads=state["threads"],
                      clock=state["clock"])

    @property
    def name(self) -> str:
        return device_name(self.device, self.threads, self.clock)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the device: no other measurement on it (any thread, any process) meanwhile."""
        with self._rlock:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            with self._file_lock:
                yield

    def measure(self, model_or_layer: nn.Module | Callable[..., Any],
                example_input: torch.Tensor | Sequence[torch.Tensor], *, repeats: int = 20,
                warmup: int = 5, dtype: torch.dtype | None = None) -> LatencyMeasurement:
        """`measure_latency` on this device while holding it."""
        with self.exclusive():
            return measure_latency(model_or_layer, example_input, device=self.device,
                                   repeats=repeats, warmup=warmup, threads=self.threads,
                                   dtype=dtype, clock=self.clock)

    def measure_interleaved(self, items: Sequence[tuple[nn.Module | Callable[..., Any],
                                                        torch.Tensor | Sequence[torch.Tensor]]],
                            *, repeats: int = 21, warmup: int = 3, bursts: int = 6,
                            dtype: torch.dtype | None = None) -> list[LatencyMeasurement]:
        """`measure_interleaved` on this device, holding it for all the bursts (so one
        measurement's interval never overlaps another's)."""
        with self.exclusive():
            return measure_interleaved(items, device=self.device, repeats=repeats,
                                       warmup=warmup, bursts=bursts, threads=self.threads,
                                       dtype=dtype, clock=self.clock)


_MEASURERS: dict[tuple[str, int], DeviceMeasurer] = {}


def default_measurer(device: torch.device | str = "cpu", threads: int | None = None,
                     ) -> DeviceMeasurer:
    """The process-wide measurer for a device (default lock directory)."""
    key = (str(torch.device(device)), threads or DEFAULT_CPU_THREADS)
    with _REGISTRY_GUARD:
        if key not in _MEASURERS:
            _MEASURERS[key] = DeviceMeasurer(device, threads=threads)
        return _MEASURERS[key]
