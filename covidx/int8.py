"""Calibrating the int8 mode (Model.calibrate_int8, precision='int8').

In int8 every convolution but the stem reads its input quantised to 7 bits, q = rint(clip(x /
scale, 0, 127)) (the inputs follow a ReLU, so they are never negative), with one scale per
convolution for all images. The scales come from the images given here, which must be training
images (never the images the model is measured on): a forward pass in fp32 counts each
convolution's input values in a histogram (bins 0.8 % wide, from the engine), and each scale is
chosen from its histogram:

- 'clip-weighted' (the default): the clipping point T (scale = T / 127) with the least expected
  squared error over the histogram, clipping (values above T) plus rounding (a step of T / 127:
  values below half a step become 0, the others err by step^2 / 12 on average), with each clipped
  value's error counted CLIP_WEIGHT (10) times. Rounding errors fall on either side and partly
  cancel in a convolution's sums; clipping always lowers the largest inputs, the strongest
  features, so its errors add up, and an image whose features run above the calibration images'
  range is clipped where they matter most. On the 458 held-out training images of the shipped
  model (never a measuring set), calibrated on two draws of 256 other training images of each
  class, against 'mse': rms logit error 0.072 / 0.072 -> 0.059 / 0.060, its 99th percentile
  0.32 / 0.30 -> 0.17 / 0.18, largest probability difference 0.088 / 0.112 -> 0.082 / 0.060
  (the weight: 3, 10, 30 and 100 tried on 96 of them, benchmarks/int8_error_study.py; 10 best
  or level);
- 'mse': the same without the weight (each error counted once);
- 'max': T the largest value seen (no clipping, coarser steps).

Two convolutions stay in fp32 by default (keep_fp32): the first block's conv1 and shortcut, which
read the stem's max-pooled output: on 160 held-out training images of an earlier shipped model
(stage 1j), quantising these two alone made about four fifths of the int8 mode's squared logit
error (on stage 1k, 458 images: about half), and they hold under 2 % of the network's
multiply-adds.

The weights (batchnorm folded) are quantised per output channel when the mode is switched on;
nothing about them is calibrated. The images are read through the one batch pipeline
(covidx.batches), as predict reads them."""
from __future__ import annotations

import numpy as np

from . import architecture, batches, checks
from .progbar import Progbar

METHODS = ("clip-weighted", "mse", "max")
CLIP_WEIGHT = 10.0  # 'clip-weighted': a clipped value's squared error counts this many times
STEM_READERS = ("conv2_block1_1_conv", "conv2_block1_0_conv")  # read the stem's max-pooled output
BINS = 32768
QMAX = 127  # the largest quantised input (csrc/gemm_int8.h's I8_AMAX)
# each bin's lower edge and middle, as float64 (bin b: the float32 values whose upper 16 bits are b)
with np.errstate(invalid="ignore"):  # the bins past infinity hold NaN bit patterns, never counted
    _EDGES = (np.arange(BINS + 1, dtype=np.uint64) << np.uint64(16)).astype(np.uint32).view(np.float32).astype(np.float64)
_EDGES[0x7f81:] = np.inf
_MIDDLES = (_EDGES[:-1] + _EDGES[1:]) / 2


def conv_names(arch):
    """The engine's convolutions in its order (conv1 first): their Keras layer names."""
    return [name + "_conv" for name, *_ in architecture.conv_layers(arch["variant"])]


def histograms(model, x, batch_size=None, steps=None, verbose=0):
    """(convolutions, BINS) counts of each convolution's input values over the images in x, in
    fp32 (the model's precision is restored after), and the number of images."""
    batches.require_data(x, "calibrate_int8")
    _, stream, total = batches.one_pass(x, batch_size=batch_size, steps=steps)
    bar = Progbar(total, verbose=verbose) if verbose else None
    engine, total_hist, images, step = model._engine, None, 0, 0
    restore = model._precision != "fp32"
    if restore:
        engine.set_precision("fp32")
    try:
        for bx, _, _, ok, _, _ in stream:
            step += 1
            if isinstance(bx, list):
                raise ValueError("calibrate_int8: models with several inputs are not supported")
            if ok is not None:
                bx = bx[ok]
            if len(bx) == 0:
                continue
            h = engine.activation_histograms(checks.images(bx))
            total_hist = h if total_hist is None else total_hist + h
            images += len(bx)
            if bar:
                bar.update(step, [], finalize=False)
    finally:
        if restore:
            model._kernel = tuple(engine.set_precision(model._precision))
    if bar:
        bar.update(total if total is not None else step, [], finalize=True)
    if not images:
        raise ValueError("calibrate_int8: the data produced no images")
    return total_hist, images


def scale_from_histogram(counts, method="clip-weighted"):
    """The input scale of one convolution from its histogram (see the module's docstring)."""
    if method == "max":
        bins = np.flatnonzero(counts[1:]) + 1
        return float(np.float32(_EDGES[bins[-1] + 1] / QMAX)) if bins.size else 1.0
    return float(np.float32(clipping_point(counts, CLIP_WEIGHT if method == "clip-weighted" else 1.0) / QMAX))


def clipping_point(counts, clip_weight, levels=QMAX):
    """The clipping point T (float64) of least expected squared error over the histogram, the
    rounding step T / levels, each clipped value's error counted clip_weight times; T / levels for
    an input that was always 0 (any scale gives the same result: the scale is then 1)."""
    bins = np.flatnonzero(counts[1:]) + 1  # bin 0: zeros, exact at any scale
    if bins.size == 0:
        return float(levels)
    values, n = _MIDDLES[bins], counts[bins].astype(np.float64)
    # candidate clipping points: 400 from 1/400 of the largest value up to it, spaced evenly in log
    cand = _EDGES[bins[-1] + 1] * np.logspace(np.log10(1 / 400), 0, 400)
    errs = np.empty(cand.size)
    for i in range(0, cand.size, 50):  # in slices: values x candidates stays small
        t = cand[i:i + 50, None]
        step = t / levels
        err = np.where(values > t, clip_weight * (values - t) ** 2, np.minimum(values ** 2, step ** 2 / 12))
        errs[i:i + 50] = (err * n).sum(axis=1)
    return float(cand[np.argmin(errs)])


def calibrate(model, x, batch_size=None, steps=None, verbose=0, method="clip-weighted", keep_fp32=STEM_READERS):
    """The model's int8 calibration from the images x: {'scales': {conv layer: scale}, 'method',
    'images'} (the stem, conv1_conv, has none: it stays fp32; the layers named in keep_fp32 get
    None: they stay fp32 too)."""
    if method not in METHODS:
        raise ValueError("method: expected 'clip-weighted', 'mse' or 'max', got %r" % (method,))
    names = conv_names(model.architecture)
    if not isinstance(keep_fp32, (list, tuple, set, frozenset)) or not all(isinstance(k, str) for k in keep_fp32):
        raise ValueError("keep_fp32: expected a list of convolution layer names, got %r" % (keep_fp32,))
    unknown = [k for k in keep_fp32 if k not in names[1:]]
    if unknown:
        raise ValueError("keep_fp32: %r is not a convolution after the stem (%s, ..., %s)"
                         % (unknown[0], names[1], names[-1]))
    hist, images = histograms(model, x, batch_size, steps, verbose)
    scales = {name: None if name in keep_fp32 else scale_from_histogram(hist[i], method)
              for i, name in enumerate(names) if i > 0}
    return {"scales": scales, "method": method, "images": int(images)}


def check_calibration(value, arch):
    """A calibration read from a file or given by the user, checked: the same dict, or a ValueError."""
    names = conv_names(arch)[1:]
    if not isinstance(value, dict) or not isinstance(value.get("scales"), dict):
        raise ValueError("int8_calibration: expected {'scales': {conv layer: scale}, ...}, got %r" % (type(value),))
    scales = value["scales"]
    missing = [n for n in names if n not in scales]
    extra = [n for n in scales if n not in names]
    if missing or extra:
        raise ValueError("int8_calibration: scales for %s, expected one per convolution after the stem (%s)"
                         % ("%d too few (first %r)" % (len(missing), missing[0]) if missing
                            else "unknown layer %r" % extra[0], names[0]))
    for n in names:
        s = scales[n]
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 1e-30 < s < 1e30):
            raise ValueError("int8_calibration: scale of %s is %r; expected a positive finite number (or None: "
                             "that convolution stays fp32)" % (n, s))
    return value


def scale_array(calibration, arch):
    """The engine's (53,) float32 scales, conv1's (unused) 1, 0 for a convolution kept in fp32."""
    names = conv_names(arch)
    return np.array([1.0] + [calibration["scales"][n] or 0.0 for n in names[1:]], np.float32)
