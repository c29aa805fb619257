"""Out-of-distribution scores compared (development-only: it reads the measuring sets, so what it
prints informs the model card's "what was tried", never a fit). Every candidate is fitted on the
training images the shipped model was trained on; its threshold is the 0.99 quantile of the
held-out tenth (train.py's holdout_mask), as fit_unfamiliar sets it. Printed per candidate: the
share of each set above the threshold, and the ROC AUC of children's and of lateral films
against the test split (how far apart the scores are, whatever the threshold).

    python weights/compare_unfamiliar.py --shared ../shared/data/cxr [--model weights/covid_resnet50.safetensors]

Candidates: the shipped statistics; Mahalanobis distance under a shared covariance (Lee et al.
2018, covidx.unfamiliar.fit_part) on each feature set of the engine's descriptor; the relative
Mahalanobis distance (Ren et al. 2021: minus the distance to one Gaussian of all the images); the
k-th nearest training image in cosine distance on the pooled features (Sun et al. 2022); and
Gaussians of the image itself, standardised, on a grid: its brightness, its edge energy, and the
edge energy's left-right asymmetry (a frontal film is close to mirror-symmetric, a lateral view
is not).
"""
import argparse
import os
import sys

import numpy as np

import covidx
from covidx import reports, unfamiliar
from covidx.preprocessing.image import ImageDataGenerator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from measure import photograph_images  # noqa: E402
from train import holdout_mask, load_folders  # noqa: E402

SETS = ["test", "ieee8023-covid", "nih-normal", "pediatric", "lateral", "ct", "photographs"]


def load_sets(shared):
    """{name: uint8 images (n, 224, 224, 3)} as covidx reads each folder, and the training images'
    labels."""
    x, y, _ = load_folders([os.path.join(shared, "covid19-radiography", s) for s in ("train", "train-extra")])
    folders = {"test": (os.path.join(shared, "covid19-radiography", "test"), None),
               "ieee8023-covid": (os.path.join(shared, "ieee8023-covid"), None),
               "nih-normal": (os.path.join(shared, "nih-normal"), None)}
    folders.update({k: (os.path.join(shared, "unfamiliar"), [k]) for k in ("pediatric", "lateral", "ct")})
    images = {"train": x}
    for name, (directory, classes) in folders.items():
        it = ImageDataGenerator().flow_from_directory(directory, target_size=(224, 224), batch_size=64,
                                                      class_mode=None, shuffle=False, classes=classes)
        images[name] = np.concatenate([it[i] for i in range(len(it))]).astype(np.uint8)
    images["photographs"] = photograph_images().astype(np.uint8)
    return images, y


def gaussian(features, labels, components):
    """Distance function of fit_part's model (a Gaussian per class under one probabilistic-PCA
    covariance) for features that are not in the descriptor."""
    means, basis, variances, residual, _ = unfamiliar.fit_gaussian(features, labels, components)
    return lambda a: unfamiliar.gaussian_distances(a, means, basis, variances, residual)


def standardised(images):
    """Grey images (n, 224, 224), each to zero mean and unit variance."""
    a = images.astype(np.float32).mean(-1)
    return (a - a.mean((1, 2), keepdims=True)) / (a.std((1, 2), keepdims=True) + 1e-3)


def grid_mean(a, g):
    n, h, w = a.shape
    return a[:, :h // g * g, :w // g * g].reshape(n, g, h // g, g, w // g).mean((2, 4))


def brightness(images, g):
    return grid_mean(standardised(images), g).reshape(len(images), -1)


def edge_energy(images, g):
    a = standardised(images)
    e = np.zeros_like(a)
    e[:, :-1, :-1] = np.abs(np.diff(a, axis=2))[:, :-1] + np.abs(np.diff(a, axis=1))[:, :, :-1]
    return np.log(grid_mean(e, g) + 1e-3)


def edge_asymmetry(images, g):
    e = edge_energy(images, g)
    return (e - e[:, :, ::-1])[:, :, :g // 2].reshape(len(images), -1)


def knn_cosine(train, k):
    b = train / np.linalg.norm(train, axis=1, keepdims=True)

    def distances(a):
        q = a / np.linalg.norm(a, axis=1, keepdims=True)
        return np.sort(1.0 - q @ b.T, axis=1)[:, k - 1]
    return distances


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True, help="the data folder (../shared/data/cxr)")
    ap.add_argument("--model", default=os.path.join(HERE, "covid_resnet50.safetensors"))
    ap.add_argument("--seed", type=int, default=20210101, help="train.py's seed (the same held-out tenth)")
    args = ap.parse_args()
    model = covidx.load_model(args.model)
    images, labels = load_sets(args.shared)
    held = holdout_mask(labels, args.seed)
    scale = np.float32(model.preprocessing["rescale"])
    desc = {k: model.descriptors(v.astype(np.float32) * scale) for k, v in images.items()}
    fit_labels = labels[~held]

    def split(features):
        return features[~held], features[held]

    def row(name, score, features):
        """Prints one candidate's line. score(features of a set) -> (n,); features: {set: its features}."""
        threshold = np.quantile(score(split(features["train"])[1]), 0.99)
        s = {k: score(features[k]) for k in SETS}
        auc = [reports.roc_auc(np.r_[s[k], s["test"]], np.r_[np.ones(len(s[k])), np.zeros(len(s["test"]))])[0]
               for k in ("pediatric", "lateral")]
        flagged = [100.0 * np.mean(s[k] > threshold) for k in SETS]
        print("%-44s" % name + "".join("%8.1f" % v for v in flagged) + "%8.3f%8.3f" % tuple(auc), flush=True)

    print("%-44s" % "candidate (directions)" + "".join("%8s" % k[:7] for k in SETS) + "%8s%8s" % ("AUC ped", "AUC lat"))
    if model.unfamiliar is not None:
        row("shipped statistics (%s)" % ", ".join(model.unfamiliar.features), model.unfamiliar.scores, desc)
    for feature in ("avg_pool", "layout", "stage3_stats", "stage4_stats", "thumbnail"):
        sel = {k: unfamiliar._select(feature, v) for k, v in desc.items()}
        for components in (16, 128):
            part, _ = unfamiliar.fit_part(feature, split(sel["train"])[0], fit_labels, components)
            row("Mahalanobis %s (%d)" % (feature, components), part.distances, sel)
            everything, _ = unfamiliar.fit_part(feature, split(sel["train"])[0], np.zeros_like(fit_labels),
                                                components)
            row("relative Mahalanobis %s (%d)" % (feature, components),
                lambda f, p=part, e=everything: p.distances(f) ** 2 - e.distances(f) ** 2, sel)
    pooled = {k: unfamiliar._select("avg_pool", v).astype(np.float64) for k, v in desc.items()}
    for k in (1, 10):
        row("nearest neighbour %d, pooled, cosine" % k, knn_cosine(split(pooled["train"])[0], k), pooled)
    for name, fn in (("brightness", brightness), ("edge energy", edge_energy), ("edge asymmetry", edge_asymmetry)):
        for g in (16, 32):
            feats = {k: fn(v, g).reshape(len(v), -1) for k, v in images.items()}
            for components in (16, 128):
                if components < feats["train"].shape[1]:
                    row("%s %dx%d (%d)" % (name, g, g, components),
                        gaussian(split(feats["train"])[0], fit_labels, components), feats)


if __name__ == "__main__":
    main()
