#!/usr/bin/env bash
# Issue 12 must-show runs, in the order that decides the most claims first (resumable: re-run this
# script and every finished cell is reused; each step shares its settings key with the full grid).
# Cells are spread over RANKS torchrun processes (one thread each), so a 2-core machine runs two at once.
#   1. ResNet-20, global, 90 % of parameters removed: agf, random, the weight-only metrics + scratch (claim 3)
#   2. ResNet-56, 75 % params, agf/taylor/magnitude-l2/wanda/random x local/global + scratch, 20,000 images/cell
#   3. the ViT, 50 % of parameters removed (whole heads + MLP neurons + embedding; --target params so that
#      every metric keeps the same budget under global allocation), local and global: agf, magnitude-l2,
#      random + scratch, 20,000 images/cell (SGD lr 0.01, fixed before the run: no choice made on val)
#   4. ResNet-20, local, 75 %: the claim-1 set under per-group ratios
#   5. the whole ResNet-20 grid of the issue (9 metrics x local,global x 0.75,0.9 x 3 seeds + scratch)
#   6. ResNet-56 at 90 % of parameters removed, global, the step-2 metrics + scratch (claim 3 on a second
#      model; its own folder, so that results/compare-r56 stays the issue's complete 0.75 run)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
RANKS=${RANKS:-2}
S=${S:-/work/shared}
D=$S/data/cifar10-jpeg
R20="--checkpoint $S/models/resnet20-cifar10-jpeg.safetensors --data $D/train --eval-data $D/val --target params
     --finetune-epochs 1 --finetune-lr 0.05 --baselines scratch --out results/compare-r20 --quiet"
R56="--checkpoint $S/models/resnet56-cifar10-jpeg.safetensors --data $D/train --eval-data $D/val --target params
     --finetune-epochs 1 --finetune-limit 20000 --finetune-lr 0.05 --baselines scratch --out results/compare-r56 --quiet"
VIT="--checkpoint $S/models/vit-small6-cifar10-jpeg.safetensors --data $D/train --eval-data $D/val --target params
     --prune-heads --finetune-epochs 1 --finetune-limit 20000 --finetune-lr 0.01 --baselines scratch --out results/compare-vit --quiet"
run() {
  echo "=== $(date -u +%H:%M:%S) $*"
  nice -n 10 $PY -m torch.distributed.run --standalone --nproc-per-node "$RANKS" -m agfprune compare "$@" > /dev/null
  echo "=== $(date -u +%H:%M:%S) exit $?"
}
CLAIM=agf,random,magnitude-l2,magnitude-l1,bn-scale
run $R20 --metrics $CLAIM --allocation global --ratios 0.9 --seeds 3
run $R56 --metrics agf,taylor,magnitude-l2,wanda,random --allocation local,global --ratios 0.75 --seeds 3
run $VIT --metrics agf,magnitude-l2,random --allocation local,global --ratios 0.5 --seeds 3
run $R20 --metrics $CLAIM --allocation local --ratios 0.75 --seeds 3
run $R20 --metrics agf,taylor,magnitude-l1,magnitude-l2,bn-scale,wanda,ria,snip,random --allocation local,global \
    --ratios 0.75,0.9 --seeds 3
run ${R56/compare-r56/compare-r56-0.9} --metrics agf,taylor,magnitude-l2,wanda,random --allocation global --ratios 0.9 --seeds 3
echo "=== $(date -u +%H:%M:%S) all done"
