#!/usr/bin/env bash
# How weights/covid_resnet50.safetensors was made, stage by stage (CPU only; see MODEL_CARD.md for
# the time each took). Development-only dependency: torch==2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/cxr/covid19-radiography/train
# 1. the whole network from scratch at 112x112: AdamW, one-cycle, 7 epochs; batchnorm re-estimated at 224x224
python weights/train.py --data "$data" --out weights/backbone_112.safetensors
# 2. five more epochs at 112x112 from stage 1: a second, shorter one-cycle at half the learning rate
python weights/train.py --data "$data" --init weights/backbone_112.safetensors --epochs 5 --lr 5e-4 \
    --warmup 0.05 --out weights/backbone_stage2.safetensors
# 3. the head refitted by covidx on 224x224 features of the same training images (backbone frozen)
python weights/refit_head.py --data "$data" --backbone weights/backbone_stage2.safetensors \
    --out weights/covid_resnet50.safetensors --out32 weights/backbone_float32_check.safetensors
# 4. the model card's figures, computed by covidx (and the same with float32 weights: float16
#    storage must change no test metric)
python weights/measure.py
python weights/measure.py --model weights/backbone_float32_check.safetensors --json /tmp/metrics_float32.json
