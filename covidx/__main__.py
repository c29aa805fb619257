"""The covidx command (also python -m covidx):

    covidx samples   evaluate the model on the sample chest X-rays bundled with covidx (default)
    covidx info      versions, OpenBLAS kernel, threads, CPU features
"""
import sys
import time

import numpy as np

import covidx
from covidx.data import sample_files
from covidx.preprocessing.image import img_to_array, load_img

# sample folder labels -> the model's class names
LABEL_ALIASES = {"COVID-19": "COV19", "COVID": "COV19", "COV19": "COV19", "Normal": "Normal"}


def default_model():
    """The shipped model, or (where none is installed) the articles' architecture with random
    weights, said plainly."""
    try:
        return covidx.load_model(), True
    except FileNotFoundError:
        from covidx.applications.resnet50 import ResNet50

        model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), class_names=["COV19", "Normal"],
                         preprocessing={"rescale": 1.0 / 255}, seed=0)
        return model, False


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    command = args[0] if args else "samples"
    if command in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    if command == "info":
        covidx.show_config()
        return 0
    if command != "samples":
        print("covidx: unknown command %r\n\n%s" % (command, __doc__.strip()), file=sys.stderr)
        return 2
    return evaluate_samples()


def evaluate_samples():
    c = covidx.config()
    print("covidx %s | OpenBLAS %s kernel | %d threads" % (c["covidx"], c["openblas_corename"], c["threads"]))
    model, trained = default_model()
    if not trained:
        print("NOTE: no trained model is installed: running the articles' architecture with RANDOM weights,\n"
              "      so the predictions below are meaningless; they only show the pipeline working.")
    files = sample_files()
    x = np.stack([img_to_array(load_img(p, target_size=(224, 224))) for p, _ in files])
    x = model.preprocess(x)
    start = time.perf_counter()
    probs = model.predict(x)
    seconds = time.perf_counter() - start
    names = model.class_names or [str(i) for i in range(probs.shape[1])]
    correct = 0
    print("%-28s %-8s %s  predicted" % ("file", "label", "  ".join("%8s" % n for n in names)))
    for (path, label), p in zip(files, probs):
        predicted = names[int(np.argmax(p))]
        correct += LABEL_ALIASES.get(label, label) == predicted
        print("%-28s %-8s %s  %s" % ("/".join(path.split("/")[-2:]), label, "  ".join("%8.4f" % v for v in p),
                                     predicted))
    print("accuracy: %d/%d = %.3f  (%d images in %.2f s)" % (correct, len(files), correct / len(files), len(files),
                                                              seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
