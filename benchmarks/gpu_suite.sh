#!/usr/bin/env bash
# The GPU suite: everything prunetune measures on a CUDA GPU, in one command of <= 9 minutes.
#
#   benchmarks/gpu_suite.sh [--out DIR]   # on the GPU machine (default DIR: benchmarks/results)
#   benchmarks/gpu_suite.sh --smoke       # the same code paths on CPU, tiny shapes, Triton
#                                         # interpreter (the test suite runs this)
#
# Runs under the machine's own `python3` (or $PYTHON). prunetune need not be installed: the
# source tree is put first on PYTHONPATH as the `prunetune` package. Packages the GPU image lacks
# (torch-pruning, pydantic) come from the wheels in benchmarks/gpu_wheels/ (`make gpu-wheels`
# downloads them here; carry that folder to the GPU machine). Each step has its own time limit,
# so one slow step cannot eat the others' time. Result files (<= 6, in DIR):
#   kernels-<gpu>.json          block-sparse kernels vs dense and vs torch's bsr_dense_mm
#   semi_structured-<gpu>.json  2:4 semi-structured Linear layers vs dense
#   latency_table-<gpu>.json    the latency table's predictions vs measured whole models
#                               (channel / block / N:M policies, block-sparse modules swapped in)
#   scheme_mapping-<gpu>-<model>.json   `prunetune map --device cuda`: the measured mapping
#   latency_backends-<gpu>.json latency backends: eager and TensorRT on the GPU, ONNX Runtime on
#                               its CPU, dense vs uniform 50%-FLOPs models (TensorRT recorded
#                               as refused where its package is missing)
# and a summary table on stdout. Exit status: non-zero if any step failed (the others still run).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results"
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "gpu_suite.sh: unknown argument $1 (use --smoke and/or --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

# prunetune from this source tree (installed or not, so the smoke run tests what the GPU
# machine runs): its top-level folders are the package's sub-packages.
mkdir -p "$WORK/src/prunetune"
ln -s "$ROOT"/prunetune/*.py "$WORK/src/prunetune/"
for part in search_spaces kernels trainers orchestrator; do
  ln -s "$ROOT/$part" "$WORK/src/prunetune/$part"
done
export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch_pruning, pydantic, yaml" >/dev/null 2>&1; then
  if ! ls "$ROOT"/benchmarks/gpu_wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_suite.sh: $PY lacks torch-pruning / pydantic and benchmarks/gpu_wheels/ holds no" \
         "wheels: run 'make gpu-wheels' here and carry benchmarks/gpu_wheels" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" \
    "$ROOT"/benchmarks/gpu_wheels/*.whl || exit 2
  export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi

# Run from $WORK: in the repository root, `python -c` / `-m` would find its bare prunetune/
# folder (no sub-packages) before PYTHONPATH.
cd "$WORK"
echo "prunetune from the source tree: $("$PY" -c \
  'import os, prunetune; print(os.path.dirname(prunetune.__file__))')"

if [ "$SMOKE" = 1 ]; then
  export TRITON_INTERPRET=1
  TAG=cpu-smoke; DEVICE=cpu; LIMIT_KERNELS=300; LIMIT_SEMI=120; LIMIT_TABLE=300; LIMIT_MAP=300
  LIMIT_BACKENDS=300; BACKEND_ARGS=(--smoke)
  KERNEL_ARGS=(--smoke); TABLE_ARGS=(--smoke); MAP_MODELS=(resnet20); MAP_RATIOS=(0.5)
else
  TAG="$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', \
torch.cuda.get_device_name().lower()).strip('-'))")" || { echo "no CUDA GPU" >&2; exit 2; }
  DEVICE=cuda; LIMIT_KERNELS=180; LIMIT_SEMI=30; LIMIT_TABLE=140; LIMIT_MAP=55
  LIMIT_BACKENDS=75; BACKEND_ARGS=(--models resnet20 mobilenetv2 --repeats 12)
  KERNEL_ARGS=(); TABLE_ARGS=(--device cuda --batch 32 --policies 12 --schemes channel block nm)
  MAP_MODELS=(resnet20 mobilenetv2); MAP_RATIOS=(0.25 0.5 0.75)
fi

FAILED=()
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, remember a failure
  local name="$1" limit="$2"; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  [ "$rc" = 0 ] || FAILED+=("$name (exit $rc)")
}

step kernels "$LIMIT_KERNELS" "$PY" "$ROOT/benchmarks/kernels.py" "${KERNEL_ARGS[@]}" \
  --out "$OUT/kernels-$TAG.json"
step semi_structured "$LIMIT_SEMI" "$PY" "$ROOT/benchmarks/semi_structured.py" \
  "${KERNEL_ARGS[@]}" --out "$OUT/semi_structured-$TAG.json"
step latency_table "$LIMIT_TABLE" "$PY" "$ROOT/benchmarks/latency_table.py" "${TABLE_ARGS[@]}" \
  --out "$OUT/latency_table-$TAG.json"
for model in "${MAP_MODELS[@]}"; do
  cat >"$WORK/map-$model.yaml" <<EOF
name: map-$model
model: {name: $model}
data: {name: digits}
pretrain: {epochs: 3, lr: 0.05}
space: {schemes: [channel, block, nm, unstructured, pattern]}
finetune: {epochs: 0, bn_calibration: 256}
workdir: $WORK/runs
cache_dir: $WORK/cache
EOF
  step "map $model" "$LIMIT_MAP" "$PY" -m prunetune.orchestrator.cli map "$WORK/map-$model.yaml" \
    --device "$DEVICE" --ratios "${MAP_RATIOS[@]}" --quiet \
    --out "$OUT/scheme_mapping-$TAG-$model.json"
done

step "latency backends" "$LIMIT_BACKENDS" "$PY" "$ROOT/benchmarks/gpu_backends.py" \
  "${BACKEND_ARGS[@]}" --out "$OUT/latency_backends-$TAG.json"

"$PY" - "$OUT" "$TAG" <<'EOF'
import json, sys
from pathlib import Path
out, tag = Path(sys.argv[1]), sys.argv[2]
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None
print(f"\nGPU suite summary ({tag}), results in {out}")
k = load(f"kernels-{tag}.json")
print("kernels:", json.dumps(k["summary"]) if k else "no result")
ss = load(f"semi_structured-{tag}.json")
print("2:4 semi-structured:", json.dumps(ss["summary"]) if ss else "no result")
t = load(f"latency_table-{tag}.json")
if t:
    o = t["overall"]
    print(f"latency table: {o['median_based'].get('within_10pct', 0):.0%} of "
          f"{o['median_based']['n']} whole-model predictions within +-10% (target 90%); speedup "
          f"{o['speedup'].get('within_10pct', 0):.0%} within +-10%")
else:
    print("latency table: no result")
for path in sorted(out.glob(f"scheme_mapping-{tag}-*.json")):
    m = json.loads(path.read_text())
    counts = {}
    for choice in m["choice"].values():
        counts[choice["scheme"]] = counts.get(choice["scheme"], 0) + 1
    print(f"measured mapping {m['model']}: {counts} on {m['device']}")
b = load(f"latency_backends-{tag}.json")
print("latency backends (speedup over dense per batch):",
      json.dumps(b["summary"]) if b else "no result")
EOF

if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'gpu_suite.sh: failed: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
