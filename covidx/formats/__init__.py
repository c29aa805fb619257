"""Model files from other frameworks, recognised by content, never by extension alone:

- Keras legacy HDF5 (.h5): a full model (model.save in TF 2.x / Keras 3: model_config and
  model_weights), weights only (save_weights), and the official ImageNet weight files;
- Keras 3 archives (.keras: config.json + model.weights.h5) and weight files (.weights.h5);
- PyTorch state_dicts of torchvision's ResNet50 (torch.save, zip or older format), read without
  PyTorch and without unpickling anything but tensors and plain containers.

covidx's own safetensors format is read by covidx.model. Files holding weights only record no
activations: Dense layers are taken as ReLU and the last one as softmax (sigmoid with one unit);
to choose, load them into an architecture: ResNet50(weights=path, head=..., classes=...).
Keras files do not record input preprocessing (model.preprocessing is None: set it before
model.save if covidx is to read image files for the model), except those covidx wrote, which keep
class names and preprocessing in an entry of their own; torchvision state_dicts get 'torch'.
Every problem raises ModelFileError (a ValueError) whose message names the file."""
from __future__ import annotations

import os
import struct

from .errors import ModelFileError, fail

__all__ = ["ModelFileError", "sniff", "load", "load_weights"]

TORCH_PREPROCESSING = "torch"  # torchvision's models expect ImageNet mean/std normalisation


def sniff(path):
    """'hdf5', 'zip', 'pickle', 'safetensors' or None, from the file's first bytes."""
    from .. import safetensors_io

    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    safetensors = safetensors_io.looks_like_safetensors(path)
    # A safetensors file starts with its header's length, whose first byte is 0x80 (a pickle's
    # first byte) for one length in 256: such a file is a pickle only if the length does not fit.
    if head[:1] == b"\x80" and not (safetensors and 8 + struct.unpack("<Q", head)[0] <= os.path.getsize(path)):
        return "pickle"
    return "safetensors" if safetensors else None


def _zip_kind(path):
    from .archive import open_zip

    with open_zip(path) as archive:
        names = archive.namelist()
    if "config.json" in names:
        return "keras"
    if any(n.endswith("/data.pkl") for n in names):
        return "torch"
    fail(path, "a zip archive, but neither a Keras .keras file nor a torch.save file")


def _read_parts(path, arch):
    """keras_files.Parts or ('torch', state_dict, class names), by content."""
    from . import keras_files, torch_files, torchvision

    if os.path.getsize(path) == 0:
        fail(path, "empty file")
    kind = sniff(path)
    if kind == "hdf5":
        return keras_files.read_h5(path, path, arch)
    if kind == "zip" and _zip_kind(path) == "keras":
        return keras_files.read_archive(path, arch)
    if kind in ("zip", "pickle"):
        obj = torch_files.read(path, kind)
        sd, class_names = torchvision.state_dict(obj, path)
        return ("torch", sd, class_names)
    fail(path, "not a model file covidx reads (expected Keras .h5/.keras/.weights.h5, a PyTorch state_dict "
               "or a covidx .safetensors file; the content is none of these)")


def _optimizer_from(config, path):
    """The optimizer of Keras's compile settings (class and hyperparameters, as Keras restores
    them): compile_config's 'optimizer' (.keras) or training_config's 'optimizer_config' (.h5).
    Keras's default, rmsprop, where the file names none; one covidx cannot run is said, not
    replaced quietly."""
    from .. import optimizers

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
        import warnings

        warnings.warn("%s: the optimizer the file was compiled with (%s) cannot be restored (%s); the model is "
                      "compiled with rmsprop: call compile(optimizer=...) before fit()"
                      % (path, spec.get("class_name") if isinstance(spec, dict) else spec, e), stacklevel=4)
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


def _set_trainable(model, flags):
    """The file's per-layer trainable flags (frozen layers stay frozen, as Keras loads them)."""
    for layer in model.layers:
        if layer.name in flags:
            layer.trainable = flags[layer.name]


def load(path, class_names=None):
    """A covidx.Model from a Keras or PyTorch file (see the module docstring).
    class_names: the output classes, for files that do not record them (given names win)."""
    from ..model import Model
    from . import torchvision

    path = os.fsdecode(os.fspath(path))
    if sniff(path) == "safetensors":
        from ..model import load_model

        return load_model(path, class_names=class_names)
    parts = _read_parts(path, None)
    if isinstance(parts, tuple):
        _, sd, file_class_names = parts
        backbone, head = torchvision.split(sd, path)
        arch = torchvision.infer_arch(head, path)
        named = torchvision.named_weights(backbone, head, arch, path)
        return _model(Model, path, arch, named, class_names or file_class_names, TORCH_PREPROCESSING, "resnet50")
    model = _model(Model, path, parts.arch, parts.weights, class_names or parts.class_names, parts.preprocessing,
                   parts.name)
    _compile_from(model, parts.compile_config, path)
    _set_trainable(model, parts.trainable)
    return model


def _model(model_class, path, arch, named, class_names, preprocessing, name):
    try:
        return model_class(arch, named, class_names=class_names, preprocessing=preprocessing, name=name)
    except (ValueError, TypeError) as e:
        raise ModelFileError("%s: %s" % (path, e)) from None


def load_weights(path, arch):
    """{name: array} for arch from any supported file, as Keras's load_weights reads it: legacy
    HDF5 in layer order, Keras 3 files by structure, torchvision state_dicts by their keys."""
    from . import torchvision

    path = os.fsdecode(os.fspath(path))
    if sniff(path) == "safetensors":
        from ..model import load_model

        model = load_model(path)
        if model.architecture != arch:
            from .keras_files import reorder

            return reorder(dict(model.named_weights), model.architecture, arch, path)
        return dict(model.named_weights)
    parts = _read_parts(path, arch)
    if isinstance(parts, tuple):
        backbone, head = torchvision.split(parts[1], path)
        return torchvision.named_weights(backbone, head, arch, path)
    return parts.weights
