#!/usr/bin/env bash
# GPU checks and benchmarks at the study's scale, for one H100-class GPU, in well under 10 minutes.
#
#   bash benchmarks/gpu.sh                 # writes everything under $OUT (or ./gpu-out)
#
# The GPU machine has PyTorch, torchvision, h5py, typer, rich, matplotlib and pillow but no network:
# wheels it lacks (zarr and its needs, and a typer with click vendored) travel in .whl/, fetched
# here beforehand for its Python (3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 typer==0.29.2 \
#     typing_extensions crc32c
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site --upgrade .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.log"; }

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/summary.log"
python3 -c "import torch, zarr; print('torch', torch.__version__, 'zarr', zarr.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/summary.log"

log "tests (CUDA ones and the store/train suite)"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_store.py tests/test_train.py 2>&1 | tail -5 | tee -a "$OUT/summary.log"

DATA=/tmp/featcache-gpu/data
log "synth: 2000 train / 150 val / 600 test"
python3 -m featcache synth "$DATA" --n-train 2000 --n-val 150 --n-test 600 2>/dev/null | tee -a "$OUT/summary.log"

log "bench_extract (vit_b_16, flips)"
timeout 150 python3 benchmarks/bench_extract.py "$DATA" --arch vit_b_16 --views flips --device cuda --limit 512 \
  --json "$OUT/bench_extract.json" 2>&1 | tee -a "$OUT/summary.log"

log "extract the store (vit_b_16 random weights, flips, float16)"
/usr/bin/time -f "extract wall %e s, max RSS %M KiB" python3 -m featcache extract "$DATA" --out /tmp/featcache-gpu/store.zarr \
  --encoder random --arch vit_b_16 --views flips --batch-size 64 --workers 12 --overwrite 2>&1 | grep -v "━" | tee -a "$OUT/summary.log"
python3 -m featcache info /tmp/featcache-gpu/store.zarr 2>&1 | tee -a "$OUT/summary.log"

log "bench_step (E, F, C per sample; vit_b_16 and vit_ti_16)"
timeout 120 python3 benchmarks/bench_step.py --device cuda --batch-size 10 --steps 10 --json "$OUT/bench_step.json" 2>&1 | tee -a "$OUT/summary.log"

log "bench_sweep: the study's protocol x 5 seeds in C mode, and F vs C"
timeout 300 python3 benchmarks/bench_sweep.py /tmp/featcache-gpu/store.zarr --seeds 0-4 --device cuda \
  --json "$OUT/bench_sweep.json" 2>&1 | grep -v "━" | tee -a "$OUT/summary.log"
log "done"
