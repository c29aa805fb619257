"""Temperature calibration of a classifier's outputs: softmax(z / T), one T fitted on held-out
images by minimising their negative log-likelihood, then folded into the last Dense layer
(kernel / T, bias / T gives softmax(z / T) exactly), so every runtime that reads the file gives
the calibrated probabilities. A model records it as
{'method': 'temperature', 'temperature': T, 'folded_into': layer name}.

Plain NumPy on logits and on {name: array} weight dicts; no model is built here."""
import math

import numpy as np


def nll(logits, labels, temperature=1.0):
    """Mean negative log-likelihood of softmax(logits / temperature) at the integer labels.
    logits: (n, classes); labels: (n,)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    labels = np.asarray(labels, np.int64)
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels):
    """argmin over T of nll(logits, labels, T): golden-section search on log T in
    [log 0.05, log 20] (the NLL is unimodal in T)."""
    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(100):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def fold_temperature(weights, layer, temperature):
    """A copy of the {name: array} weights with the Dense layer `layer` divided by temperature:
    softmax((x W + b) / T) == softmax(x (W / T) + b / T)."""
    t = np.float32(temperature)
    out = {k: np.array(v) for k, v in weights.items()}
    for k in (layer + "/kernel", layer + "/bias"):
        out[k] = out[k].astype(np.float32) / t
    return out


def unfold_temperature(weights, calibration):
    """The weights without a folded temperature (the uncalibrated outputs; the layer it was folded
    into in float32), or None when the calibration record is not a folded temperature."""
    cal = calibration or {}
    if cal.get("method") != "temperature":
        return None
    t = np.float32(cal["temperature"])
    out = {k: np.array(v) for k, v in weights.items()}
    last = cal["folded_into"]
    for k in (last + "/kernel", last + "/bias"):
        out[k] = out[k].astype(np.float32) * t
    return out
