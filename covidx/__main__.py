"""The covidx command (also python -m covidx).

    covidx evaluate [DIR]                 evaluate the model on a folder with one sub-folder per class
                                          (default: the sample X-rays bundled with covidx)
    covidx predict PATH... [--json|--csv] classify image files (folders are searched recursively)
    covidx info                           versions, OpenBLAS kernel, threads, CPU, the model card summary

Options: --model FILE (a model file instead of the shipped model), --batch-size N, --threads N.
Exit status: 0 success, 1 some files could not be read (the others are reported), 2 usage or
model errors."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

import covidx
from covidx.data import SAMPLES_DIR

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")


def load_default_or(path):
    """(model, trained): the given file, the shipped model, or (where none is installed) the
    articles' architecture with random weights, said plainly."""
    if path:
        return covidx.load_model(path), True
    try:
        return covidx.load_model(), True
    except FileNotFoundError:
        from covidx.applications.resnet50 import ResNet50

        model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), class_names=["COV19", "Normal"],
                         preprocessing={"rescale": 1.0 / 255}, seed=0)
        print("NOTE: no trained model is installed: running the articles' architecture with RANDOM weights; "
              "its predictions are meaningless.", file=sys.stderr)
        return model, False


def generator_for(model):
    """An ImageDataGenerator that applies the model's recorded preprocessing."""
    from covidx.preprocessing.image import ImageDataGenerator

    p = model.preprocessing
    if isinstance(p, dict) and set(p) == {"rescale"}:
        return ImageDataGenerator(rescale=p["rescale"])
    if p is None:
        return ImageDataGenerator()
    return ImageDataGenerator(preprocessing_function=lambda x: model.preprocess(x[None])[0])


def image_paths(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            out.append(p)
    return out


def cmd_evaluate(args):
    model, trained = load_default_or(args.model)
    directory = args.dir or SAMPLES_DIR
    if not os.path.isdir(directory):
        print("covidx evaluate: no such directory: %s" % directory, file=sys.stderr)
        return 2
    if model._compiled is None:
        model.compile(loss="categorical_crossentropy" if model.output_shape[-1] > 1 else "binary_crossentropy",
                      metrics=["accuracy"])
    it = generator_for(model).flow_from_directory(directory, target_size=(224, 224), batch_size=args.batch_size,
                                                  class_mode="categorical" if model.output_shape[-1] > 1 else "binary",
                                                  shuffle=False, on_error="skip")
    if it.samples == 0:
        print("covidx evaluate: no images found under %s (expected one sub-folder per class)" % directory,
              file=sys.stderr)
        return 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable files are listed at the end instead
        p = model.predict(it, verbose=1)
    from covidx import losses, reports
    from covidx.evaluation import apply_alignment, class_alignment

    mapping, message = class_alignment(model, it)
    if message:
        print(message)
    labels = apply_alignment(it.classes.astype(np.float32), mapping, "sparse", p.shape[1]).astype(int)
    ok = ~np.isnan(p).any(axis=1)
    names = model.class_names or [str(i) for i in range(max(p.shape[1], 2))]
    loss = (losses.sparse_categorical_crossentropy(labels[ok], p[ok]) if p.shape[1] > 1
            else losses.binary_crossentropy(labels[ok], p[ok]))
    acc = np.mean((np.argmax(p[ok], 1) if p.shape[1] > 1 else (p[ok, 0] > 0.5)) == labels[ok])
    print("%d images - accuracy: %.4f - loss: %.4f" % (int(ok.sum()), acc, float(np.mean(loss))))
    result = reports.classification_summary(labels[ok], p[ok], names)
    print(reports.format_summary(result))
    if not trained:
        print("(random weights: these numbers only show the pipeline working)")
    if it.skipped:
        print("%d file(s) could not be read:" % len(it.skipped))
        for path, reason in it.skipped:
            print("  %s: %s" % (path, reason))
        return 1
    return 0


def cmd_predict(args):
    model, _ = load_default_or(args.model)
    from covidx.preprocessing.image import ImageFileError, img_to_array, load_img

    paths = image_paths(args.paths)
    if not paths:
        print("covidx predict: no image files given", file=sys.stderr)
        return 2
    names = model.class_names or [str(i) for i in range(model.output_shape[-1])]
    records, failed = [], 0
    bar = covidx.progbar.Progbar(len(paths), verbose=1, stream=sys.stderr) if len(paths) > args.batch_size else None
    for start in range(0, len(paths), args.batch_size):
        chunk, arrays, errors = paths[start:start + args.batch_size], [], {}
        for path in chunk:
            try:
                arrays.append(img_to_array(load_img(path, target_size=(224, 224))))
            except (ImageFileError, OSError) as e:
                errors[path] = str(e)
        probs = iter(model.predict(model.preprocess(np.stack(arrays)), verbose=0)) if arrays else iter(())
        for path in chunk:
            if path in errors:
                failed += 1
                records.append({"path": path, "error": errors[path]})
                continue
            p = next(probs)
            rec = {"path": path, "probabilities": {n: float(v) for n, v in zip(names, p)}}
            rec["predicted"] = names[int(np.argmax(p))] if len(p) > 1 else names[int(p[0] > 0.5)]
            records.append(rec)
        if bar:
            bar.update(min(start + args.batch_size, len(paths)))
    write_records(records, names, args)
    return 1 if failed else 0


def write_records(records, names, args):
    out = sys.stdout
    if args.json:
        json.dump(records, out, indent=1)
        out.write("\n")
        return
    if args.csv:
        w = csv.writer(out)
        w.writerow(["path"] + names + ["predicted", "error"])
        for r in records:
            probs = r.get("probabilities", {})
            w.writerow([r["path"]] + ["%.6f" % probs[n] if n in probs else "" for n in names]
                       + [r.get("predicted", ""), r.get("error", "")])
        return
    width = max([len("file")] + [len(r["path"]) for r in records])
    out.write("%-*s  %s  predicted\n" % (width, "file", "  ".join("%8s" % n for n in names)))
    for r in records:
        if "error" in r:
            out.write("%-*s  ERROR: %s\n" % (width, r["path"], r["error"]))
        else:
            out.write("%-*s  %s  %s\n" % (width, r["path"], "  ".join("%8.4f" % r["probabilities"][n] for n in names),
                                          r["predicted"]))


def cmd_info(args):
    covidx.show_config()
    from covidx import model as model_mod

    path = model_mod.default_model_path()
    if path:
        card = os.path.join(os.path.dirname(path), "MODEL_CARD.md")
        print("shipped model: %s (%.1f MB)" % (path, os.path.getsize(path) / 1e6))
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as f:
                summary = [line.rstrip() for line in f if line.startswith(("|", "**", "- **"))][:14]
            print("model card (%s):\n  %s" % (card, "\n  ".join(summary)))
    else:
        print("shipped model: none installed")
    return 0


def parser():
    ap = argparse.ArgumentParser(prog="covidx", description="ResNet50 chest X-ray diagnosis (COVID-19 vs Normal). "
                                 "Research use only; not for clinical decisions.")
    ap.add_argument("--threads", type=int, help="engine threads (default: the CPUs available)")
    sub = ap.add_subparsers(dest="command")
    ev = sub.add_parser("evaluate", help="evaluate on a folder with one sub-folder per class")
    ev.add_argument("dir", nargs="?", help="default: the bundled sample X-rays")
    pr = sub.add_parser("predict", help="classify image files")
    pr.add_argument("paths", nargs="+")
    fmt = pr.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="stdout holds only JSON: one record per file")
    fmt.add_argument("--csv", action="store_true")
    for p in (ev, pr):
        p.add_argument("--model", help="a model file (default: the shipped model)")
        p.add_argument("--batch-size", type=int, default=16)
    sub.add_parser("info", help="versions, OpenBLAS kernel, threads, model card")
    sub.add_parser("samples", help="the same as `covidx evaluate` on the bundled samples")
    return ap


def main(argv=None):
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.threads:
        covidx.set_num_threads(args.threads)
    command = args.command or "evaluate"
    try:
        if command in ("evaluate", "samples"):
            if command == "samples" or not hasattr(args, "dir"):
                args.dir, args.model, args.batch_size = None, None, 16
            return cmd_evaluate(args)
        if command == "predict":
            return cmd_predict(args)
        return cmd_info(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print("covidx %s: %s" % (command, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covidx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
