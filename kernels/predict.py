"""Predicted model latency from the latency table, and the numbers trials report.

A model is first put in its deployment form (`deploy`: masked layers that pay become
block-sparse modules). Its prediction is the sum of its GEMM layers' table entries (a missing
entry is measured on demand on a synthetic layer of the same key, and cached) plus a residual
for everything else: normalisation, activations, additions, pooling and call overhead.

The residual is measured once per dense model (and cached in the table):
- the *skeleton* of the dense model — the model with every GEMM layer replaced by a stand-in that
  returns a precomputed output — is timed at batch B and at a larger batch. That isolates the
  non-GEMM work directly (no difference of two large noisy numbers) and gives `c0 + c1 * A`,
  where `A` is the number of elements the GEMM layers output: channel pruning shrinks that
  element-wise work, while the per-op overhead `c0` stays;
- `delta` = whole dense model - sum of its layer entries - skeleton, at batch B: what running
  the layers back to back costs beyond running each alone with warm caches. It is mostly weight
  traffic: a layer timed alone keeps its weights in cache, inside a model whose weights exceed
  the cache they come from memory (MobileNetV2 on CPU: 50-75% of the layer time; CIFAR ResNets:
  0-10%). It is kept as a fraction of the layer time, `delta_ratio = delta / layers`, because it
  shrinks with the layers when channels are pruned; a constant over-predicted pruned models by
  15-30% (benchmarks/README.md, "latency table").
Residual of a pruned model = `c0 + c1 * A_pruned + delta_ratio * layers_pruned`.

`linear_terms` turns this into a model linear in the search space's per-layer scales (kept
fraction of each layer's weight work and of its outputs), which a latency budget needs: the
space's projection bisects on it thousands of times, far too often for table look-ups of
shapes that do not exist yet. Each layer's entry is fitted as `overhead + slope * MACs` by
least squares on three entries: its dense shape and its shape with 3/4 and 1/2 of the
channels.
"""

from __future__ import annotations

import copy
import hashlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from prunetune.errors import KernelError, KernelInputError

from .bsr import KERNEL_BLOCKS
from .latency import DeviceMeasurer, LatencyMeasurement, default_measurer, torch_threads
from .latency_backends import LatencyBackend, get_backend
from .layers import GEMM_TYPES, LayerSpec, build_layer, layer_specs
from .modules import resolve_backend
from .table import LatencyKey, LatencyTable

__all__ = [
    "STATISTICS",
    "LatencyPrediction",
    "LatencyPredictor",
    "clock_name",
    "measured_models_ms",
    "model_latency_ms",
    "predict_latency",
    "skeleton",
    "speedup",
]

# Statistic -> (field of a layer entry / the residual's intercept, slope field, delta field).
STATISTICS = {"median": ("ms", "per_element_ms", "delta_ratio"),
              "min": ("min_ms", "min_per_element_ms", "min_delta_ratio")}
# A negative delta is timing noise (layers cannot run faster inside a model than alone by much);
# the floor keeps a noisy fit from halving every prediction.
_MIN_DELTA_RATIO = -0.25
# A backend that compiles the graph fuses normalisation and activations into the layers and
# keeps activations in its own layout between them, which a layer timed alone pays for: there
# a model runs well below the sum of its layers (MobileNetV2 in ONNX Runtime: -0.25 was hit).
_MIN_DELTA_RATIO_COMPILED = -0.6
# The residual fit: rounds (median taken) and bursts per round (see `_fit_residual`).
_FIT_ROUNDS = 5
_FIT_BURSTS = 6
# Channel fractions a layer's latency line is fitted on (with the dense shape) for
# `linear_terms`: the range pruned policies live in.
_FIT_KEEPS = (0.75, 0.5)
# The density `sparse_gains` measures at: the middle of the range searches use, and 2:4's.
_GAIN_DENSITY = 0.5


@dataclass(frozen=True)
class LatencyPrediction:
    """`total_ms = layers_ms + residual_ms`; `per_layer` maps layer name -> ms."""

    total_ms: float
    layers_ms: float
    residual_ms: float
    per_layer: dict[str, float] = field(default_factory=dict)


class _FixedOutput(nn.Module):
    """Stands in for a GEMM layer in a skeleton: returns the outputs it recorded, in call
    order (a layer called several times per forward pass replays each call's output)."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.calls = 0

    def forward(self, *args: Any) -> torch.Tensor:
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


def skeleton(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A copy of `model` whose convolution / linear layers return precomputed outputs, so timing
    it measures everything else."""
    model = copy.deepcopy(model).eval()
    outputs: dict[nn.Module, list[torch.Tensor]] = {}

    def record(module: nn.Module, _args: Any, out: torch.Tensor) -> None:
        outputs.setdefault(module, []).append(out.clone())

    handles = [m.register_forward_hook(record) for m in model.modules()
               if isinstance(m, GEMM_TYPES)]
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in outputs:
                setattr(parent, name, _FixedOutput(outputs[child]))
    return model


def _fingerprint(specs: list[LayerSpec], example_input: torch.Tensor) -> int:
    text = "/".join(s.key.to_str() for s in specs) + f"/{tuple(example_input.shape[1:])}"
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16)


def _with_batch(example_input: torch.Tensor, batch: int) -> torch.Tensor:
    reps = -(-batch // example_input.shape[0])
    return example_input.repeat(reps, *([1] * (example_input.dim() - 1)))[:batch]


class LatencyPredictor:
    """Predicts the latency of pruned variants of one dense model on one device.

    The residual is measured once from `dense_model` (and cached in the table); layer entries
    are measured on demand. `predictor(model)` returns predicted ms. `statistic` picks which
    number of each measurement is used, "median" or "min" (the table keeps both); "auto"
    (default) is "min" on CPU, where other jobs only ever add time and the median of a shared
    machine drifts with its load (benchmarks/README.md, "latency table"), and "median" on a
    GPU, whose timings (CUDA events, L2 flushed) are steady.

    `backend` (a `LatencyBackend` or its name, default "eager") runs every timed layer and
    model; its clock names the table's entries. A backend that compiles a graph
    (`compiles_graph`: a runtime session) has a fixed cost per call, timed once on an empty
    graph and taken off each layer entry: a model pays it once, not once per layer.
    """

    def __init__(self, dense_model: nn.Module, example_input: torch.Tensor,
                 table: LatencyTable | None = None, *, device: torch.device | str = "cpu",
                 measurer: DeviceMeasurer | None = None, repeats: int = 15, warmup: int = 3,
                 residual_batch_factor: int = 4, statistic: str = "auto",
                 backend: str | LatencyBackend = "eager") -> None:
        if statistic not in (*STATISTICS, "auto"):
            raise KernelError(f"statistic must be 'auto' or one of {sorted(STATISTICS)}, got "
                              f"{statistic!r}")
        if not isinstance(example_input, torch.Tensor):
            raise KernelInputError("LatencyPredictor needs one example input tensor (batch first), "
                                   f"got {type(example_input).__name__}")
        if residual_batch_factor < 2:
            raise KernelError(f"residual_batch_factor must be >= 2, got {residual_batch_factor}")
        self.device = torch.device(device)
        self.measurer = measurer or default_measurer(self.device)
        self.table = table if table is not None else LatencyTable()
        self.example_input = example_input
        self.repeats, self.warmup = repeats, warmup
        self.latency_backend = get_backend(backend)
        self.latency_backend.check(self.device)
        self.backend = resolve_backend("auto", self.device)
        if statistic == "auto":
            statistic = "min" if self.device.type == "cpu" else "median"
        self.statistic = statistic
        self.call_overhead = self._call_overhead() if self.latency_backend.compiles_graph \
            else None
        self.c0_ms, self.c1_ms_per_elem, self.delta_ratio = self._residual_model(
            dense_model, residual_batch_factor)

    @property
    def device_name(self) -> str:
        return clock_name(self.latency_backend, self.measurer)

    def _pick(self, m: LatencyMeasurement) -> float:
        return _pick(m, self.statistic)

    def _specs(self, deployed: nn.Module, x: torch.Tensor) -> list[LayerSpec]:
        with torch_threads(self.measurer.threads):
            return layer_specs(deployed, x.to(self.device), device_name=self.device_name)

    def _deploy(self, model: nn.Module) -> nn.Module:
        return self.latency_backend.torch_form(model, self.device)

    def _run(self, deployed: nn.Module, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """What the measurer times for `deployed` on `x`: the backend's runner, and `x`."""
        x = x.to(self.device)
        return self.latency_backend.runner(deployed, (x,), self.device,
                                           self.measurer.threads), x

    def _call_overhead(self) -> LatencyMeasurement:
        """The backend's cost of one call of an (almost) empty graph."""
        return self.measurer.measure(*self._run(_AddOne(), torch.zeros(1, 1)),
                                     repeats=self.repeats, warmup=self.warmup)

    # -- layers -----------------------------------------------------------------------------

    def layer_ms(self, key: LatencyKey) -> float:
        """The table entry for `key` in this predictor's statistic, measured first if missing."""
        field_name = STATISTICS[self.statistic][0]
        entry = self.table.entry(key)
        if entry is None or field_name not in entry:
            self._put_layer(key, [self._measure_layer(key)])
            entry = self.table.entry(key)
        return float(entry[field_name])

    def _measure_layer(self, key: LatencyKey) -> LatencyMeasurement:
        layer, x = build_layer(key, backend=self.backend)
        measured = self.measurer.measure(*self._run(layer, x), repeats=self.repeats,
                                         warmup=self.warmup)
        return measured if self.call_overhead is None else _less(measured, self.call_overhead)

    def _put_layer(self, key: LatencyKey, measured: list[LatencyMeasurement]) -> None:
        """A layer entry from one or more measurements (each statistic's median over them)."""
        def mid(field_name: str) -> float:
            return statistics.median(getattr(m, field_name) for m in measured)

        self.table.put(key, mid("median_ms"), repeats=sum(m.repeats for m in measured),
                       p25_ms=mid("p25_ms"), p75_ms=mid("p75_ms"), min_ms=mid("min_ms"))

    # -- residual ---------------------------------------------------------------------------

    def _residual_model(self, dense_model: nn.Module,
                        factor: int) -> tuple[float, float, float]:
        deployed = self._deploy(dense_model)
        specs = self._specs(deployed, self.example_input)
        batch = int(self.example_input.shape[0])
        key = LatencyKey(self.device_name, "residual", (_fingerprint(specs, self.example_input),),
                         "dense", None, 1.0, specs[0].key.dtype if specs else "float32", batch)
        entry = self.table.entry(key)
        if entry is None or any(f not in entry for f in STATISTICS[self.statistic]):
            entry = self._fit_residual(key, deployed, factor)
        return tuple(float(entry[f]) for f in STATISTICS[self.statistic])  # type: ignore[return-value]

    def _fit_residual(self, key: LatencyKey, deployed: nn.Module, factor: int,
                      ) -> dict[str, Any]:
        """Skeleton at batch B and factor*B -> (c0, c1); delta from the whole model at B.

        The fit is made once per model and every prediction inherits its error, and a shared
        CPU's speed drifts over seconds. So it is made `_FIT_ROUNDS` times and each number is
        the median of the rounds. A round measures the dense model's layer entries afresh, then
        the two skeletons and the whole model in turn, in `_FIT_BURSTS` bursts
        (`measure_interleaved`): delta compares layers and whole model taken moments apart.
        The dense layers' entries keep the median of the rounds too.

        A backend that compiles the graph it is given (`compiles_graph`) would fold a skeleton's
        recorded outputs into constants: there the call overhead stands for both
        skeletons (c0 = the overhead, c1 = 0) and delta carries the rest, which such runtimes
        mostly fuse into the layers anyway (BatchNorm, activations)."""
        x1 = self.example_input.to(self.device)
        xk = _with_batch(x1, x1.shape[0] * factor)
        specs = self._specs(deployed, x1)
        a1 = sum(sp.out_elements for sp in specs)
        ak = sum(sp.out_elements for sp in self._specs(deployed, xk))
        keys = list(dict.fromkeys(sp.key for sp in specs))
        rounds = []
        for _ in range(_FIT_ROUNDS):
            layers = {k: self._measure_layer(k) for k in keys}
            rounds.append((layers, *self._fit_round(deployed, x1, xk)))
        for k in keys:
            self._put_layer(k, [r[0][k] for r in rounds])
        fits: dict[str, float] = {}
        floor = _MIN_DELTA_RATIO if self.call_overhead is None else _MIN_DELTA_RATIO_COMPILED
        for name, (intercept, slope, delta) in STATISTICS.items():
            per_round: list[tuple[float, float, float]] = []
            for layer_ms, s1, sk, whole in rounds:
                t1, tk = _pick(s1, name), _pick(sk, name)
                # A negative slope is timing noise: element-wise work cannot shrink as A grows.
                c1 = max(0.0, (tk - t1) / (ak - a1)) if ak != a1 else 0.0
                total = sum(_pick(layer_ms[sp.key], name) for sp in specs)
                d = (_pick(whole, name) - total - t1) / total if total > 0 else 0.0
                per_round.append((t1 - c1 * a1, c1, max(floor, d)))
            fits[intercept], fits[slope], fits[delta] = (
                statistics.median(col) for col in zip(*per_round, strict=True))
        self.table.put(key, fits.pop("ms"), repeats=self.repeats, **fits)
        return self.table.entry(key)

    def _fit_round(self, deployed: nn.Module, x1: torch.Tensor, xk: torch.Tensor,
                   ) -> tuple[LatencyMeasurement, LatencyMeasurement, LatencyMeasurement]:
        """(skeleton at B, skeleton at factor*B, whole model at B), timed in turn in bursts."""
        if self.call_overhead is not None:
            (whole,) = self.measurer.measure_interleaved(
                [self._run(deployed, x1)], repeats=self.repeats, warmup=self.warmup,
                bursts=_FIT_BURSTS)
            return self.call_overhead, self.call_overhead, whole
        with torch_threads(self.measurer.threads):
            skel1, skelk = skeleton(deployed, x1), skeleton(deployed, xk)
        s1, sk, whole = self.measurer.measure_interleaved(
            [self._run(skel1, x1), self._run(skelk, xk), self._run(deployed, x1)],
            repeats=self.repeats, warmup=self.warmup, bursts=_FIT_BURSTS)
        return s1, sk, whole

    # -- whole models -----------------------------------------------------------------------

    def predict(self, model: nn.Module) -> LatencyPrediction:
        """Predicted latency of `model` (its deployment form) for the example input."""
        specs = self._specs(self._deploy(model), self.example_input)
        per_layer: dict[str, float] = {}
        for sp in specs:
            per_layer[sp.name] = per_layer.get(sp.name, 0.0) + self.layer_ms(sp.key)
        layers = sum(per_layer.values())
        elements = sum(sp.out_elements for sp in specs)
        # Clamped: the non-GEMM work cannot take negative time (a noisy fit can say so).
        residual = max(0.0, self.c0_ms + self.c1_ms_per_elem * elements)
        residual += self.delta_ratio * layers
        return LatencyPrediction(layers + residual, layers, residual, per_layer)

    def linear_terms(self, dense_model: nn.Module) -> tuple[float, dict[str, tuple[float, float]]]:
        """`(base_ms, {layer name: (weight-work ms, output-work ms)})` of `dense_model`, for
        `prunetune.search_spaces.LatencyWeights.from_layers`: a pruned model's latency is
        `base + sum(w * kept weight work + o * kept outputs)`. `base` holds the residual's
        per-op overhead `c0` and each layer's fixed per-call cost; the layers' delta ratio
        scales both layer parts. For the dense model the sum equals `predict(dense_model)`
        (up to the residual's clamp at 0)."""
        specs = self._specs(self._deploy(dense_model), self.example_input)
        scale = 1.0 + self.delta_ratio
        base = self.c0_ms
        multiple = self.latency_backend.channel_multiple(self.device)
        layers: dict[str, tuple[float, float]] = {}
        for sp in specs:
            full = self.layer_ms(sp.key)
            points = [(1.0, full)] + [(share, self.layer_ms(k)) for k, share in filter(
                None, (_narrowed(sp.key, keep, multiple) for keep in _FIT_KEEPS))]
            slope = full
            if len(points) > 1:  # least squares through (MACs share, ms)
                xs, ys = np.array(points).T
                slope = float(np.polyfit(xs, ys, 1)[0])
                # Timing noise can tilt the line: the fixed part stays within [0, full].
                slope = min(full, max(0.0, slope))
            w_ms, o_ms = layers.get(sp.name, (0.0, 0.0))
            layers[sp.name] = (w_ms + scale * slope,
                               o_ms + self.c1_ms_per_elem * sp.out_elements)
            base += scale * (full - slope)
        return base, layers

    def sparse_gains(self, dense_model: nn.Module, density: float = _GAIN_DENSITY,
                     ) -> dict[str, float]:
        """Per sparse format the deployment runs (`bsr`: block-sparse kernels; `nm`: 2:4
        semi-structured Linear layers): the share of the removed weight work it saves on this
        device, over the dense model's own GEMM layers at `density`, from table entries
        (measured if missing). A layer the format cannot run saves nothing but still counts,
        so a gain is the whole model's. In [0, 1]; 0 where the format never pays."""
        if not self.latency_backend.runs_sparse_kernels:  # zeros are multiplied like others
            return dict.fromkeys(("bsr", "nm"), 0.0)
        specs = self._specs(self._deploy(dense_model), self.example_input)
        saved = dict.fromkeys(("bsr", "nm"), 0.0)
        removable = 0.0
        for sp in specs:
            if sp.key.scheme != "dense" or (sp.key.op == "conv2d" and sp.key.shape[10] != 1):
                continue
            full = self.layer_ms(sp.key)
            removable += full * (1.0 - density)
            for fmt in saved:
                variant = _sparse_variant(sp.key, fmt, density)
                if variant is not None:
                    saved[fmt] += max(0.0, full - self.layer_ms(variant))
        return {fmt: (min(1.0, ms / removable) if removable > 0 else 0.0)
                for fmt, ms in saved.items()}

    def __call__(self, model: nn.Module) -> float:
        return self.predict(model).total_ms

    def predict_policy(self, dense_model: nn.Module, policy: Any,
                       apply_fn: Callable[[nn.Module, Any, torch.Tensor], nn.Module]) -> float:
        """Predicted ms of `apply_fn(dense_model, policy, example_input)` — e.g. with
        `prunetune.search_spaces.apply_policy`, for a latency budget."""
        return self(apply_fn(dense_model, policy, self.example_input))

    def measure(self, model: nn.Module, *, repeats: int | None = None) -> LatencyMeasurement:
        """Measured whole-model latency of the deployment form (serialised on the device)."""
        return self.measurer.measure(*self._run(self._deploy(model), self.example_input),
                                     repeats=repeats or self.repeats, warmup=self.warmup)

    def measure_interleaved(self, models: list[nn.Module], *, bursts: int = 6,
                            repeats: int | None = None) -> list[LatencyMeasurement]:
        """Measured latency of each model's deployment form, timed in turn in `bursts` bursts
        spread over time (`prunetune.kernels.measure_interleaved`): steadier on a shared CPU
        than one measurement, and ratios between the models (speedups) free of its drift."""
        return self.measurer.measure_interleaved(
            [self._run(self._deploy(m), self.example_input) for m in models],
            repeats=repeats or self.repeats, warmup=self.warmup, bursts=bursts)

    def measured_ms(self, model: nn.Module, *, repeats: int | None = None) -> float:
        """Measured whole-model ms in this predictor's statistic (comparable to `predict`)."""
        return self._pick(self.measure(model, repeats=repeats))


class _AddOne(nn.Module):
    """The (almost) empty graph a backend's per-call overhead is timed on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def _less(measured: LatencyMeasurement, overhead: LatencyMeasurement) -> LatencyMeasurement:
    """`measured` less a fixed `overhead`, statistic by statistic (never below 1% of it)."""
    def off(name: str) -> float:
        value = getattr(measured, name)
        return max(0.01 * value, value - getattr(overhead, name))

    return replace(measured, median_ms=off("median_ms"), p25_ms=off("p25_ms"),
                   p75_ms=off("p75_ms"), min_ms=off("min_ms"))


def clock_name(backend: str | LatencyBackend, measurer: DeviceMeasurer) -> str:
    """The name of the clock `backend` times with on `measurer`'s device (table keys, the
    trials' `latency_clock`): the device, its threads and clock, and the backend."""
    return get_backend(backend).clock_name(measurer.name)


def _sparse_variant(key: LatencyKey, fmt: str, density: float) -> LatencyKey | None:
    """`key`'s layer stored as `fmt` at `density`: `bsr` with the largest square kernel block
    that divides its filters and channels twice over; `nm` (2:4, density 0.5) for Linear
    layers. None where the format does not apply."""
    if fmt == "nm":
        return replace(key, scheme="nm", density=0.5) if key.op == "linear" else None
    channels, filters = (key.shape[0], key.shape[1])
    for b in sorted(KERNEL_BLOCKS, reverse=True):
        if filters % b == 0 and channels % b == 0 and filters >= 2 * b and channels >= 2 * b:
            return replace(key, scheme="bsr", block=(b, b), density=density)
    return None


def _pick(m: LatencyMeasurement, statistic: str) -> float:
    """The number of a measurement that `statistic` ("min" or "median") names."""
    return m.min_ms if statistic == "min" else m.median_ms


def _narrowed(key: LatencyKey, keep: float, multiple: int = 1,
              ) -> tuple[LatencyKey, float] | None:
    """The key of the same layer with `keep` of its input and output channels, and its share
    of the layer's MACs; None for a layer without one (grouped, sparse, one channel). Widths
    that are multiples of `multiple` stay multiples (at least one): the widths a space that
    rounds to the backend's channel multiple gives, and the ones the backend runs fast."""
    if key.scheme != "dense":
        return None
    shape = list(key.shape)

    def cut(channels: int) -> int:
        if multiple > 1 and channels % multiple == 0:
            return max(multiple, int(channels * keep) // multiple * multiple)
        return max(1, round(channels * keep))

    if key.op == "linear":
        k, n = shape[0], shape[1]
        shape[0], shape[1] = cut(k), cut(n)
        share = shape[0] * shape[1] / (k * n)
    else:
        ci, co, groups = shape[0], shape[1], shape[10]
        if groups == ci == co:  # depthwise: fewer channels, as many fewer groups
            shape[0] = shape[1] = shape[10] = cut(co)
            share = shape[1] / co
        elif groups == 1:
            shape[0], shape[1] = cut(ci), cut(co)
            share = shape[0] * shape[1] / (ci * co)
        else:
            return None
    return (replace(key, shape=tuple(shape)), share) if share < 1.0 else None


def predict_latency(model: nn.Module, example_input: torch.Tensor, table: LatencyTable, *,
                    device: torch.device | str = "cpu", dense_model: nn.Module | None = None,
                    measurer: DeviceMeasurer | None = None) -> LatencyPrediction:
    """Sum of per-layer table entries (measured on demand, cached in `table`) plus the residual
    measured on `dense_model` (default: `model` itself)."""
    predictor = LatencyPredictor(dense_model if dense_model is not None else model,
                                 example_input, table, device=device, measurer=measurer)
    return predictor.predict(model)


def model_latency_ms(model: nn.Module, example_input: torch.Tensor, *,
                     device: torch.device | str = "cpu", table: LatencyTable | None = None,
                     dense_model: nn.Module | None = None, repeats: int = 20) -> float:
    """Latency of `model`'s deployment form in ms: measured (serialised per device) when `table`
    is None, else predicted from the table (pass `dense_model` so the residual comes from it)."""
    if table is not None:
        return predict_latency(model, example_input, table, device=device,
                               dense_model=dense_model).total_ms
    (ms,) = measured_models_ms([model], example_input, device=device, repeats=repeats, bursts=1)
    return ms


def measured_models_ms(models: list[nn.Module], example_input: torch.Tensor, *,
                       device: torch.device | str = "cpu", repeats: int = 20,
                       bursts: int = 4, backend: str | LatencyBackend = "eager",
                       threads: int | None = None) -> list[float]:
    """Measured median latency (ms) of each model's deployment form, the models timed in turn in
    `bursts` bursts of about `repeats / bursts` runs (`measure_interleaved`, serialised per
    device): a dense and a pruned model timed so give a speedup free of the machine's drift.
    `backend` runs them (default: eager PyTorch) on `threads` CPU threads (default 1)."""
    if repeats < 1:
        raise KernelError(f"repeats must be >= 1, got {repeats}")
    bursts = max(1, min(bursts, repeats))
    runtime, device = get_backend(backend), torch.device(device)
    runtime.check(device)
    measurer = default_measurer(device, threads)
    x = example_input.to(device)
    items = [(runtime.runner(runtime.torch_form(m, device), (x,), device, measurer.threads), x)
             for m in models]
    measured = measurer.measure_interleaved(
        items, repeats=-(-repeats // bursts), bursts=bursts)
    return [m.median_ms for m in measured]


def speedup(dense_ms: float, pruned_ms: float) -> float:
    """Dense latency over pruned latency (same device): > 1 means the pruned model is faster."""
    if not (dense_ms > 0 and pruned_ms > 0):
        raise KernelError(f"latencies must be > 0 ms, got dense_ms={dense_ms}, "
                          f"pruned_ms={pruned_ms}")
    return dense_ms / pruned_ms
