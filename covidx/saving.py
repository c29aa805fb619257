"""Models from files: load_model, and the weights of ResNet50(weights=path). The readers
(covidx.formats) return plain Parts; this module is the one place models are built from them,
with each kind of file's compile settings, trainable flags, calibration and statistics."""
from __future__ import annotations

import os
import warnings

from . import architecture, checks, formats, optimizers
from .formats import ModelFileError
from .model import DEFAULT_MODEL, Model, default_model_path
from .unfamiliar import UnfamiliarStats


def load_model(path=None, custom_objects=None, compile=True, safe_mode=True, *, class_names=None, precision="fp32"):
    """Loads a model file: covidx's safetensors format, or (see covidx.formats) a Keras .h5 /
    .keras / .weights.h5 file or a PyTorch ResNet50 state_dict, recognised by content.
    load_model() (path None) loads the shipped model (FileNotFoundError where none is installed).
    class_names: for files that do not record them. compile=False gives an uncompiled model (as
    Keras: evaluate() then asks for compile()); nothing in a file is ever executed, so
    custom_objects and safe_mode change nothing. precision: 'fp32' (default), 'bf16' or 'int8'
    (Model.set_precision; int8 needs a file with int8 calibration, see Model.calibrate_int8)."""
    checks.precision(precision)
    model = _load_model(path, class_names, compile)
    if precision != "fp32":
        model.set_precision(precision)
    return model


def _load_model(path, class_names, compile):
    if path is None:
        path = default_model_path()
        if path is None:
            raise FileNotFoundError("load_model(): no model file given, and this installation has no shipped "
                                    "model (%s); pass the path of a model file" % DEFAULT_MODEL)
    path = os.fsdecode(os.fspath(path))  # a bytes path is a path, never the file's content
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise ModelFileError("%s: not a regular file (a directory, device or pipe); covidx reads model files"
                                 % path)
        raise FileNotFoundError("load_model: no such file: %s" % path)
    return model_from_parts(formats.read(path), path, class_names, compile)


def model_from_parts(parts, path, class_names=None, compile=True):
    """A covidx.Model of a file's Parts. Given class names win over the file's."""
    if parts.kind == "covidx":
        try:
            model = Model(parts.arch, parts.weights, class_names=class_names or parts.class_names,
                          preprocessing=parts.preprocessing, name=parts.name)
            model.calibration = parts.calibration
            if parts.int8_calibration is not None:
                model._set_int8_calibration(parts.int8_calibration)
            if parts.unfamiliar is not None:
                model.set_unfamiliar(UnfamiliarStats.from_file(*parts.unfamiliar, path))
            training = parts.compile_config
            if compile and isinstance(training, dict) and isinstance(training.get("loss"), str):
                model.compile(loss=training["loss"], metrics=list(training.get("metrics") or []))
            return model
        except (ValueError, TypeError) as e:
            raise type(e)("%s: %s" % (path, e)) from None
    try:
        model = Model(parts.arch, parts.weights, class_names=class_names or parts.class_names,
                      preprocessing=parts.preprocessing, name=parts.name)
    except (ValueError, TypeError) as e:
        raise ModelFileError("%s: %s" % (path, e)) from None
    _compile_from(model, parts.compile_config, path)
    for layer in model.layers:  # frozen layers stay frozen, as Keras loads them
        if layer.name in parts.trainable:
            layer.trainable = parts.trainable[layer.name]
    if not compile:
        model._compiled, model.optimizer = None, None
    return model


def _optimizer_from(config, path):
    """The optimizer of Keras's compile settings (class and hyperparameters, as Keras restores
    them): compile_config's 'optimizer' (.keras) or training_config's 'optimizer_config' (.h5).
    Keras's default, rmsprop, where the file names none; one covidx cannot run is said, not
    replaced quietly."""
    spec = config.get("optimizer", config.get("optimizer_config"))
    if spec is None:
        return optimizers.RMSprop()
    try:
        if isinstance(spec, dict):
            settings = {k: v for k, v in (spec.get("config") or {}).items()
                        if k not in ("is_legacy_optimizer", "jit_compile")}  # Keras 2's, no effect here
            name = spec.get("class_name")
            name = name.rsplit(">", 1)[-1] if isinstance(name, str) else name  # TF 2.11's 'Custom>Adam'
            spec = {"class_name": name, "config": settings}
        return optimizers.get(spec)
    except (ValueError, TypeError) as e:
        warnings.warn("%s: the optimizer the file was compiled with (%s) cannot be restored (%s); the model is "
                      "compiled with rmsprop: call compile(optimizer=...) before fit()"
                      % (path, spec.get("class_name") if isinstance(spec, dict) else spec, e), stacklevel=6)
        return optimizers.RMSprop()


def _compile_from(model, config, path):
    """Keras's compile settings, where they are plain names covidx knows; others are skipped."""
    if not isinstance(config, dict) or not isinstance(config.get("loss"), str):
        return
    metrics = config.get("metrics") or []
    if isinstance(metrics, list) and metrics and isinstance(metrics[0], list):
        metrics = metrics[0]  # Keras 2 nested metrics per output
    metrics = [m for m in metrics if isinstance(m, str)] if isinstance(metrics, list) else []
    try:
        model.compile(optimizer=_optimizer_from(config, path), loss=config["loss"], metrics=metrics)
    except (ValueError, TypeError):
        model._compiled, model.optimizer = None, None


def weights_for(arch, path, class_names, preprocessing):
    """(architecture, named weights, class names, preprocessing) of ResNet50(weights=path): a
    covidx model file's tensors that arch has (with its input layers, and its class names where
    the outputs are the same), or any other file read into arch as Keras's load_weights does."""
    if formats.sniff(path) != "safetensors":  # Keras (.h5, .keras, .weights.h5) or PyTorch files
        return arch, formats.load_weights(path, arch), class_names, preprocessing
    source = _load_model(path, None, True)
    for key in architecture.INPUT_LAYERS:
        # The input layers (Rescaling, the per-image standardisation) come with the backbone: its
        # features were learnt behind them, and without them they are other features.
        theirs, ours = source.architecture.get(key), arch.get(key)
        if ours is None:
            if theirs is not None:
                arch[key] = dict(theirs)
        elif theirs is None or {k: v for k, v in theirs.items() if k != "name"} != \
                {k: v for k, v in ours.items() if k != "name"}:
            raise ValueError("weights=%r: the file's backbone has %s at its input, and this call asks for %s; "
                             "leave input_norm out to take the file's input layers with its weights"
                             % (os.fspath(path), theirs or "no %s layer" % key, ours))
    wanted = {"%s/%s" % (layer, w) for layer, ws in architecture.weight_spec(arch) for w, _ in ws}
    named = {k: v for k, v in source.named_weights.items() if k in wanted}
    same_outputs = arch.get("head") and source.architecture.get("head") and \
        architecture.output_units(arch) == architecture.output_units(source.architecture)
    return (arch, named, class_names or (source.class_names if same_outputs else None),
            source.preprocessing or preprocessing)
