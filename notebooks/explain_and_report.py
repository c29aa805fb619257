# %% [markdown]
# # Where the model looks, and how well it does: Grad-CAM heatmaps and an evaluation report
#
# Real chest X-rays from `../shared/data/cxr` (the bundled samples where that folder is absent):
# Grad-CAM heatmaps of single images, an evaluation with 95% confidence intervals, the plots, a
# one-page HTML report, DICOM input and scoring on a Dask cluster.
# Research use only; not for clinical decisions.

# %%
import html
import os
import sys
import tempfile

import numpy as np

import covidx
from covidx import explain, plots, report_html, reports
from covidx.data import SAMPLES_DIR
from covidx.preprocessing.image import ImageDataGenerator

# ../shared sits beside the checkout: two levels up from notebooks/, one from the repository root
SHARED = next((p for p in ("../../shared/data/cxr", "../shared/data/cxr") if os.path.isdir(p)), None)
TEST_DIR = os.path.join(SHARED, "covid19-radiography", "test") if SHARED else None
DATA_DIR = TEST_DIR if TEST_DIR and os.path.isdir(TEST_DIR) else SAMPLES_DIR
OUT = tempfile.mkdtemp(prefix="covidx-notebook-")  # the report, a DICOM file and a model file go here
print("images from", DATA_DIR, "; files written to", OUT)

# %%
# The shipped model; where none is installed, the articles' architecture with random weights
# (the pictures then only show the pipeline working).
try:
    model = covidx.load_model()
except FileNotFoundError:
    from covidx.applications.resnet50 import ResNet50

    model = ResNet50(weights=None, classes=2, head=(1024, 1024, 1024, 512), class_names=["COV19", "Normal"],
                     preprocessing={"rescale": 1 / 255}, seed=0)
    print("NOTE: no trained model installed: random weights", file=sys.stderr)
model

# %% [markdown]
# ## Grad-CAM of single images
#
# `explain.gradcam(model, path)` reads the file at 224x224, applies the model's preprocessing and
# explains the predicted class; `.heatmap` is the 7x7 map in [0, 1] (one value per 32x32 cell),
# `.overlay` the picture with the heatmap blended on it.

# %%
def first_files(directory, per_class=3):
    out = []
    for cls in sorted(os.listdir(directory)):
        folder = os.path.join(directory, cls)
        if os.path.isdir(folder):
            out += [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:per_class]]
    return out


files = first_files(DATA_DIR)
explanations = [explain.gradcam(model, f) for f in files]
explanations[0]

# %%
from matplotlib.figure import Figure

fig = Figure(figsize=(2.6 * len(files), 5.6), layout="constrained")
axes = fig.subplots(2, len(files))
for col, (path, e) in enumerate(zip(files, explanations)):
    axes[0, col].imshow(e.image)
    axes[0, col].set_title("%s\n%s" % (os.path.basename(os.path.dirname(path)), os.path.basename(path)), fontsize=9)
    axes[1, col].imshow(e.overlay)
    axes[1, col].set_title("%s  P=%.2f" % (e.class_name, e.probabilities[e.class_index]), fontsize=9)
    for ax in axes[:, col]:
        ax.axis("off")
fig.savefig(os.path.join(OUT, "heatmaps.png"), dpi=80)
fig

# %%
# The heatmap of the other class, and the raw 7x7 numbers
other = explain.gradcam(model, files[0], 1 - explanations[0].class_index)
print(np.round(explanations[0].heatmap, 2))
other.overlay

# %% [markdown]
# ## Evaluation with confidence intervals

# %%
generator = ImageDataGenerator(preprocessing_function=lambda x: model.preprocess(x[None])[0])
it = generator.flow_from_directory(DATA_DIR, target_size=(224, 224), batch_size=32, shuffle=False,
                                   on_error="skip")
probs = model.predict(it)
from covidx.evaluation import apply_alignment, class_alignment

mapping, message = class_alignment(model, it)
labels = apply_alignment(it.classes.astype(np.float32), mapping, "sparse", probs.shape[1]).astype(int)
ok = ~np.isnan(probs).any(axis=1)
summary = reports.classification_summary(labels[ok], probs[ok], model.class_names)
print(reports.format_summary(summary))

# %%
positive = model.class_names.index(summary["positive"])
scores, truth = probs[ok, positive], labels[ok] == positive
plots.roc_figure(scores, truth, summary["positive"])

# %%
plots.precision_recall_figure(scores, truth, summary["positive"])

# %%
plots.confusion_figure(summary["confusion"], summary["class_names"])

# %% [markdown]
# ## The one-page HTML report (metrics, plots, examples with heatmaps; pictures embedded)

# %%
files_ok = [f for f, good in zip(it.filepaths, ok) if good]
report_path = report_html.write_report(os.path.join(OUT, "covidx_report.html"), labels[ok], probs[ok],
                                       model.class_names, files=files_ok, model=model, skipped=it.skipped,
                                       source=DATA_DIR)
print("report:", report_path)
from IPython.display import HTML  # noqa: E402

with open(report_path, encoding="utf-8") as f:
    page = f.read()
import warnings  # noqa: E402

with warnings.catch_warnings():  # IPython suggests IFrame, which cannot show a page held in memory
    warnings.simplefilter("ignore")
    shown = HTML('<iframe srcdoc="%s" style="width: 100%%; height: 900px; border: 0"></iframe>' % html.escape(page))
shown

# %% [markdown]
# ## DICOM input
#
# A DICOM file written with pydicom from one of the PNGs (12 bits stored, MONOCHROME1, a window),
# read back through the same `load_img` as any image.

# %%
from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from covidx.preprocessing.image import load_img  # noqa: E402

grey = np.asarray(Image.open(files[0]).convert("L"), np.float64)
stored = np.round(4095 - grey * 4095 / 255).astype(np.uint16)  # MONOCHROME1: high values are dark
meta = FileMetaDataset()
meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds = Dataset()
ds.file_meta = meta
ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
ds.Rows, ds.Columns = stored.shape
ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
ds.WindowCenter, ds.WindowWidth = 2048, 4096
ds.PixelData = stored.tobytes()
dicom_path = os.path.join(OUT, "example.dcm")
ds.save_as(dicom_path, enforce_file_format=True)
dicom_image = load_img(dicom_path, target_size=(224, 224))  # bone bright again: MONOCHROME1 inverted
explain.gradcam(model, dicom_image).overlay

# %% [markdown]
# ## Scoring many files on a Dask cluster
#
# `predict_files` cuts the list into chunks; each worker loads the model once and uses its share of
# the machine's cores. Here a LocalCluster with 2 workers; on a real cluster pass
# `Client("tcp://scheduler:8786")` and paths every worker can read.

# %%
from dask.distributed import Client, LocalCluster  # noqa: E402

from covidx.distributed import predict_files  # noqa: E402

model_path = os.path.join(OUT, "model.safetensors")
model.save(model_path, dtype="float16")
with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
    table = predict_files(files, client, model_path=model_path)
table
