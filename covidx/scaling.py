"""What a model expects of its input pixels: Keras's ResNet50 preprocess_input, a model's
recorded preprocessing applied and described, and the warning for raw 0-255 images given to a
model trained on scaled ones. A leaf: models, evaluation, training and the CLI use it."""
from __future__ import annotations

import warnings

import numpy as np

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def describe_preprocessing(p):
    """A model's recorded preprocessing in words: 'rescale=1/255', "preprocess_input(mode='caffe')",
    or 'none (images as given)'."""
    if isinstance(p, dict) and set(p) == {"rescale"}:
        f = float(p["rescale"])
        for d in (255, 127.5):
            if f > 0 and abs(f * d - 1) < 1e-9:
                return "rescale=1/%g" % d
        return "rescale=%.8g" % f
    if p in ("caffe", "tf", "torch"):
        return "preprocess_input(mode=%r)" % p
    return "none (images as given)" if p is None else repr(p)


def warn_if_unscaled(model, x):
    """Warns once per model when images look like raw 0-255 values but the model's recorded
    preprocessing scales them (rescale=1/255: it was trained on 0..1): its outputs would be
    plausible-looking numbers that mean nothing. Only the first 32 images are looked at. A
    model that standardises each image first (an input LayerNormalization) is left alone: the
    images' scale changes its outputs only through the normalisation's epsilon."""
    p = model.preprocessing
    if not (isinstance(p, dict) and set(p) == {"rescale"}) or model.__dict__.get("_warned_unscaled"):
        return
    if model.architecture.get("input_norm"):
        return
    factor = float(p["rescale"])
    sample = np.asarray(x[:32])
    if not 0 < factor < 0.5 or not sample.size or sample.dtype.kind not in "biuf":
        return
    top = float(np.max(sample))
    if top > 2 * 255 * factor:
        model.__dict__["_warned_unscaled"] = True
        warnings.warn("covidx: the images given to model %r reach %g, but its recorded preprocessing is rescale=%.6g "
                      "(it was trained on images scaled to 0..%g), so its outputs will be meaningless. Scale them "
                      "first: ImageDataGenerator(rescale=%.6g), x * %.6g, or model.preprocess(x)."
                      % (model.name, top, factor, 255 * factor, factor, factor), UserWarning, stacklevel=3)


def preprocess_input(x, data_format=None, mode="caffe"):
    """Keras's ResNet50 preprocessing ('caffe': RGB->BGR, minus the ImageNet channel means).
    Float arrays are changed in place and returned, as in Keras; others are converted to float32."""
    if data_format not in (None, "channels_last", "channels_first"):
        raise ValueError("data_format: expected 'channels_last' or 'channels_first', got %r" % (data_format,))
    if mode not in ("caffe", "tf", "torch"):
        raise ValueError("mode: expected 'caffe', 'tf' or 'torch', got %r" % (mode,))
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError("x: expected a numeric array, got dtype %s" % x.dtype)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    axis = 0 if (data_format == "channels_first" and x.ndim == 3) else (1 if data_format == "channels_first" else -1)
    if x.shape[axis] != 3:
        raise ValueError("x: expected 3 channels on axis %d, got shape %s" % (axis, x.shape))
    shape = [1] * x.ndim
    shape[axis] = 3
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        x -= np.array([0.485, 0.456, 0.406], dtype=x.dtype).reshape(shape)
        x /= np.array([0.229, 0.224, 0.225], dtype=x.dtype).reshape(shape)
        return x
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, -1)
    x = x[tuple(index)]
    x -= CAFFE_MEAN_BGR.astype(x.dtype).reshape(shape)
    return x


def preprocess(p, x, name="model"):
    """Applies a recorded preprocessing p (None, 'caffe', 'tf', 'torch' or {'rescale': factor})
    to raw 0-255 RGB images x (batch, h, w, 3); name: the model's, for the error."""
    if p is None:
        return x
    if isinstance(p, dict) and set(p) == {"rescale"}:
        return np.asarray(x, dtype=np.float32) * np.float32(p["rescale"])
    if p in ("caffe", "tf", "torch"):
        return preprocess_input(np.array(x, dtype=np.float32), mode=p)
    raise ValueError("model %r: unknown preprocessing %r (expected 'caffe', 'tf', 'torch', "
                     "{'rescale': factor} or None)" % (name, p))
