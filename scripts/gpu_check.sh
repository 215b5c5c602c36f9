#!/usr/bin/env bash
# The GPU part of issue 26, as one prepared run for a machine with a CUDA device.
#
#   bash scripts/gpu_check.sh [--dry-run] [OUT_DIR]      (run from anywhere; it cd's to the repo)
#   bash scripts/gpu_check.sh --fetch-wheels             (here, with network: see "Packages")
#
# Steps, each under `timeout` and inside one overall budget (BUDGET_S, default 570 s, so the
# whole run ends within ~10 min on an H100; a step that would start with < 20 s left is skipped
# and says so):
#   0. in the background from the start: the benchmark's 1M-cell file (bench_atlas's counts plus
#      a 4-category batch, ~2 GB, written once into BENCH_DIR; ~3 min on one core);
#   1. the card (nvidia-smi, nvidia-smi -L) and the Python environment;
#   2. pytest -m gpu tests/test_gpu.py with SCNOTES_TEST_DEVICE=cuda (every VAE family, the
#      Lightning engine's accelerator/devices, a backed fit, tl.nbvae, map_query; ~1 min);
#   3. benchmarks/bench_scvi_scale.py --device cuda at 1M cells, scnotes NBVAE against
#      scvi-tools SCVI, in memory, then backed (two runs, so one hang does not cost the other):
#      --epochs 1 (one epoch of 7,031 minibatches of 128 per fit, four fits; s/epoch is that
#      one epoch, warm-up included), peak GPU memory per fit (needs bench_gpu.patch applied);
#   4. the 2-process DDP fit on two GPUs (tests/_ddp_fit.py ... cuda) against one process, with
#      tests/test_ddp.py's criteria, when nvidia-smi -L lists more than one GPU; else skipped;
#   5. the existing VAE / LDVAE / GMVAE / engine test files with SCNOTES_TEST_DEVICE=cuda
#      (only tests/test_gpu.py reads it: the others run on the CPU, checking the library in
#      that machine's environment), pytest-xdist over 8 workers.
# Logs (at most 8 files, what a device run brings back): OUT_DIR/{env,test_gpu,bench_file,
# bench_memory,bench_backed,ddp,tests_vae,summary}.log. OUT_DIR: the argument, else $OUT,
# else ./gpu_out. The benchmark's data live in BENCH_DIR (default /tmp/scnotes_gpu_bench),
# not in OUT_DIR (too large to bring back).
#
# Packages. The device image has python3 with torch, lightning, numpy, scipy, pandas, h5py,
# scikit-learn, but not anndata, scanpy, scvi-tools and their small dependencies. They travel
# as wheels in .whl/ (ignored by git): `--fetch-wheels` downloads, here, the versions of this
# checkout's .venv for CPython 3.12 manylinux; a device run names `.whl` in its carry and this
# script installs them into /tmp/site (pip --no-index --no-deps --target) first. The repo itself
# is put on PYTHONPATH (no install needed). If the env step shows an import failing against the
# image's own versions (pandas, numpy), add that package to WHEELS below and fetch again.
#
# Environment: PYTHON (default: .venv/bin/python if it exists, else python3), BUDGET_S,
# BENCH_DIR, BENCH_THREADS (torch threads per benchmark fit, default 1, both tools), BENCH_SIZE
# (default 1000000), BENCH_EPOCHS (default 1), BENCH_SCRIPT (default
# benchmarks/bench_scvi_scale.py), STEPS (default "env tests bench ddp vae": the steps to run,
# e.g. STEPS=bench for a rerun of the benchmark alone).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
DRY=0
FETCH=0
OUT_DIR=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (--dry-run, --fetch-wheels, --help)" >&2; exit 2 ;;
    *) OUT_DIR=$arg ;;
  esac
done
OUT_DIR=${OUT_DIR:-${OUT:-./gpu_out}}
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
BUDGET_S=${BUDGET_S:-570}
BENCH_DIR=${BENCH_DIR:-/tmp/scnotes_gpu_bench}
BENCH_THREADS=${BENCH_THREADS:-1}
BENCH_SIZE=${BENCH_SIZE:-1000000}
BENCH_EPOCHS=${BENCH_EPOCHS:-1}
BENCH_GENES=2000
BENCH_SCRIPT=${BENCH_SCRIPT:-benchmarks/bench_scvi_scale.py}
STEPS=" ${STEPS:-env tests bench ddp vae} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
# The packages the device image lacks (import scnotes / anndata / scvi), pinned to .venv's versions.
WHEELS="anndata scanpy scvi-tools pyro-ppl mudata docrep ml-collections sparse zarr numcodecs donfig
google-crc32c legacy-api-wrap natsort scverse-misc session-info2 array-api-compat pynndescent umap-learn"

if (( FETCH )); then
  mkdir -p .whl
  for name in $WHEELS; do
    ver=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) \
      || { echo "skip $name (not in .venv)"; continue; }
    echo "download $name==$ver"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$name==$ver" \
      || python3 -m pip wheel -q --no-deps -w .whl "$name==$ver" \
      || echo "  FAILED: $name==$ver"  # (pip wheel: an sdist-only pure-Python package, e.g. docrep)
  done
  du -sh .whl
  exit 0
fi

mkdir -p "$OUT_DIR" || exit 2
SUMMARY="$OUT_DIR/summary.log"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

left() { echo $(( BUDGET_S - SECONDS )); }
# step NAME LOG LIMIT_S CMD...: run CMD under timeout min(LIMIT_S, budget left), log to LOG.
step() {
  local name=$1 log=$2 limit=$3; shift 3
  local t; t=$(left)
  (( t < limit )) && limit=$t
  if (( DRY )); then
    note "[dry-run] $name (timeout ${limit}s, log $log): $*"
    return 0
  fi
  if (( t < 20 )); then
    note "$name: SKIPPED, ${t}s of the ${BUDGET_S}s budget left"
    return 0
  fi
  local t0=$SECONDS rc
  echo "=== $name: $* (timeout ${limit}s)" >> "$log"
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  local verdict=ok
  (( rc == 124 || rc == 137 )) && verdict="TIMED OUT"
  (( rc != 0 && rc != 124 && rc != 137 )) && verdict="FAILED (exit $rc)"
  note "$name: $verdict in $(( SECONDS - t0 ))s (log $(basename "$log"))"
  return 0
}

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg SCNOTES_PROGRESS=0
if (( ! DRY )) && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT_DIR/env.log" 2>&1 || { note "wheel install FAILED (see env.log)"; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
note "gpu_check.sh: python $PY, budget ${BUDGET_S}s, out $OUT_DIR, bench data $BENCH_DIR$( (( DRY )) && echo ', DRY RUN')"

# 0. the benchmark file, in the background (bench_scvi_scale.make_file is idempotent: a finished
# file is reused, so step 3 finds it; a .partial file is never read).
GEN_PID=""
GEN_CMD=("$PY" -c "import sys; from pathlib import Path; s = Path(sys.argv[4]); sys.path.insert(0, str(s.parent)); \
__import__(s.stem).make_file(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))" \
  "$BENCH_DIR" "$BENCH_SIZE" "$BENCH_GENES" "$BENCH_SCRIPT")
if ! want bench; then
  :
elif (( DRY )); then
  note "[dry-run] background (timeout 330s, log bench_file.log): ${GEN_CMD[*]}"
else
  mkdir -p "$BENCH_DIR"
  timeout -k 10 330 "${GEN_CMD[@]}" > "$OUT_DIR/bench_file.log" 2>&1 &
  GEN_PID=$!
fi

# 1. the card and the environment
N_GPU=0
(( DRY )) || N_GPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if want env; then
step "card" "$OUT_DIR/env.log" 30 nvidia-smi
step "gpus" "$OUT_DIR/env.log" 10 nvidia-smi -L
step "environment" "$OUT_DIR/env.log" 60 "$PY" -c "
import torch, lightning, numpy, scipy, pandas
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
      'devices', torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print('lightning', lightning.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'pandas', pandas.__version__)
import anndata, scnotes
print('anndata', anndata.__version__, 'scnotes', scnotes.__file__)
try:
    import scvi; print('scvi-tools', scvi.__version__)
except Exception as e:
    print('scvi-tools NOT importable:', repr(e))
"
if (( ! DRY )); then
  note "GPUs listed by nvidia-smi -L: $N_GPU"
  grep -E "^(torch|anndata|scvi)" "$OUT_DIR/env.log" | tee -a "$SUMMARY"
fi
fi

# 2. the device tests
if want tests; then
step "pytest -m gpu tests/test_gpu.py (cuda)" "$OUT_DIR/test_gpu.log" 180 \
  env SCNOTES_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
(( DRY )) || grep -E "passed|failed|skipped|error" "$OUT_DIR/test_gpu.log" | tail -1 | tee -a "$SUMMARY"
fi

# 3. the benchmark at 1M cells on the GPU, both tools, in memory then backed
if [[ -n "$GEN_PID" ]]; then
  wait "$GEN_PID"; rc=$?  # bounded by its own timeout (330 s from the start)
  note "benchmark file: $( ((rc == 0)) && echo ready || echo "FAILED or timed out (exit $rc)") at ${SECONDS}s"
fi
if ! want bench; then
  :
elif ! grep -q -- '--device' "$BENCH_SCRIPT" && (( ! DRY )); then
  note "$BENCH_SCRIPT has no --device option: apply /tmp/s2/bench_gpu.patch first (benchmark skipped)"
else
  for mode in memory backed; do
    step "bench_scvi_scale ${BENCH_SIZE} ${mode} cuda" "$OUT_DIR/bench_${mode}.log" 300 \
      "$PY" "$BENCH_SCRIPT" --device cuda --sizes "$BENCH_SIZE" --genes "$BENCH_GENES" \
      --epochs "$BENCH_EPOCHS" --threads "$BENCH_THREADS" --modes "$mode" --no-small --out-dir "$BENCH_DIR"
    (( DRY )) || grep -E "^SUMMARY|s/epoch ratio|FAILED" "$OUT_DIR/bench_${mode}.log" | tee -a "$SUMMARY"
  done
fi

# 4. DDP on two GPUs
if ! want ddp; then
  :
elif (( DRY || N_GPU > 1 )); then
  step "DDP 2 GPUs vs 1" "$OUT_DIR/ddp.log" 180 "$PY" -c "
import json, subprocess, sys, tempfile
from pathlib import Path
d = Path(tempfile.mkdtemp()); res = {}
for n in (1, 2):
    subprocess.run([sys.executable, 'tests/_ddp_fit.py', str(d / f'{n}.json'), str(n), 'cuda'], check=True, timeout=170)
    res[n] = json.loads((d / f'{n}.json').read_text())
one, two = res[1], res[2]
print(json.dumps({k: (v['device'], v['val_elbo'], v['history'][-1], v['bn_types']) for k, v in res.items()}))
# tests/test_ddp.py's criteria: held-out ELBO within 2 %, last loss within 5 %, BatchNorm back to BatchNorm1d
assert abs(two['val_elbo'] - one['val_elbo']) < 0.02 * abs(one['val_elbo']), (one['val_elbo'], two['val_elbo'])
assert abs(two['history'][-1] - one['history'][-1]) < 0.05 * abs(one['history'][-1])
assert two['bn_types'] == ['BatchNorm1d'], two['bn_types']
print('DDP on 2 GPUs agrees with one process')
"
else
  note "DDP 2 GPUs: SKIPPED, nvidia-smi -L lists $N_GPU GPU(s)"
fi

# 5. the existing VAE / LDVAE / GMVAE / engine tests (CPU tests, in this machine's environment)
if want vae; then
step "VAE/LDVAE/GMVAE/engine test files" "$OUT_DIR/tests_vae.log" 150 \
  env SCNOTES_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -n 8 tests/test_vae.py \
  tests/test_vae_contract.py tests/test_vae_validation.py tests/test_ldvae.py tests/test_gmvae.py \
  tests/test_backed.py tests/test_ddp.py tests/test_history_contract.py
(( DRY )) || grep -E "passed|failed|error" "$OUT_DIR/tests_vae.log" | tail -1 | tee -a "$SUMMARY"
fi

note "gpu_check.sh done in ${SECONDS}s; logs in $OUT_DIR"
