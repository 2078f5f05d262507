#!/usr/bin/env bash
# Issue 13, ViT heavy: light expert by the recipe (global AGF, cost-aware, MACs 0.5, then KD 3 x 20,000 images,
# AdamW lr 5e-4, decided before running), then the pre-declared rule on split seed 1.
set -eu
cd /work/wt/route-out/vitfresh
while pgrep -f route-out/fresh/chain.sh >/dev/null; do sleep 20; done
export PYTHONPATH=/work/wt/run12 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
S=/work/shared; D=$S/data/cifar10-jpeg; DENSE=$S/models/vit-small6-cifar10-jpeg.safetensors
echo "=== $(date -u +%T) prune"
$PY -m agfprune prune --checkpoint $DENSE --metric agf --data $D/train --calib-batches 8 --batch-size 64 \
    --global --cost-aware --target macs --ratio 0.5 --eval-data $D/val --out vit-m0.5.safetensors --json > prune.json 2> prune.err
echo "=== $(date -u +%T) finetune"
$PY -m agfprune finetune vit-m0.5.safetensors --data $D/train --eval-data $D/val --eval-limit 1000 --epochs 3 \
    --limit 20000 --optimizer adamw --lr 0.0005 --teacher $DENSE --kd-alpha 0.7 --kd-temperature 4 --out vit-light.safetensors --json > ft.json 2> ft.err
echo "=== $(date -u +%T) route"
$PY -m agfprune route calibrate --light vit-light.last.safetensors --heavy $DENSE --data $D --signal confidence \
    --match-heavy --tolerance 0.1 --sustained --split-half first --split-seed 1 --out router.yaml --json > calibrate.json 2> calibrate.err
$PY -m agfprune route eval --router router.yaml --data $D --split-seed 1 --signals all --latency-batches 2 --latency-repeats 3 --plot router.png --json > eval.json 2> eval.err
echo "=== $(date -u +%T) done"
