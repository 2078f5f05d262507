#!/usr/bin/env bash
# Issue 12, ResNet-20 must-show run (resumable: re-run this script and finished cells are reused).
# The claim-deciding cells first, seed by seed (agf + its scratch shape, random and the three weight-only
# metrics; global allocation, 75 % of parameters removed), then the whole grid of the issue. All steps
# share one settings key, so every cell computed early is reused by the full grid.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
S=${S:-/work/shared}
OUT=results/compare-r20
COMMON="--checkpoint $S/models/resnet20-cifar10-jpeg.safetensors --data $S/data/cifar10-jpeg/train
        --eval-data $S/data/cifar10-jpeg/val --target params --finetune-epochs 1 --finetune-lr 0.05
        --baselines scratch --out $OUT --quiet"
run() { echo "=== $(date -u +%H:%M:%S) $*"; nice -n 10 $PY -m agfprune compare $COMMON "$@" > /dev/null; echo "=== $(date -u +%H:%M:%S) exit $?"; }
for seeds in 1 2 3; do
  run --metrics agf,random,magnitude-l2,magnitude-l1,bn-scale --allocation global --ratios 0.75 --seeds $seeds
done
run --metrics agf,taylor,magnitude-l1,magnitude-l2,bn-scale,wanda,ria,snip,random --allocation local,global \
    --ratios 0.75,0.9 --seeds 3
echo "=== $(date -u +%H:%M:%S) all done"
