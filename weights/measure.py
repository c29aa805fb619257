"""Measures the shipped model with covidx itself, for the model card: the test split of the COVID-19
Radiography Database (accuracy, COVID-19 sensitivity and specificity, ROC AUC, each with a 95%
confidence interval, and the confusion matrix) and the articles' "new dataset" (ieee8023-covid:
the fraction detected as COVID-19), plus the bundled samples.

    python weights/measure.py [--model weights/covid_resnet50.safetensors] [--shared ../shared/data/cxr]

Images are read exactly as the articles' generators read them: flow_from_directory(...,
target_size=(224, 224)) with the model's recorded rescale. Writes weights/metrics.json."""
import argparse
import json
import os
import time

import numpy as np

import covidx
from covidx import reports
from covidx.data import SAMPLES_DIR
from covidx.evaluation import apply_alignment, class_alignment
from covidx.preprocessing.image import ImageDataGenerator

HERE = os.path.dirname(os.path.abspath(__file__))


def predict_folder(model, directory):
    it = ImageDataGenerator(rescale=model.preprocessing["rescale"]).flow_from_directory(
        directory, target_size=(224, 224), batch_size=32, class_mode="sparse", shuffle=False)
    t = time.perf_counter()
    p = model.predict(it, verbose=0)
    seconds = time.perf_counter() - t
    mapping, message = class_alignment(model, it)
    labels = apply_alignment(it.classes.astype(np.float32), mapping, "sparse", 2).astype(int)
    return labels, p, it, seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(HERE, "covid_resnet50.safetensors"))
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "data", "cxr"))
    ap.add_argument("--json", default=os.path.join(HERE, "metrics.json"))
    args = ap.parse_args()
    model = covidx.load_model(args.model)
    out = {"model": os.path.basename(args.model), "covidx": covidx.__version__}
    for name, directory in [("test", os.path.join(args.shared, "covid19-radiography", "test")),
                            ("new_dataset", os.path.join(args.shared, "ieee8023-covid")),
                            ("samples", SAMPLES_DIR)]:
        if not os.path.isdir(directory):
            print("%s: %s not found, skipped" % (name, directory))
            continue
        labels, p, it, seconds = predict_folder(model, directory)
        s = reports.classification_summary(labels, p, model.class_names)
        s["seconds"], s["images_per_s"] = seconds, len(labels) / seconds
        if name == "new_dataset":
            s["detected_as_covid"] = reports.wilson(int(np.sum(np.argmax(p, 1) == 0)), len(labels))
        if name == "samples":
            s["files"] = [{"file": f, "p_covid": float(q[0])} for f, q in zip(it.filenames, p)]
        out[name] = s
        print("== %s (%s)\n%s" % (name, directory, reports.format_summary(s)))
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
