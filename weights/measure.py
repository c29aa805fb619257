"""Measures the shipped model with covidx itself, for the model card. Every figure has a 95%
interval (Wilson for proportions, DeLong for the ROC AUC, a percentile bootstrap for the
calibration error). The measuring sets are read only here, never for training or fitting.

- COVID-19 Radiography Database test split: accuracy, COVID-19 sensitivity and specificity, ROC
  AUC, confusion matrix; calibration (ECE) with and without the stored temperature, and a
  reliability diagram (weights/reliability.png);
- ieee8023-covid (other hospitals' COVID-19, the articles' "new dataset"): fraction detected;
- nih-normal (another collection's normals at full resolution): specificity;
- the test split again after changes that carry no disease (gamma, contrast, a 1024x1024 copy
  read back with Keras's default nearest resize, a black border): how much accuracy moves;
- out-of-distribution flags: fraction flagged on the test split, on unfamiliar/{pediatric,
  lateral, ct}, on the other two measuring sets, and on photographs (scikit-image's samples);
- the bundled samples.

    python weights/measure.py [--model weights/covid_resnet50.safetensors] [--shared ../shared/data/cxr]

Images are read as the articles' generators read them: flow_from_directory(..., target_size=(224,
224)) with the model's recorded rescale. Writes weights/metrics.json and weights/reliability.png."""
import argparse
import json
import os
import tempfile
import time

import numpy as np

import covidx
from covidx import plots, reports
from covidx.calibration import unfold_temperature as unfold
from covidx.data import SAMPLES_DIR
from covidx.evaluation import apply_alignment, class_alignment
from covidx.preprocessing.image import ImageDataGenerator

HERE = os.path.dirname(os.path.abspath(__file__))


def predict_folder(model, directory, **flow):
    """(labels in the model's class order, probabilities, scores or None, iterator, seconds)."""
    it = ImageDataGenerator(rescale=model.preprocessing["rescale"]).flow_from_directory(
        directory, target_size=(224, 224), batch_size=32, class_mode="sparse", shuffle=False, **flow)
    t = time.perf_counter()
    if model.unfamiliar is not None:
        p, scores = model.predict(it, verbose=0, return_unfamiliar=True)
    else:
        p, scores = model.predict(it, verbose=0), None
    seconds = time.perf_counter() - t
    mapping, _ = class_alignment(model, it)
    labels = apply_alignment(it.classes.astype(np.float32), mapping, "sparse", 2).astype(int)
    return labels, p, scores, it, seconds


def flagged(scores):
    return None if scores is None else reports.wilson(int(np.sum(scores > 1)), len(scores))


def unfold_temperature(model):
    """The same model without its folded temperature (the uncalibrated outputs)."""
    w = unfold(model.named_weights, model.calibration)
    if w is None:
        return None
    return covidx.Model(model.architecture, w, class_names=model.class_names, preprocessing=model.preprocessing)


def calibration(model, x, labels, p, out_png):
    """ECE of the stored model and of the same model without its temperature, and the diagram;
    x: the images behind p."""
    ece = lambda probs, y: reports.expected_calibration_error(probs, y)  # noqa: E731
    out = {"after": reports.bootstrap_interval(ece, p, labels)}
    curves = {"calibrated (stored model)": reports.reliability_bins(p, labels)}
    raw = unfold_temperature(model)
    if raw is not None:
        p_raw = raw.predict(x, verbose=0)
        out["before"] = reports.bootstrap_interval(ece, p_raw, labels)
        out["temperature"] = model.calibration["temperature"]
        out["accuracy_unchanged"] = bool(np.array_equal(p_raw.argmax(1), p.argmax(1)))
        curves = {"before (temperature 1)": reports.reliability_bins(p_raw, labels), **curves}
    fig = plots.reliability_figure(curves, title="Test split: reliability (15 bins)")
    fig.savefig(out_png, dpi=110)
    out["bins"] = curves
    return out


def changed_copies(directory, tmp):
    """Copies of a class-folder tree after changes that carry no disease, each as its own tree."""
    from PIL import Image, ImageOps

    changes = {
        "gamma 0.7": lambda im: im.point(lambda v: int(round(255 * (v / 255) ** 0.7))),
        "gamma 1.4": lambda im: im.point(lambda v: int(round(255 * (v / 255) ** 1.4))),
        "contrast 0.7": lambda im: im.point(lambda v: int(round(127.5 + (v - 127.5) * 0.7))),
        "1024x1024 file, nearest resize": lambda im: im.resize((1024, 1024), Image.BICUBIC),
        "black border (8%)": lambda im: ImageOps.expand(im.resize((188, 188), Image.BILINEAR), border=18, fill=0),
    }
    out = {}
    for name, change in changes.items():
        root = os.path.join(tmp, name.replace(" ", "_").replace("(", "").replace(")", "").replace("%", ""))
        for cls in sorted(os.listdir(directory)):
            os.makedirs(os.path.join(root, cls))
            for f in sorted(os.listdir(os.path.join(directory, cls))):
                with Image.open(os.path.join(directory, cls, f)) as im:
                    change(im.convert("L")).save(os.path.join(root, cls, os.path.splitext(f)[0] + ".png"))
        out[name] = root
    return out


PHOTOGRAPHS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "clock",
               "horse", "immunohistochemistry", "brick", "grass", "gravel", "cell", "colorwheel", "logo"]


def photograph_images():
    """scikit-image's sample images (photographs, micrographs, textures, text; none a radiograph)
    as covidx reads a file: RGB, nearest resize to 224x224; float32 (n, 224, 224, 3) in 0-255, or
    None without scikit-image. The same list as tests/test_unfamiliar.py."""
    try:
        from skimage import data
    except ImportError:
        return None
    from PIL import Image

    x = []
    for name in PHOTOGRAPHS:
        a = np.asarray(getattr(data, name)())
        a = a.astype(np.uint8) * 255 if a.dtype == bool else a
        x.append(np.asarray(Image.fromarray(a).convert("RGB").resize((224, 224), Image.NEAREST), np.float32))
    return np.stack(x)


def photographs(model):
    """Scores of the photographs (photograph_images)."""
    x = photograph_images()
    if x is None:
        return None
    _, scores = model.predict(x * np.float32(model.preprocessing["rescale"]), verbose=0, return_unfamiliar=True)
    return {"n": len(PHOTOGRAPHS), "images": PHOTOGRAPHS, "flagged": flagged(scores),
            "median_score": float(np.median(scores)), "scores": [float(s) for s in scores]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(HERE, "covid_resnet50.safetensors"))
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "data", "cxr"))
    ap.add_argument("--json", default=os.path.join(HERE, "metrics.json"))
    ap.add_argument("--png", default=os.path.join(HERE, "reliability.png"))
    args = ap.parse_args()
    model = covidx.load_model(args.model)
    out = {"model": os.path.basename(args.model), "covidx": covidx.__version__, "calibration": model.calibration}
    radiography = os.path.join(args.shared, "covid19-radiography", "test")

    labels, p, scores, it, seconds = predict_folder(model, radiography)
    s = reports.classification_summary(labels, p, model.class_names)
    s.update(seconds=seconds, images_per_s=len(labels) / seconds, unfamiliar_flagged=flagged(scores))
    out["test"] = s
    print("== test split\n%s" % reports.format_summary(s), flush=True)
    x_test = np.concatenate([it[i][0] for i in range(len(it))])
    out["test"]["calibration"] = calibration(model, x_test, labels, p, args.png)
    print("calibration: %s" % {k: v for k, v in out["test"]["calibration"].items() if k != "bins"}, flush=True)
    del x_test

    labels_i, p_i, scores_i, _, _ = predict_folder(model, os.path.join(args.shared, "ieee8023-covid"))
    out["ieee8023_covid"] = {"n": len(labels_i), "detected_as_covid": reports.wilson(int(np.sum(p_i.argmax(1) == 0)),
                                                                                     len(labels_i)),
                             "unfamiliar_flagged": flagged(scores_i)}
    labels_n, p_n, scores_n, _, _ = predict_folder(model, os.path.join(args.shared, "nih-normal"))
    out["nih_normal"] = {"n": len(labels_n), "specificity": reports.wilson(int(np.sum(p_n.argmax(1) == 1)),
                                                                           len(labels_n)),
                         "unfamiliar_flagged": flagged(scores_n)}
    print("ieee8023-covid: %s\nnih-normal: %s" % (out["ieee8023_covid"], out["nih_normal"]), flush=True)

    out["unfamiliar"] = {}
    for kind in ("pediatric", "lateral", "ct"):
        directory = os.path.join(args.shared, "unfamiliar", kind)
        it = ImageDataGenerator(rescale=model.preprocessing["rescale"]).flow_from_directory(
            os.path.dirname(directory), target_size=(224, 224), batch_size=32, class_mode=None, shuffle=False,
            classes=[kind])
        _, sc = model.predict(it, verbose=0, return_unfamiliar=True)
        out["unfamiliar"][kind] = {"n": len(sc), "flagged": flagged(sc), "median_score": float(np.median(sc))}
    out["unfamiliar"]["photographs"] = photographs(model)
    out["unfamiliar"]["test_split"] = {"n": len(scores), "flagged": flagged(scores),
                                       "median_score": float(np.median(scores))}
    print("unfamiliar: %s" % json.dumps({k: v["flagged"] for k, v in out["unfamiliar"].items() if v}), flush=True)

    out["invariance"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, root in changed_copies(radiography, tmp).items():
            lab, pc, _, _, _ = predict_folder(model, root)
            same = float(np.mean(pc.argmax(1) == p.argmax(1)))
            out["invariance"][name] = {"accuracy": reports.wilson(int(np.sum(pc.argmax(1) == lab)), len(lab)),
                                       "same_class_as_original": same}
            print("test split, %s: accuracy %.4f, same class as the original %.4f"
                  % (name, np.mean(pc.argmax(1) == lab), same), flush=True)

    labels_s, p_s, scores_s, it_s, _ = predict_folder(model, SAMPLES_DIR)
    out["samples"] = {"right": int(np.sum(p_s.argmax(1) == labels_s)), "n": len(labels_s),
                      "files": [{"file": f, "p_covid": float(q[0]),
                                 "unfamiliar_score": None if scores_s is None else float(u)}
                                for f, q, u in zip(it_s.filenames, p_s, scores_s if scores_s is not None else p_s)]}
    print("samples: %d of %d right" % (out["samples"]["right"], out["samples"]["n"]))
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
