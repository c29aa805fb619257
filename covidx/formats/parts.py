"""What a model file holds, as plain data: every reader returns Parts, and covidx.saving builds
models from them (the readers know nothing of models)."""
from __future__ import annotations


class Parts:
    """A file's architecture, named weights ({'layer/weight': array}), model name, compile
    settings, the layers' trainable flags ({layer name: bool}, of full models), class names and
    preprocessing (None where the file does not record them), calibration (a dict or None), the
    int8 calibration (int8_calibration, or None), the
    out-of-distribution statistics ((tensors, metadata JSON) or None) and the kind of file it
    came from: 'covidx' (covidx's own safetensors file), 'keras' or 'torch'."""

    def __init__(self, arch, weights, name="resnet50", compile_config=None, extra=None, trainable=None,
                 kind="keras", calibration=None, unfamiliar=None):
        self.arch, self.weights, self.name, self.compile_config = arch, weights, name, compile_config
        self.trainable = trainable or {}
        extra = extra or {}
        self.class_names, self.preprocessing = extra.get("class_names"), extra.get("preprocessing")
        self.kind, self.calibration, self.unfamiliar = kind, calibration, unfamiliar
        self.int8_calibration = None  # the int8 mode's input scales (covidx files), or None
