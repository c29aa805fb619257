"""The teacher's figures on the measuring sets, for the model card's side-by-side table
(development-only; needs torch and the teacher's wheels, see teacher.py). The teacher is not a
covidx model (another architecture), so PyTorch computes its outputs; the images are read by
covidx exactly as measure.py reads them for the shipped model (flow_from_directory, 224x224,
rescale 1/255), and the intervals are the same Wilson intervals. Nothing here is fitted.

    python weights/measure_teacher.py /tmp/covidx-train/teacher/final.pt [--shared ../shared/data/cxr]

With --student the checkpoint is a train.py final.pt instead (a ResNet50 student that was not
adopted, so never packaged into a covidx file), measured the same way for the card's table.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

from covidx import reports
from covidx.preprocessing.image import ImageDataGenerator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from teacher import load_teacher  # noqa: E402
from train import CLASSES, build_model, logits  # noqa: E402


def predict_folder(net, directory):
    """(folder labels, probabilities in CLASSES order) for a class-folder tree."""
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        directory, target_size=(224, 224), batch_size=32, class_mode="sparse", shuffle=False)
    probs = []
    with torch.no_grad():
        for i in range(len(it)):
            x, _ = it[i]
            lg = net(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous(
                memory_format=torch.channels_last))
            probs.append(torch.softmax(lg, 1).numpy())
    return it.classes.astype(int), np.concatenate(probs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("teacher")
    ap.add_argument("--student", action="store_true", help="the checkpoint is train.py's final.pt")
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "data", "cxr"))
    ap.add_argument("--out", default=os.path.join(HERE, "teacher-metrics.json"))
    args = ap.parse_args()
    if args.student:
        model = build_model(0).to(memory_format=torch.channels_last)
        model.load_state_dict(torch.load(args.teacher, weights_only=True)["state"])
        model.eval()
        net = lambda x: logits(model, x)  # noqa: E731
    else:
        net = load_teacher(args.teacher)
    out = {}
    test = os.path.join(args.shared, "covid19-radiography", "test")
    assert sorted(os.listdir(test)) == list(CLASSES)  # folder labels are the class indices
    y, p = predict_folder(net, test)
    pred = p.argmax(1)
    cov, nor = y == 0, y == 1
    out["test"] = {"n": int(len(y)), "accuracy": reports.wilson(int(np.sum(pred == y)), len(y)),
                   "sensitivity": reports.wilson(int(np.sum(pred[cov] == 0)), int(cov.sum())),
                   "specificity": reports.wilson(int(np.sum(pred[nor] == 1)), int(nor.sum())),
                   "roc_auc": reports.roc_auc(p[:, 0], cov)}
    y, p = predict_folder(net, os.path.join(args.shared, "ieee8023-covid"))
    out["ieee8023-covid detected"] = reports.wilson(int(np.sum(p.argmax(1) == 0)), len(y))
    y, p = predict_folder(net, os.path.join(args.shared, "nih-normal"))
    out["nih-normal specificity"] = reports.wilson(int(np.sum(p.argmax(1) == 1)), len(y))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=float)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
