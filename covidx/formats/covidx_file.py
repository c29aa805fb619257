"""covidx's own model file: a safetensors file whose tensors are the weights under Keras's names
(and the out-of-distribution statistics under unfamiliar/), with the architecture, class names,
preprocessing, calibration, int8 calibration and compile settings as JSON in its metadata."""
from __future__ import annotations

import json

from .. import architecture, safetensors_io
from .._version import __version__
from .parts import Parts

FORMAT = "covidx"
FORMAT_VERSION = 1


def read(path):
    """Parts of a covidx model file; a ValueError naming the file for anything wrong in it."""
    tensors, meta = safetensors_io.load(path)
    if meta.get("format") != FORMAT:
        raise ValueError("%s: a safetensors file, but not a covidx model (no format=covidx metadata)" % path)
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ValueError("%s: bad format_version %r" % (path, meta.get("format_version"))) from None
    if version > FORMAT_VERSION:
        raise ValueError("%s: format version %d is newer than this covidx understands (%d); upgrade covidx"
                         % (path, version, FORMAT_VERSION))

    def field(key, default=None):
        try:
            return json.loads(meta[key]) if key in meta else default
        except (ValueError, RecursionError):
            raise ValueError("%s: metadata %r is not valid JSON (or nested too deeply)" % (path, key)) from None

    arch = field("architecture")
    try:
        architecture.validate(arch)
    except (ValueError, TypeError) as e:
        raise type(e)("%s: %s" % (path, e)) from None
    stats = {k: tensors.pop(k) for k in list(tensors) if k.startswith("unfamiliar/")}
    extra = {"class_names": field("class_names"), "preprocessing": field("preprocessing")}
    calibration = field("calibration")
    parts = Parts(arch, tensors, name=meta.get("name", "resnet50"), compile_config=field("training_config"),
                  extra=extra, kind="covidx", calibration=calibration if isinstance(calibration, dict) else None,
                  unfamiliar=(stats, meta.get("unfamiliar", "null")) if "unfamiliar" in meta or stats else None)
    parts.int8_calibration = field("int8_calibration") if "int8_calibration" in meta else None
    return parts


def write(model, path, dtype="float32"):
    """Writes model (its weights in dtype, 'float32' or 'float16'; the statistics always float32)."""
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "covidx_version": __version__,
        "name": model.name,
        "architecture": json.dumps(model.architecture),
        "preprocessing": json.dumps(model.preprocessing),
    }
    if model.class_names is not None:
        meta["class_names"] = json.dumps(model.class_names)
    if model.calibration is not None:
        meta["calibration"] = json.dumps(model.calibration)
    compiled = model.compile_settings()
    if compiled is not None and compiled["loss"] is not None:
        meta["training_config"] = json.dumps(compiled)
    tensors = {k: v.astype(dtype) for k, v in model.named_weights.items()}
    if model.int8_calibration is not None:
        meta["int8_calibration"] = json.dumps(model.int8_calibration)
    if model.unfamiliar is not None:  # always float32: the residual term is a small difference
        stats_tensors, meta["unfamiliar"] = model.unfamiliar.to_file()
        tensors.update(stats_tensors)
    safetensors_io.save(path, tensors, meta)
    return path
