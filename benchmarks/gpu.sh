#!/usr/bin/env bash
# GPU checks and benchmarks at the study's scale (2,000 training images, vit_b_16) on one H100-class
# GPU, within a time budget (default 460 s):
#
#   bash benchmarks/gpu.sh fetch         # where pip reaches a registry: the wheels of gpu-wheels.txt -> .whl/
#   bash benchmarks/gpu.sh data [PATH]   # the ISIC 2017 training images at PATH -> .gpu-data/ (see below)
#   bash benchmarks/gpu.sh               # on the GPU machine: output under $OUT (copy the git-ignored .whl/
#                                        # and, if made, .gpu-data/ along)
#   SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu.sh   # the same steps at toy scale on the CPU
#
# Data: `gpu.sh data` copies the 2,000 real ISIC 2017 training images (PATH, default
# ../shared/data/isic2017-train-256) into the git-ignored $GPU_DATA (default .gpu-data/) as the training
# split, beside synthetic validation and test folders (150 / 600 images); the GPU run uses that folder
# when it is there, else it synthesises 2,000/150/600 images (in worker processes; a data folder that an
# earlier run on this machine made with the same counts is kept). SMOKE runs always synthesise.
#
# Steps, most important first; each gets what is left of the budget, at most its own limit (the limits
# add up to the budget; the last step, the timm extract, gets what is left): the CUDA tests, data, extract
# (images/s), bench_extract (decode, encoder, whole extract, the store writer alone by writer threads,
# JPEG decoding by workers and by nvJPEG on full-size 3024x2016 JPEGs), bench_step (E/F/C at the
# protocol's batches 5, 10, 50), bench_step Tk/Pk (issue 22: E, C, T1, T2, P2 at vit_b_16, batch 10, with each
# row's max_memory_allocated), bench_profile (the top operators of a grouped step at size 2000's
# batch), bench_sweep (the full protocol x 5 seeds as one compare-e2e call,
# then size by size grouped, F/C, sequential on size 10; its JSON is rewritten after every part, and
# what its limit cuts off is the cheapest to lose), extract with a timm ViT-B (random weights: a speed
# figure beside the torchvision encoder's). Everything lands in $OUT (default ./gpu-out): summary.log,
# one JSON file per benchmark, and last, in summary.log too, one table of every figure (summary.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

GPU_DATA=${GPU_DATA:-.gpu-data}
BATCHES=5,10,50  # the protocol's batches: size 10, sizes 20-160, size 2000

if [[ ${1:-} == fetch ]]; then
  exec "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl -r benchmarks/gpu-wheels.txt
fi
if [[ ${1:-} == data ]]; then
  PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD "$PYTHON" benchmarks/gpu_data.py isic \
    "${2:-../shared/data/isic2017-train-256}" "$GPU_DATA" --n-val 150 --n-test 600 || exit 1
  exec du -sh "$GPU_DATA"
fi

OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
# An earlier run's figures must not be summarised as this run's.
rm -f "$OUT"/{summary.log,data.json,store_info.json,bench_extract.json,bench_step.json,bench_step_tail.json,bench_profile.json,bench_sweep.json,store_info_timm.json}
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-160}  # rich's tables keep their rows on one line in summary.log
BUDGET=${BUDGET:-460}
WORK=${WORK:-/tmp/featcache-gpu}
if [[ -n ${SMOKE:-} ]]; then
  DEVICE=cpu ARCH=vit_micro SIZE=32 SYNTH=(--n-train 24 --n-val 8 --n-test 8 --image-size 48x64)
  TIMM=(--encoder timm:vit_base_patch16_224.mae --model-kwargs depth=2 --model-kwargs embed_dim=32 --model-kwargs num_heads=2)
  STEP=(--archs vit_micro --image-size 32 --steps 2) STEP_TAIL=(--archs vit_micro --image-size 32 --steps 2) PROFILE=(--width 32 --batch-size 4 --steps 2) SWEEP=(--sizes 20,10 --epochs 2 --seeds 0,1 --sequential-sizes 10)
  EXTRACT_LIMIT=16 WORKERS=2 FULL_SIZE=2
else
  DEVICE=cuda ARCH=vit_b_16 SIZE=224 SYNTH=(--n-train 2000 --n-val 150 --n-test 600)
  TIMM=(--encoder timm:vit_base_patch16_224.mae)  # the torchvision vit_b_16's architecture, built by timm
  STEP=(--archs vit_b_16,vit_ti_16 --steps 10) STEP_TAIL=(--archs vit_b_16 --steps 10) PROFILE=() SWEEP=(--seeds 0-4 --sequential-sizes 10)
  EXTRACT_LIMIT=512 WORKERS=12 FULL_SIZE=32
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu.sh: no wheels in .whl/ (the GPU machine lacks zarr and pydantic); run 'bash benchmarks/gpu.sh fetch' first and copy .whl/ along" >&2
    exit 1
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
mkdir -p "$WORK" && find "$WORK" -mindepth 1 -maxdepth 1 ! -name data -exec rm -rf {} +
DATA=$WORK/data
[[ -z ${SMOKE:-} && -f $GPU_DATA/gpu-data.json ]] && DATA=$(realpath "$GPU_DATA")

log() { echo "== $* ($(date +%T), ${SECONDS}s)" | tee -a "$OUT/summary.log"; }
# step LIMIT NAME CMD...: run CMD for at most LIMIT seconds and what is left of the budget; keep its output.
step() {
  local limit=$1 name=$2 left=$((BUDGET - SECONDS))
  shift 2
  ((left < limit)) && limit=$left
  if ((limit < 10)); then log "$name: skipped, the budget is spent"; return 1; fi
  log "$name (at most ${limit}s)"
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v "━" | tee -a "$OUT/summary.log"
  local rc=${PIPESTATUS[0]}
  ((rc == 124)) && log "$name: stopped at its time limit"
  ((rc != 0)) && log "$name: exit code $rc"
  return "$rc"
}

log "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; } | tee -a "$OUT/summary.log"
"$PYTHON" -c "import sys, torch, torchvision, zarr, typer, featcache
print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__,
      '| zarr', zarr.__version__, '| typer', typer.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/summary.log"

step 80 "CUDA tests" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  tests/store/test_writer.py::test_pinned_copies_back_from_cuda
if [[ $DATA == "$WORK/data" ]]; then
  step 30 "data: synth ${SYNTH[*]}" "$PYTHON" benchmarks/gpu_data.py synth "$DATA" "${SYNTH[@]}" --json "$OUT/data.json" || exit 1
else
  step 30 "data: $GPU_DATA" "$PYTHON" benchmarks/gpu_data.py describe "$DATA" --json "$OUT/data.json" || exit 1
fi
step 40 "extract $ARCH, flips, float16" "$PYTHON" -m featcache --device "$DEVICE" extract "$DATA" \
  --out "$WORK/store.zarr" --encoder random --arch "$ARCH" --image-size "$SIZE" --views flips --batch-size 32 --workers "$WORKERS" || exit 1
"$PYTHON" -m featcache info "$WORK/store.zarr" --json > "$OUT/store_info.json"
step 40 "bench_extract" "$PYTHON" benchmarks/bench_extract.py "$DATA" --arch "$ARCH" --image-size "$SIZE" --views flips \
  --device "$DEVICE" --limit "$EXTRACT_LIMIT" --extract-limit "$EXTRACT_LIMIT" --batch-size 32 --workers "$WORKERS" \
  --full-size "$FULL_SIZE" --json "$OUT/bench_extract.json"
step 45 "bench_step" "$PYTHON" benchmarks/bench_step.py --device "$DEVICE" --batch-size "$BATCHES" "${STEP[@]}" \
  --modes E,F,C --json "$OUT/bench_step.json"
step 40 "bench_step Tk/Pk" "$PYTHON" benchmarks/bench_step.py --device "$DEVICE" --batch-size 10 "${STEP_TAIL[@]}" \
  --modes E,C,T1,T2,P2 --json "$OUT/bench_step_tail.json"
step 15 "bench_profile" "$PYTHON" benchmarks/bench_profile.py --device "$DEVICE" "${PROFILE[@]}" --json "$OUT/bench_profile.json"
step 150 "bench_sweep" "$PYTHON" benchmarks/bench_sweep.py "$WORK/store.zarr" --device "$DEVICE" "${SWEEP[@]}" \
  --json "$OUT/bench_sweep.json"
if "$PYTHON" -c "import timm" 2>/dev/null; then
  step 20 "extract ${TIMM[1]}, flips, float16" "$PYTHON" -m featcache --device "$DEVICE" extract "$DATA" \
    --out "$WORK/store-timm.zarr" "${TIMM[@]}" --encoder-weights random --image-size "$SIZE" --views flips --batch-size 32 \
    --workers "$WORKERS" && "$PYTHON" -m featcache info "$WORK/store-timm.zarr" --json > "$OUT/store_info_timm.json"
else
  log "extract with timm: skipped, timm is not importable (add its wheels: gpu-wheels.txt)"
fi
log "summary"
timeout 60 "$PYTHON" benchmarks/summary.py "$OUT" 2>&1 | tee -a "$OUT/summary.log"
log "done"
