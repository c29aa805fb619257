"""The covidx command (also python -m covidx).

    covidx evaluate [DIR] [--report FILE.html]
                                          evaluate the model on a folder with one sub-folder per class
                                          (default: the sample X-rays bundled with covidx); --report
                                          also writes a one-page HTML report (needs matplotlib)
    covidx predict PATH... [--json|--csv] [--gradcam DIR]
                                          classify image and DICOM files (folders are searched
                                          recursively); --gradcam writes a Grad-CAM overlay per file.
                                          With --json or --csv, stdout holds only the records;
                                          progress and notes go to stderr
    covidx info                           versions, OpenBLAS kernel, threads, CPU, the model card summary

Options: --model FILE (a model file instead of the shipped model), --rescale FACTOR (the input
scaling the model was trained with, e.g. 1/255; needed for Keras files, which do not record it),
--class-names A,B (the model's classes in output order), --batch-size N, --threads N, --version.
Exit status: 0 success, 1 some files could not be read (the others are reported), 2 usage or
model errors, or a missing optional package (pydicom, matplotlib); 130 interrupted; 141 the
reader of stdout went away (a closed pipe)."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from importlib import metadata

import numpy as np

import covidx
import warnings
from covidx import explain, losses, plots, report_html, reports
from covidx import model as model_mod
from covidx.applications.resnet50 import ResNet50
from covidx.data import SAMPLES_DIR
from covidx.display import printable, spreadsheet_cell
from covidx.evaluation import apply_alignment, class_alignment
from covidx.file_scoring import image_files, output_names, predicted_name, read_batch
from covidx.preprocessing.image import ImageDataGenerator
from covidx.report_html import check_destination, csv_path
from covidx.scaling import describe_preprocessing


def load_default_or(path, precision="fp32", class_names=None):
    """(model, trained): the given file, the shipped model, or (where none is installed) the
    articles' architecture with random weights, said plainly. precision: 'fp32', 'bf16' or 'int8'."""
    if path:
        return covidx.load_model(path, precision=precision, class_names=class_names), True
    try:
        return covidx.load_model(precision=precision, class_names=class_names), True
    except FileNotFoundError:
        model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512),
                         class_names=class_names or ["COV19", "Normal"],
                         preprocessing={"rescale": 1.0 / 255}, seed=0, precision=precision)
        print("NOTE: no trained model is installed: running the articles' architecture with RANDOM weights; "
              "its predictions are meaningless.", file=sys.stderr)
        return model, False


def prepare(args):
    """(model, trained, scaling) with the command line's --class-names and --rescale applied;
    scaling: the input scaling in words, for the header and the outputs. Refuses (UsageError) where
    the input scaling matters and neither the file nor the command line says what it is."""
    model, trained = load_default_or(args.model, args.precision, args.class_names)
    file_says = model.preprocessing
    if args.rescale is not None:
        model.preprocessing = {"rescale": args.rescale[1]}
        how = "rescale=%s (--rescale)" % args.rescale[0]
        if file_says is not None and file_says != model.preprocessing:
            how += "; the model file records %s" % describe_preprocessing(file_says)
    elif file_says is not None:
        how = "%s (recorded in the model file)" % describe_preprocessing(file_says)
    elif model.architecture.get("rescaling"):
        how = "raw 0..255 pixels (the model's own Rescaling layer scales them)"
    elif model.architecture.get("input_norm"):
        how = "raw 0..255 pixels (the model standardises each image, so their scale does not matter)"
    else:
        raise UsageError("%s does not record the input scaling the model was trained with (Keras files do not), "
                         "and its outputs depend on it: say it with --rescale, e.g. --rescale 1/255 for a model "
                         "trained on ImageDataGenerator(rescale=1./255) as in the articles, or --rescale 1 for raw "
                         "0..255 pixels" % (args.model or "the model file"))
    return model, trained, how


def print_header(args, model, scaling, stream=None):
    """Which model, which classes, which input scaling: printed once the command line has passed
    its checks, before the work. stream: sys.stdout (looked up at the call, so a redirected
    stdout gets it) unless given."""
    stream = sys.stdout if stream is None else stream
    names = model.class_names or "none recorded (outputs numbered; --class-names names them)"
    print("model: %s (%s), classes: %s" % (args.model or "the shipped model", model.name, names), file=stream)
    print("input scaling: %s" % scaling, file=stream)


def generator_for(model):
    """An ImageDataGenerator that applies the model's recorded preprocessing."""
    p = model.preprocessing
    if isinstance(p, dict) and set(p) == {"rescale"}:
        return ImageDataGenerator(rescale=p["rescale"])
    if p is None:
        return ImageDataGenerator()
    return ImageDataGenerator(preprocessing_function=lambda x: model.preprocess(x[None])[0])


def image_paths(paths):
    """Files as given; folders searched recursively for images and .dcm files."""
    return image_files(paths)


def cmd_evaluate(args):
    if args.report:
        plots.require_matplotlib()  # before the work, not after it
        check_destination(args.report, "--report")
        check_destination(csv_path(args.report), "--report's per-image CSV")
    directory = args.dir or SAMPLES_DIR
    if not os.path.isdir(directory):
        print("covidx evaluate: no such directory: %s" % directory, file=sys.stderr)
        return 2
    model, trained, scaling = prepare(args)
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
    check_classes(model, it)  # before the forward pass, not after it
    mapping, message = class_alignment(model, it)
    print_header(args, model, scaling)
    if message:
        print(message)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable files are listed at the end instead
        if model.unfamiliar is not None:
            p, scores = model.predict(it, verbose=1, return_unfamiliar=True)
        else:
            p, scores = model.predict(it, verbose=1), None

    labels = apply_alignment(it.classes.astype(np.float32), mapping, "sparse", p.shape[1]).astype(int)
    ok = ~np.isnan(p).any(axis=1)
    if not ok.any():
        print("covidx evaluate: none of the %d images under %s could be read:" % (len(ok), directory))
        print_skipped(it.skipped)
        return 1
    names = model.class_names or class_names_of(it, mapping, p.shape[1])
    loss = (losses.sparse_categorical_crossentropy(labels[ok], p[ok]) if p.shape[1] > 1
            else losses.binary_crossentropy(labels[ok], p[ok]))
    acc = np.mean((np.argmax(p[ok], 1) if p.shape[1] > 1 else (p[ok, 0] > 0.5)) == labels[ok])
    print("%d images - accuracy: %.4f - loss: %.4f" % (int(ok.sum()), acc, float(np.mean(loss))))
    result = reports.classification_summary(labels[ok], p[ok], names)
    print(reports.format_summary(result))
    if not trained:
        print("(random weights: these numbers only show the pipeline working)")
    flagged = unfamiliar_files(it.filepaths, scores, ok)
    print_unfamiliar(flagged, int(ok.sum()), scores is not None)
    if args.report:
        write_html_report(args.report, model, it, labels[ok], p[ok], names, ok, directory,
                          None if scores is None else scores[ok], scaling)
    if it.skipped:
        print("%d file(s) could not be read:" % len(it.skipped))
        print_skipped(it.skipped)
        return 1
    return 0


def check_classes(model, it):
    """A folder whose classes cannot be matched to a model without class names is refused before
    the work, with the command line's way to say them (--class-names)."""
    folders = sorted(it.class_indices, key=it.class_indices.get)
    units = model.output_shape[-1]
    outputs = 2 if units == 1 else units
    if model.class_names is None and len(folders) != outputs:
        raise UsageError("the folder has %d class%s %s but the model has %d outputs and records no class names, so "
                         "covidx cannot tell which output %s: give the model's classes in output order with "
                         "--class-names, e.g. --class-names %s"
                         % (len(folders), "" if len(folders) == 1 else "es", folders, outputs,
                            "it is" if len(folders) == 1 else "each is",
                            ",".join(folders[:outputs] + ["CLASS%d" % i for i in range(len(folders), outputs)])))


def class_names_of(it, mapping, units):
    """Column names for a model without class names: the folder's classes, which Keras matches to
    the outputs by position (as aligned), else the output numbers."""
    folders = sorted(it.class_indices, key=it.class_indices.get)
    if mapping is None and len(folders) == max(units, 2):
        return folders
    return [str(i) for i in range(max(units, 2))]


def print_skipped(skipped):
    for path, reason in skipped:
        print("  %s: %s" % (printable(path), printable(reason)))


def unfamiliar_files(paths, scores, ok):
    """[(path, score)] of the readable images scored above 1, highest first."""
    if scores is None:
        return []
    flagged = [(path, float(s)) for path, s, good in zip(paths, scores, ok) if good and s > 1]
    return sorted(flagged, key=lambda item: -item[1])


def print_unfamiliar(flagged, scored, available):
    if not available:
        print("unfamiliar images: not checked (this model has no out-of-distribution statistics; "
              "covidx.fit_unfamiliar fits them)")
        return
    print("unfamiliar images: %d of %d (unlike the training images; their predictions deserve less trust)"
          % (len(flagged), scored))
    for path, score in flagged:
        print("  %s: score %.2f" % (printable(path), score))


def write_html_report(path, model, it, labels, probs, names, ok, directory, scores=None, scaling=None):
    files = [f for f, good in zip(it.filepaths, ok) if good]
    report_html.write_report(path, labels, probs, names, files=files, model=model, skipped=it.skipped,
                             source=directory, unfamiliar=scores, scaling=scaling)
    print("report written to %s (every image's result: %s)" % (printable(path), printable(report_html.csv_path(path))))


def cmd_predict(args):
    paths = image_paths(args.paths)
    if not paths:
        print("covidx predict: no image files given", file=sys.stderr)
        return 2
    model, _, scaling = prepare(args)
    names = output_names(model)
    try:
        heatmaps = HeatmapWriter(model, args.gradcam) if args.gradcam else None
    except OSError as e:
        raise UsageError("--gradcam: cannot create the folder %s (%s)" % (args.gradcam, e.strerror or e)) from None
    print_header(args, model, scaling, sys.stderr)  # stdout holds only the results
    records, failed = [], 0
    long_run = len(paths) > args.batch_size or (heatmaps and len(paths) > 1)
    bar = covidx.progbar.Progbar(len(paths), verbose=1, stream=sys.stderr) if long_run else None
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        arrays, errors, images = read_batch(chunk, (224, 224), keep_images=bool(heatmaps))
        inputs = {p: model.preprocess(arrays[p][None])[0] for p in chunk if p in arrays}
        for path, x in inputs.items():
            if not np.isfinite(x).all():
                errors[path] = "%s: NaN or infinite values after the model's preprocessing" % path
        arrays = [inputs[p] for p in chunk if p in inputs and p not in errors]
        scores = iter(())
        if not arrays:
            probs = iter(())
        elif model.unfamiliar is not None:
            probs, scores = (iter(a) for a in model.predict(np.stack(arrays), verbose=0, return_unfamiliar=True))
        else:
            probs = iter(model.predict(np.stack(arrays), verbose=0))
        for path in chunk:
            if path in errors:
                failed += 1
                records.append({"path": path, "error": errors[path], "preprocessing": scaling})
                continue
            p = next(probs)
            score = next(scores, None)
            rec = {"path": path, "probabilities": {n: float(v) for n, v in zip(names, p)},
                   "predicted": predicted_name(p, names),
                   "unfamiliar": None if score is None else bool(score > 1),
                   "unfamiliar_score": None if score is None else round(float(score), 4),
                   "preprocessing": scaling}
            if heatmaps:
                try:
                    rec["gradcam"] = heatmaps.write(path, images[path], p)
                except (OSError, ValueError) as e:  # the file's result is kept; its overlay is reported missing
                    failed += 1
                    reason = e.strerror if isinstance(e, OSError) and e.strerror else e
                    rec["gradcam"], rec["gradcam_error"] = None, "%s: %s" % (path, reason)
                    print("covidx predict: no Grad-CAM overlay for %s" % printable(rec["gradcam_error"]),
                          file=sys.stderr)
            records.append(rec)
        if bar:
            bar.update(min(start + args.batch_size, len(paths)))
    if model.unfamiliar is None:
        print("note: this model has no out-of-distribution statistics, so no image is checked for being unlike "
              "the training images", file=sys.stderr)
    write_records(records, names, args)
    if heatmaps and heatmaps.written:
        print("%d Grad-CAM overlay(s) written to %s" % (heatmaps.written, args.gradcam), file=sys.stderr)
    return 1 if failed else 0


class HeatmapWriter:
    """Writes DIR/<file name without extension>.gradcam.png for each file: the Grad-CAM of its
    predicted class."""

    def __init__(self, model, directory):
        explain._head(model)  # a model without a class score fails here, before any work
        os.makedirs(directory, exist_ok=True)
        self.model, self.directory, self.written, self.taken = model, directory, 0, set()

    def write(self, path, image, probabilities):
        index = int(np.argmax(probabilities)) if len(probabilities) > 1 else int(probabilities[0] > 0.5)
        out = self.unique_name(os.path.splitext(os.path.basename(path))[0])
        explain.gradcam(self.model, image, index).save(out)
        self.written += 1
        return out

    def unique_name(self, base):
        """DIR/base.gradcam.png, numbered when two inputs share a file name; base is shortened where
        the name would be longer than the file system allows (a legal 250-byte input name)."""
        n, out = 1, self.fitted(base, ".gradcam.png")
        while out in self.taken:
            n += 1
            out = self.fitted(base, "-%d.gradcam.png" % n)
        self.taken.add(out)
        return out


    def fitted(self, base, suffix):
        try:
            limit = os.pathconf(self.directory, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            limit = 255
        while base and len(os.fsencode(base + suffix)) > limit:
            base = base[:-1]
        return os.path.join(self.directory, base + suffix)


class SpreadsheetSafeWriter:
    """csv.writer whose text cells are printable and never read as formulas (covidx.display)."""

    def __init__(self, out):
        self.writer = csv.writer(out)

    def writerow(self, cells):
        self.writer.writerow([spreadsheet_cell(c) if isinstance(c, str) else c for c in cells])


def write_records(records, names, args):
    out = sys.stdout
    if args.json:
        json.dump(records, out, indent=1)
        out.write("\n")
        return
    if args.csv:
        w = SpreadsheetSafeWriter(out)
        heatmaps = ["gradcam"] if args.gradcam else []
        w.writerow(["path"] + names + ["predicted", "unfamiliar", "unfamiliar_score", "error"] + heatmaps
                   + ["preprocessing"])
        for r in records:
            probs = r.get("probabilities", {})
            flag, score = r.get("unfamiliar"), r.get("unfamiliar_score")
            w.writerow([r["path"]] + ["%.6f" % probs[n] if n in probs else "" for n in names]
                       + [r.get("predicted", ""), "" if flag is None else str(flag).lower(),
                          "" if score is None else "%.4f" % score, r.get("error", "")]
                       + [r.get("gradcam") or r.get("gradcam_error", "") for _ in heatmaps]
                       + [r.get("preprocessing", "")])
        return
    # one line per file whatever its name holds (a newline in a name forged a row): covidx.display
    records = [dict(r, path=printable(r["path"]), **({"error": printable(r["error"])} if "error" in r else {}))
               for r in records]
    width = max([len("file")] + [len(r["path"]) for r in records])
    checked = any(r.get("unfamiliar") is not None for r in records)
    out.write("%-*s  %s  predicted%s\n" % (width, "file", "  ".join("%8s" % printable(n) for n in names),
                                          "  unfamiliar (score)" if checked else ""))
    for r in records:
        if "error" in r:
            out.write("%-*s  ERROR: %s\n" % (width, r["path"], r["error"]))
            continue
        flag = ""
        if r.get("unfamiliar") is not None:
            flag = "  %-10s (%.2f)" % ("YES" if r["unfamiliar"] else "no", r["unfamiliar_score"])
        out.write("%-*s  %s  %-9s%s\n" % (width, r["path"], "  ".join("%8.4f" % r["probabilities"][n] for n in names),
                                         printable(r["predicted"]), flag))


def cmd_info(args):
    covidx.show_config()
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
    print("optional packages: %s" % ", ".join("%s %s" % (name, version) for name, version in optional_versions()))
    return 0


def optional_versions():
    """(package, version or 'not installed') for the optional extras."""
    out = []
    for name in ("pydicom", "matplotlib", "dask", "distributed", "pandas"):
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


class UsageError(Exception):
    """A command line that cannot be carried out: exit status 2 and a one-line message."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (and the exit status 2, as argparse's)."""

    def error(self, message):
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % text)
    return value


def thread_count(text):
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError("expected 1 to 64 threads, got %r" % text)
    return value


def scale_factor(text):
    """('1/255', 0.00392...): a positive number or fraction, as typed and as a float."""
    try:
        parts = [float(t) for t in text.split("/")]
        value = parts[0] / parts[1] if len(parts) == 2 else parts[0] if len(parts) == 1 else float("nan")
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError("expected a positive number or fraction such as 1/255, got %r" % text)
    return text, value


def class_names(text):
    names = [n.strip() for n in text.split(",")]
    if len(names) < 1 or not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("expected distinct class names separated by commas, e.g. COV19,Normal, "
                                         "got %r" % text)
    return names


def parser():
    ap = ArgumentParser(prog="covidx", description="ResNet50 chest X-ray diagnosis (COVID-19 vs Normal). "
                        "Research use only; not for clinical decisions.")
    ap.add_argument("--version", action="version", version="covidx %s" % covidx.__version__,
                    help="print covidx's version and exit")
    ap.add_argument("--threads", type=thread_count, help="engine threads, 1 to 64 (default: the CPUs available)")
    sub = ap.add_subparsers(dest="command", metavar="{evaluate,predict,info,samples}",
                            help="what to do (default: evaluate on the bundled samples); COMMAND --help for its "
                            "options")
    ev = sub.add_parser("evaluate", help="evaluate on a folder with one sub-folder per class")
    ev.add_argument("dir", nargs="?", help="a folder with one sub-folder of images per class (default: the bundled "
                    "sample X-rays)")
    ev.add_argument("--report", metavar="FILE.html", help="also write a one-page HTML report (needs matplotlib)")
    pr = sub.add_parser("predict", help="classify image files")
    pr.add_argument("paths", nargs="+", help="image or DICOM files, or folders (searched "
                    "recursively)")
    fmt = pr.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="stdout holds only JSON: one record per file")
    fmt.add_argument("--csv", action="store_true", help="stdout holds only CSV: a header row, then one row per file")
    pr.add_argument("--gradcam", metavar="DIR", help="write a Grad-CAM overlay of the predicted class per file")
    for p in (ev, pr):
        p.add_argument("--model", metavar="FILE", help="a model file: covidx .safetensors, Keras .keras/.h5, "
                       "PyTorch state_dict (default: the shipped model)")
        p.add_argument("--rescale", type=scale_factor, metavar="FACTOR",
                       help="multiply the pixel values (0..255) by FACTOR before the model, as "
                       "ImageDataGenerator(rescale=FACTOR) does: 1/255 for a model trained on rescale=1./255 as "
                       "in the articles, 1 for raw pixels. Needed for Keras files, which do not record it "
                       "(default: what the model file records)")
        p.add_argument("--class-names", type=class_names, metavar="A,B",
                       help="the model's classes in output order, comma-separated, e.g. COV19,Normal (default: the "
                       "names the model file records; Keras files record none)")
        p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                       help="images per forward pass (default 16)")
        p.add_argument("--precision", choices=covidx._config.precisions(), default="fp32",
                       help="bf16: faster on CPUs with AMX or AVX512_BF16, outputs within bf16 rounding of fp32; "
                       "int8: faster on CPUs with AVX2 or VNNI, for models calibrated with Model.calibrate_int8 "
                       "(default fp32; `covidx info` shows the kernel each uses)")
    sub.add_parser("info", help="versions, OpenBLAS kernel, GEMM kernel per precision, threads, model card")
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
                args.dir, args.model, args.batch_size, args.report = None, None, 16, None
                args.precision, args.rescale, args.class_names = "fp32", None, None
            return cmd_evaluate(args)
        if command == "predict":
            return cmd_predict(args)
        return cmd_info(args)
    except (ValueError, FileNotFoundError, PermissionError, ImportError, UsageError) as e:
        print("covidx %s: %s" % (command, " ".join(str(e).split())), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covidx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (covidx predict ... | head): stop quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
