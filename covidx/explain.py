"""Where the model looks: Grad-CAM and CAM heatmaps on the last convolutional block.

Grad-CAM (Selvaraju et al. 2017) weighs each of the last block's 2048 feature maps A_k
(conv5_block3_out, what Model.feature_map returns) by the gradient of the class score:

    alpha_k = mean over (h, w) of d score / d A[h, w, k]
    map     = ReLU(sum_k alpha_k A_k), divided by its maximum (a map with no positive evidence stays 0)

The class score is the *pre-activation* output (logit) of the last Dense layer, not the
probability: a saturated softmax or sigmoid (p = 1.0) has a vanishing gradient that would flatten
the map. The gradient is taken through the Dense head in NumPy (float64) with the ReLU masks of
this image's forward pass; for a single-unit sigmoid, class 0's score is -logit.

Global pooling decides how the gradient reaches A: average pooling spreads d score / d pooled_k
evenly over the H*W positions; max pooling sends it to the position of each channel's maximum
only (the first one on ties). Either way alpha_k = (d score / d pooled_k) / (H * W): the two differ
only through the head's forward pass (the pooled features and so the ReLU masks).

CAM (Zhou et al. 2016) is the special case of one Dense layer after average pooling: the class's
kernel column weighs the maps. covidx applies the same ReLU and scaling, so CAM and Grad-CAM give
the same heatmap there."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .head import activate
from .preprocessing.image import array_to_img, img_to_array, load_img

DEFAULT_SIZE = (224, 224)


class Explanation:
    """A heatmap for one image and one class.

    heatmap: (h/32, w/32) float array in [0, 1], one value per cell of the last block.
    overlay: the image with the heatmap upsampled (bilinear) and blended on it (a PIL RGB image).
    image: the image shown under the heatmap (PIL RGB). class_index, class_name, score (the logit
    explained), probabilities (the model's outputs), method ('gradcam' or 'cam')."""

    def __init__(self, heatmap, image, class_index, class_name, score, probabilities, method, alpha=0.4):
        self.heatmap = heatmap
        self.image = image
        self.class_index, self.class_name = class_index, class_name
        self.score, self.probabilities, self.method = score, probabilities, method
        self.alpha = alpha
        self._overlay = None

    def upsampled(self, size=None):
        """The heatmap resized (bilinear) to size (width, height); default: the image's size."""
        return upsample(self.heatmap, size or self.image.size)

    @property
    def overlay(self):
        if self._overlay is None:
            self._overlay = blend(self.image, self.upsampled(), self.alpha)
        return self._overlay

    def save(self, path):
        """Writes the overlay (format from the file name, e.g. .png)."""
        self.overlay.save(os.fspath(path))

    def __repr__(self):
        return "<covidx Explanation %s: class %r (index %d, logit %.4f), heatmap %dx%d>" % (
            self.method, self.class_name, self.class_index, self.score, self.heatmap.shape[0], self.heatmap.shape[1])


# --- the public functions --------------------------------------------------------------------------


def gradcam(model, image, class_index=None, *, target_size=DEFAULT_SIZE, alpha=0.4):
    """Grad-CAM of class_index (default: the predicted class) for one image.

    image: a file path (read with load_img at target_size, then the model's recorded
    preprocessing is applied), a PIL image (the same, without reading), or an array (h, w, 3) or
    (1, h, w, 3) that is the model's input exactly as predict takes it (already preprocessed).
    Returns an Explanation (.heatmap, .overlay)."""
    return _explain(model, image, class_index, target_size, alpha, "gradcam")


def cam(model, image, class_index=None, *, target_size=DEFAULT_SIZE, alpha=0.4):
    """The class activation map (CAM) for models whose head is one Dense layer after global
    average pooling; arguments and result as gradcam."""
    head = _head(model)
    if len(head) != 1 or model.architecture["pooling"] != "avg":
        raise ValueError("cam: CAM needs a single Dense layer after global average pooling; this model has %d "
                         "Dense layers and %s pooling (use covidx.explain.gradcam)"
                         % (len(head), model.architecture["pooling"]))
    return _explain(model, image, class_index, target_size, alpha, "cam")


def _explain(model, image, class_index, target_size, alpha, method):
    _head(model)  # a model without a class score fails before the forward pass
    x, shown = model_input(model, image, target_size)
    feature_map = np.asarray(model.feature_map(x)[0], np.float64)  # (H, W, 2048)
    pooled = pool(feature_map, model.architecture["pooling"])
    logits, masks = head_forward(model, pooled)
    probabilities = activate(_head(model)[-1]["activation"], logits)  # the head's own activations, in float64
    index = predicted_class(probabilities) if class_index is None else check_class(model, class_index)
    seed = score_seed(model, logits, index)
    if method == "cam":
        weights = np.asarray(model.named_weights[_head(model)[0]["name"] + "/kernel"], np.float64) @ seed
    else:
        weights = head_backward(model, masks, seed) / (feature_map.shape[0] * feature_map.shape[1])
    heatmap = normalise(np.maximum(feature_map @ weights, 0.0))
    names = class_names(model)
    return Explanation(heatmap, shown, index, names[index], float(seed @ logits), probabilities, method, alpha)


# --- the model's input and the picture under the heatmap --------------------------------------------


def model_input(model, image, target_size=DEFAULT_SIZE):
    """(x (1, h, w, 3) float32 model input, PIL RGB image to draw on)."""
    if isinstance(image, (str, bytes, os.PathLike)) or hasattr(image, "getbuffer"):
        image = load_img(image, target_size=target_size)
    if isinstance(image, Image.Image):
        if target_size is not None and image.size != (target_size[1], target_size[0]):
            image = image.resize((target_size[1], target_size[0]), Image.NEAREST)
        shown = image.convert("RGB")
        return np.asarray(model.preprocess(img_to_array(shown)[None]), np.float32), shown
    x = np.asarray(image, np.float32)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError("image: expected a file path, a PIL image or an array (h, w, 3) or (1, h, w, 3), got "
                         "shape %s" % (x.shape,))
    if not np.isfinite(x).all():
        raise ValueError("image: NaN or infinite pixel values (%d of %d); covidx explains no diagnosis for them"
                         % (x.size - np.isfinite(x).sum(), x.size))
    return x[None], array_to_img(x, scale=True).convert("RGB")


# --- the head, forward and backward, in float64 -----------------------------------------------------


def _head(model):
    head = model.architecture.get("head", [])
    if not head:
        raise ValueError("gradcam: the model has no Dense head (pooling=%r): there is no class score to explain"
                         % (model.architecture["pooling"],))
    return head


def pool(feature_map, pooling):
    """Global pooling of a (H, W, C) map, as the model does it."""
    if pooling == "max":
        return feature_map.max(axis=(0, 1))
    return feature_map.mean(axis=(0, 1))


def head_forward(model, pooled):
    """(logits of the last Dense layer, [ReLU mask of each hidden layer])."""
    weights = model.named_weights
    h, masks = pooled, []
    head = _head(model)
    for i, layer in enumerate(head):
        z = h @ np.asarray(weights[layer["name"] + "/kernel"], np.float64) + weights[layer["name"] + "/bias"]
        if i == len(head) - 1:
            return z, masks
        if layer["activation"] == "relu":
            masks.append(z > 0)
            h = np.maximum(z, 0.0)
        elif layer["activation"] in ("linear", None):
            masks.append(None)
            h = z
        else:
            raise ValueError("gradcam: hidden layer %r has activation %r; only relu or linear hidden layers are "
                             "supported" % (layer["name"], layer["activation"]))


def head_backward(model, masks, seed):
    """d (seed . logits) / d pooled features: the seed taken back through the Dense layers."""
    weights = model.named_weights
    head = _head(model)
    grad = seed
    for i in range(len(head) - 1, -1, -1):
        grad = np.asarray(weights[head[i]["name"] + "/kernel"], np.float64) @ grad
        if i > 0 and masks[i - 1] is not None:
            grad = grad * masks[i - 1]
    return grad


def score_seed(model, logits, index):
    """The vector s with class score = s . logits: a one-hot, or -1 for class 0 of a single sigmoid."""
    seed = np.zeros(len(logits))
    if len(logits) == 1:
        seed[0] = 1.0 if index == 1 else -1.0
    else:
        seed[index] = 1.0
    return seed


def class_names(model):
    units = model.output_shape[-1]
    if model.class_names:
        names = list(model.class_names)
        return names if len(names) > 1 or units > 1 else ["not " + names[0], names[0]]
    return [str(i) for i in range(max(units, 2))]


def predicted_class(probabilities):
    if len(probabilities) == 1:
        return int(probabilities[0] > 0.5)
    return int(np.argmax(probabilities))


def check_class(model, class_index):
    n = max(model.output_shape[-1], 2)
    if isinstance(class_index, str):
        names = class_names(model)
        if class_index not in names:
            raise ValueError("class_index: %r is not one of the model's classes %s" % (class_index, names))
        return names.index(class_index)
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) or not 0 <= class_index < n:
        raise ValueError("class_index: expected an integer in 0..%d or a class name, got %r" % (n - 1, class_index))
    return int(class_index)


def normalise(raw):
    top = float(raw.max())
    return raw / top if top > 0 else np.zeros_like(raw)


# --- pictures -----------------------------------------------------------------------------------------


def upsample(heatmap, size):
    """A (h, w) map in [0, 1] resized to size (width, height), bilinear, cell centres on the cells'
    receptive-field centres."""
    img = Image.fromarray(np.asarray(heatmap, np.float32), "F")
    return np.clip(np.asarray(img.resize(tuple(size), Image.BILINEAR), np.float64), 0.0, 1.0)


def jet(values):
    """The 'jet' colour map (blue -> cyan -> yellow -> red) as uint8 RGB, without matplotlib."""
    v = np.asarray(values, np.float64)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peak at 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.floor(rgb * 255 + 0.5).astype(np.uint8)


def blend(image, heatmap, alpha=0.4):
    """The image (PIL) with the heatmap (same size, [0, 1]) coloured and blended over it."""
    base = np.asarray(image.convert("RGB"), np.float64)
    mixed = (1.0 - alpha) * base + alpha * jet(heatmap)
    return Image.fromarray(np.floor(mixed + 0.5).astype(np.uint8), "RGB")
