#!/usr/bin/env bash
# Issue 13 confirmation: the documented light-expert recipe, uninterrupted (3 x 20,000 images),
# then the pre-declared rule (--match-heavy --tolerance 0.1 --sustained) on a fresh split (seed 1).
set -eu
cd /work/wt/route-out/fresh
export PYTHONPATH=/work/wt/run12 OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
S=/work/shared; D=$S/data/cifar10-jpeg; DENSE=$S/models/resnet56-cifar10-jpeg.safetensors
echo "=== $(date -u +%T) prune"
/usr/bin/time -v $PY -m agfprune prune --checkpoint $DENSE --metric agf --data $D/train --calib-batches 16 --batch-size 64 \
    --global --cost-aware --target macs --ratio 0.6 --eval-data $D/val --out r56-m0.6.safetensors --json > prune.json 2> prune.err
echo "=== $(date -u +%T) finetune"
/usr/bin/time -v $PY -m agfprune finetune r56-m0.6.safetensors --data $D/train --val $D/val --val-limit 1000 --epochs 3 \
    --limit 20000 --lr 0.02 --teacher $DENSE --kd-alpha 0.7 --kd-temperature 4 --out r56-light.safetensors --json > ft.json 2> ft.err
echo "=== $(date -u +%T) route"
$PY -m agfprune route calibrate --light r56-light.last.safetensors --heavy $DENSE --data $D --signal confidence \
    --match-heavy --tolerance 0.1 --sustained --split-half first --split-seed 1 --out router.yaml --json > calibrate.json 2> calibrate.err
$PY -m agfprune route eval --router router.yaml --data $D --split-seed 1 --signals all --latency-batches 2 --latency-repeats 3 --plot router.png --json > eval.json 2> eval.err
echo "=== $(date -u +%T) done"
