"""Keras files written by covidx: the Keras 3 archive (.keras: config.json, metadata.json and
model.weights.h5), legacy HDF5 (.h5: model_config, training_config and model_weights) and Keras 3
weight files (.weights.h5), laid out as Keras 3 writes them, so that keras.models.load_model and
model.load_weights read them (tested against Keras 3 itself).

The graph is Keras's ResNet50 (keras.applications, v1) with an optional Rescaling and input
standardisation in front (a LayerNormalization(axis=[1, 2, 3]) in .keras files, a
GroupNormalization(groups=1) in .h5 files: see _legacy_input_norm), global pooling and the Dense
head. A functional model's Dropout and BatchNormalization layers are written folded into its Dense
layers (what covidx runs; the outputs are the same). The input is written as (None, None, 3): any image size, as covidx takes.
Class names and preprocessing, which Keras files have no place for, go into covidx's own entry
(metadata.json's "covidx", an HDF5 attribute "covidx"), which Keras ignores."""
from __future__ import annotations

import datetime
import io
import json
import os
import zipfile

import numpy as np

from .. import architecture, atomic, layer_table, optimizers
from .._version import __version__
from .hdf5 import h5py_module
from .keras_graph import snake_case

KERAS_VERSION = "3.15.1"  # the Keras release whose file layout this writes (and the tests load with)
BACKEND = "torch"
V3_MODULES = {"Functional": "keras.src.models.functional"}


def _check_writable(model, what):
    if model.architecture["variant"] != "v1":
        raise ValueError("%s: Keras files hold Keras's ResNet50 (v1); this model is the torchvision variant "
                         "(v1.5: stride on the 3x3 convolutions, torchvision's padding), which Keras's layers do "
                         "not express. Save it as .safetensors (covidx) or export it with model.to_onnx()" % what)


# --- the graph ---------------------------------------------------------------------------------


def _dtype():
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _tensor(shape, source):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(shape), "dtype": "float32", "keras_history": [source, 0, 0]}}


def _backbone_conv(name):
    return {n: (k, cin, cout, stride) for n, k, cin, cout, stride in architecture.conv_layers("v1")}[name]


def _settings(cls, name, arch):
    """The layer's own arguments, as Keras's get_config spells them."""
    if cls == "InputLayer":
        return {}
    if cls == "ZeroPadding2D":
        p = 3 if name == "conv1_pad" else 1
        return {"padding": [[p, p], [p, p]], "data_format": "channels_last"}
    if cls == "Conv2D":
        k, _, cout, stride = _backbone_conv(name[:-len("_conv")])
        return {"filters": cout, "kernel_size": [k, k], "strides": [stride, stride],
                "padding": "same" if k == 3 else "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
                "groups": 1, "activation": "linear", "use_bias": True}
    if cls == "BatchNormalization":
        return {"axis": 3, "momentum": 0.99, "epsilon": float(arch["bn_epsilon"]), "center": True, "scale": True}
    if cls == "Activation":
        return {"activation": "relu"}
    if cls == "MaxPooling2D":
        return {"pool_size": [3, 3], "padding": "valid", "strides": [2, 2], "data_format": "channels_last"}
    if cls == "Add":
        return {}
    if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return {"data_format": "channels_last", "keepdims": False}
    raise AssertionError(cls)


def graph_layers(model):
    """[(name, class, settings, inbound names, output shape, weights)] in Keras's model.layers
    order; weights: the layer's arrays in Keras's order."""
    _check_writable(model, "model %r" % model.name)
    arch, named = model.architecture, model._weights
    rows = layer_table.build(arch, (None, None))
    input_name = rows[0][0]
    out = [(input_name, "InputLayer", {}, [], rows[0][2], [])]
    previous = input_name
    rescaling = arch.get("rescaling")
    if rescaling:
        settings = {"scale": rescaling["scale"], "offset": rescaling["offset"]}
        out.append((rescaling["name"], "Rescaling", settings, [previous], rows[0][2], []))
        previous = rescaling["name"]
    norm = arch.get("input_norm")
    if norm:
        settings = {"axis": [1, 2, 3], "epsilon": float(norm["epsilon"]), "center": False, "scale": False,
                    "rms_scaling": False}
        out.append((norm["name"], "LayerNormalization", settings, [previous], rows[0][2], []))
        previous = norm["name"]
    dense = {d["name"]: d for d in arch.get("head", [])}
    spec = dict(architecture.weight_spec(arch))
    for name, cls, shape, _tp, _ntp, inbound in rows[1:]:
        if cls in ("Rescaling", "LayerNormalization"):  # the input layers, written above
            continue
        inbound = [previous if n == input_name else n for n in inbound]
        weights = [named["%s/%s" % (name, w)] for w, _ in spec.get(name, [])]
        if cls == "Dense":
            settings = {"units": dense[name]["units"], "activation": dense[name]["activation"] or "linear",
                        "use_bias": True}
        else:
            settings = _settings(cls, name, arch)
        out.append((name, cls, settings, inbound, shape, weights))
    return out


def _legacy_input_norm(settings):
    """The input standardisation as GroupNormalization(groups=1, axis=-1): the same per-image
    statistics, in a form Keras's legacy .h5 reader keeps (it replaces a LayerNormalization's
    axis=[1, 2, 3] by -1, a per-pixel normalisation that scores wrongly)."""
    return {"groups": 1, "axis": -1, "epsilon": settings["epsilon"], "center": False, "scale": False}


def model_config(model, v3=True):
    """The model's Keras config: {'class_name': 'Functional', 'config': {...}} (with Keras 3's
    module and registration fields when v3, as in config.json; without, as in a legacy .h5)."""
    trainable = {layer.name: layer.trainable for layer in model.layers}
    layers, shapes = [], {}
    for name, cls, settings, inbound, shape, _ in graph_layers(model):
        shapes[name] = shape
        if cls == "InputLayer":
            config = {"batch_shape": list(shape), "dtype": "float32", "sparse": False, "ragged": False,
                      "name": name, "optional": False}
            nodes = []
        else:
            if cls == "LayerNormalization" and not v3:
                cls, settings = "GroupNormalization", _legacy_input_norm(settings)
            config = dict({"name": name, "trainable": bool(trainable.get(name, True)), "dtype": _dtype()},
                          **settings)
            tensors = [_tensor(shapes[n], n) for n in inbound]
            nodes = [{"args": [tensors if cls == "Add" else tensors[0]], "kwargs": {}}]
        entry = {"class_name": cls, "config": config, "name": name, "inbound_nodes": nodes}
        if v3:
            entry = {"module": "keras.layers", "class_name": cls, "config": config, "registered_name": None,
                     "name": name, "inbound_nodes": nodes}
        layers.append(entry)
    config = {"name": model.name, "trainable": True, "layers": layers,
              "input_layers": [layers[0]["name"], 0, 0], "output_layers": [layers[-1]["name"], 0, 0]}
    if not v3:
        return {"class_name": "Functional", "config": config}
    return {"module": V3_MODULES["Functional"], "class_name": "Functional", "config": config,
            "registered_name": "Functional", "build_config": {"input_shape": None}}


def covidx_entry(model):
    """What Keras files have no place for: class names and preprocessing."""
    return {"covidx_version": __version__, "class_names": model.class_names, "preprocessing": model.preprocessing}


# --- compile settings ----------------------------------------------------------------------------


def _optimizer_config(model, v3):
    try:
        optimizer = optimizers.get(model.optimizer if model.optimizer is not None else model._compiled["optimizer"])
    except ValueError:
        return None
    config = optimizer.get_config()
    config["learning_rate"] = float(optimizer.learning_rate)
    cls = type(optimizer).__name__
    if v3:
        return {"module": "keras.optimizers", "class_name": cls, "config": config, "registered_name": None}
    return {"class_name": cls, "config": config}


def compile_config(model, v3=True):
    """Keras's compile_config (v3) or training_config (legacy), or None when the model is not
    compiled with a loss Keras knows by name."""
    compiled = model._compiled
    if compiled is None or compiled["config"]["loss"] is None:
        return None
    optimizer = _optimizer_config(model, v3)
    config = {"loss": compiled["config"]["loss"], "loss_weights": None, "metrics": list(compiled["config"]["metrics"]),
              "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}
    if v3:
        return dict({"optimizer": optimizer if optimizer is not None else "rmsprop"}, **config)
    if optimizer is None:
        return None
    return dict(config, optimizer_config=optimizer)


# --- weights files -------------------------------------------------------------------------------


def _atomic(path, write):
    """Runs write(temporary path), then renames the result to path."""
    return atomic.write_file(path, write)


def _write_v3_weights(h5, model):
    """Keras 3's weights layout: layers/<class>_<k>/vars/<i> in model.layers order (k counts the
    layers of one class), the model's own vars, and the optimizer's step and learning rate."""
    root = h5.create_group("vars")
    root.attrs["name"] = model.name
    layers = h5.create_group("layers")
    counts = {}
    for name, cls, _, _, _, weights in graph_layers(model):
        snake = snake_case(cls)
        k = counts.get(snake, 0)
        counts[snake] = k + 1
        group = layers.create_group(snake if k == 0 else "%s_%d" % (snake, k)).create_group("vars")
        group.attrs["name"] = name
        for i, array in enumerate(weights):
            group.create_dataset(str(i), data=np.asarray(array, np.float32))
    if compile_config(model) is not None:
        try:
            optimizer = optimizers.get(model.optimizer if model.optimizer is not None else model._compiled["optimizer"])
        except ValueError:
            return
        group = h5.create_group("optimizer").create_group("vars")
        group.attrs["name"] = optimizer.name
        group.create_dataset("0", data=np.int64(optimizer.iterations))
        group.create_dataset("1", data=np.float32(optimizer.learning_rate))


def save_weights(model, path):
    """model.save_weights('x.weights.h5'): Keras 3's weights file."""
    _check_writable(model, os.fspath(path))
    h5py = h5py_module(os.fspath(path))

    def write(tmp):
        with h5py.File(tmp, "w") as h5:
            _write_v3_weights(h5, model)

    return _atomic(path, write)


def save_keras(model, path):
    """model.save('x.keras'): the Keras 3 archive."""
    _check_writable(model, os.fspath(path))
    h5py = h5py_module(os.fspath(path))
    config = model_config(model, v3=True)
    compiled = compile_config(model, v3=True)
    if compiled is not None:
        config["compile_config"] = compiled
    metadata = {"keras_version": KERAS_VERSION,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                "covidx": covidx_entry(model)}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        _write_v3_weights(h5, model)

    def write(tmp):
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr("metadata.json", json.dumps(metadata))
            archive.writestr("config.json", json.dumps(config))
            archive.writestr("model.weights.h5", buffer.getvalue())

    return _atomic(path, write)


def save_h5(model, path):
    """model.save('x.h5'): legacy HDF5, as Keras 3 writes it."""
    _check_writable(model, os.fspath(path))
    h5py = h5py_module(os.fspath(path))
    layers = graph_layers(model)

    def write(tmp):
        with h5py.File(tmp, "w") as h5:
            h5.attrs["backend"] = BACKEND
            h5.attrs["keras_version"] = KERAS_VERSION
            h5.attrs["model_config"] = json.dumps(model_config(model, v3=False))
            training = compile_config(model, v3=False)
            if training is not None:
                h5.attrs["training_config"] = json.dumps(training)
            h5.attrs["covidx"] = json.dumps(covidx_entry(model))
            group = h5.create_group("model_weights")
            group.attrs["backend"] = BACKEND
            group.attrs["keras_version"] = KERAS_VERSION
            group.attrs["layer_names"] = [name.encode("utf8") for name, *_ in layers]
            spec = dict(architecture.weight_spec(model.architecture))
            for name, _, _, _, _, weights in layers:
                layer_group = group.create_group(name)
                names = ["%s/%s" % (name, w) for w, _ in spec.get(name, [])]
                layer_group.attrs["weight_names"] = [n.encode("utf8") for n in names] if names else np.zeros(0)
                for weight_name, array in zip(names, weights):
                    layer_group.create_dataset(weight_name, data=np.asarray(array, np.float32))

    return _atomic(path, write)
