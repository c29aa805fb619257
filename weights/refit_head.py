"""Stage 2 of the shipped model: the head, refitted by covidx on 224x224 features.

Stage 1 (weights/train.py, PyTorch) trains the whole network from scratch at a lower resolution
(a CPU cannot afford many epochs at 224x224) and re-estimates the batchnorm statistics at 224x224.
Here covidx itself computes the backbone's pooled features of the same training images at
224x224, exactly as ImageDataGenerator(rescale=1./255).flow_from_directory(..., target_size=(224,
224)) reads them, and retrains the Dense head on them with the backbone frozen (covidx's fit on
cached features), starting from stage 1's head. The held-out tenth of stage 1 stays held out and
picks the epoch (early stopping); the test split is never read.

    python weights/refit_head.py --data ../shared/data/cxr/covid19-radiography/train \
        --backbone weights/backbone_112.safetensors --out weights/covid_resnet50.safetensors
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import covidx
from covidx import training
from covidx.callbacks import EarlyStopping

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train import CLASSES, holdout_mask, load_folder  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=20210101)
    ap.add_argument("--out32", help="also write the float32 model here (to check that float16 storage changes "
                    "no test metric)")
    ap.add_argument("--limit", type=int, default=0, help="use every k-th image only (a quick check of the script)")
    args = ap.parse_args()
    t0 = time.time()
    model = covidx.load_model(args.backbone)
    x, y, _ = load_folder(args.data)
    val = holdout_mask(y, args.seed)
    if args.limit:
        x, y, val = x[::args.limit], y[::args.limit], val[::args.limit]
    feats = model.features(x.astype(np.float32) * np.float32(1 / 255), batch_size=16)
    print("features of %d images at 224x224 in %.0f s" % (len(x), time.time() - t0), flush=True)
    onehot = np.eye(len(CLASSES), dtype=np.float32)[y]

    def held_out_accuracy():
        p = model.predict(x[val].astype(np.float32) * np.float32(1 / 255), verbose=0)
        return float(np.mean(np.argmax(p, 1) == y[val]))

    before = held_out_accuracy()
    for layer in model.layers[:175]:  # the backbone stays as stage 1 left it
        layer.trainable = False
    model.compile(optimizer=covidx.optimizers.Adam(learning_rate=args.lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    np.random.seed(args.seed)
    history = training.fit_features(
        model, feats[~val], onehot[~val], batch_size=32, epochs=args.epochs, verbose=2,
        validation_data=(feats[val], onehot[val]),
        callbacks=[EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)])
    after = held_out_accuracy()
    print("held-out accuracy at 224x224: stage 1 head %.4f, refitted head %.4f" % (before, after))
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    model.class_names = list(CLASSES)
    model.name = "covid_resnet50"
    model.save(args.out, dtype="float16")
    if args.out32:
        model.save(args.out32, dtype="float32")
    back = covidx.load_model(args.out)
    p16 = back.predict(x[val].astype(np.float32) / 255, verbose=0)
    p32 = model.predict(x[val].astype(np.float32) / 255, verbose=0)
    print("float16 file vs float32 weights on held-out images: max |prob diff| %.2e, same class %.4f"
          % (np.abs(p16 - p32).max(), np.mean(p16.argmax(1) == p32.argmax(1))))
    log = {"args": vars(args), "held_out_accuracy_stage1_head": before, "held_out_accuracy": after,
           "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
           "minutes": round((time.time() - t0) / 60, 1)}
    with open(os.path.splitext(args.out)[0] + ".refit-log.json", "w") as f:
        json.dump(log, f, indent=1)


if __name__ == "__main__":
    main()
