#!/usr/bin/env bash
# After run-r20.sh's claim-deciding steps: the remaining weight-only metrics at the claim cell (global, 0.75)
# first, so that claim 1 can be read, then the whole grid (all cells computed so far are reused).
set -u
cd "$(dirname "$0")/.."
while [ ! -f results/compare-r20/cells/magnitude-l2_global_r0.75_s2.json ] || [ ! -f results/compare-r20/cells/random_global_r0.75_s2.json ]; do sleep 15; done
sleep 20
pkill -f "results/run-r20\.sh"; sleep 1; pkill -f "agfprune compare --checkpoint /work/shared/models/resnet20"; sleep 3
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
S=${S:-/work/shared}
OUT=results/compare-r20
COMMON="--checkpoint $S/models/resnet20-cifar10-jpeg.safetensors --data $S/data/cifar10-jpeg/train
        --eval-data $S/data/cifar10-jpeg/val --target params --finetune-epochs 1 --finetune-lr 0.05
        --baselines scratch --out $OUT --quiet"
run() { echo "=== $(date -u +%H:%M:%S) $*"; $PY -m agfprune compare $COMMON "$@" > /dev/null; echo "=== $(date -u +%H:%M:%S) exit $?"; }
run --metrics agf,random,magnitude-l2 --allocation global --ratios 0.75 --seeds 3
for seeds in 1 2 3; do
  run --metrics agf,random,magnitude-l2,magnitude-l1,bn-scale --allocation global --ratios 0.75 --seeds $seeds
done
run --metrics agf,taylor,magnitude-l1,magnitude-l2,bn-scale,wanda,ria,snip,random --allocation local,global \
    --ratios 0.75,0.9 --seeds 3
echo "=== $(date -u +%H:%M:%S) all done"
