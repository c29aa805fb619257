"""Keras model and weight files: legacy HDF5 (.h5: model.save and save_weights, and the official
ImageNet weight files), Keras 3 archives (.keras) and Keras 3 weight files (.weights.h5).

Weights are read as Keras reads them: legacy files in layer order (names are not matched, as in
Keras's load_weights), Keras 3 files by structure (layers/<class>_<k>/vars/<i>). Every tensor's
shape is checked against the architecture before it is read."""
from __future__ import annotations

import json
import re

import numpy as np

from .. import architecture
from . import hdf5, keras_graph
from .archive import ZIP_ERRORS, member, open_zip
from .errors import ModelFileError, fail
from .parts import Parts

MAX_CONFIG_BYTES = 64 << 20
HDF5_OVERHEAD = 64 << 20  # metadata of a weights file: a few MB for ResNet50
RESNET_LAYER = re.compile(r"conv\d(_block\d+_\d)?_(conv|bn)")
KIND_ORDER = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
WEIGHT_KINDS = set(KIND_ORDER)
BACKBONE_TENSORS = sum(len(ws) for _, ws in architecture.weight_spec(
    {"variant": "v1", "pooling": None, "head": []}))


def _loads(text):
    """JSON text (str or UTF-8 bytes) as a value, or None where it is not JSON."""
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _covidx_entry(value):
    """The class names and preprocessing covidx writes beside a Keras model ({} when absent or
    not as covidx writes them: they only help, so anything else is ignored)."""
    if not isinstance(value, dict):
        return {}
    out = {}
    names = value.get("class_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        out["class_names"] = names
    p = value.get("preprocessing")
    if p in ("caffe", "tf", "torch") or (isinstance(p, dict) and set(p) == {"rescale"}
                                         and isinstance(p["rescale"], (int, float))):
        out["preprocessing"] = p
    return out


def _kind(weight_name):
    """'kernel' from 'conv1_conv/kernel:0' (None when the name says nothing Keras-standard)."""
    last = re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])
    return last if last in WEIGHT_KINDS else None


def _zero_missing_bias(spec_weights, tensors):
    """Keras layers built with use_bias=False store no bias; covidx runs them with a zero bias."""
    if len(tensors) == len(spec_weights) - 1 and spec_weights[-1][0] == "bias":
        tensors = tensors + [None]
    return tensors


def _fill(named, layer, spec_weights, arrays):
    for (weight, shape), array in zip(spec_weights, arrays):
        named["%s/%s" % (layer, weight)] = np.zeros(shape, np.float32) if array is None else array


# --- legacy HDF5 -----------------------------------------------------------------------------


def _legacy_root(h5):
    """The group holding the layer groups: the root (save_weights) or model_weights (model.save)."""
    root = h5.file
    if h5.names(root, "layer_names") is None:
        root = h5.group(root, "model_weights")
        if root is None or h5.names(root, "layer_names") is None:
            fail(h5.where, "an HDF5 file, but not a Keras model or weights file (no layer_names)")
    return root


def _layer_order(names):
    """A nested model's group lists its trainable tensors first, then the non-trainable ones
    (batchnorm statistics, frozen layers). Put them back layer by layer: ResNet50's layers in
    its order, others in order of appearance, each layer's tensors in Keras's order."""
    parsed = [_split_weight_name(n) for n in names]
    layers = list(dict.fromkeys(layer for layer, _ in parsed))
    if len(layers) < 2 or None in layers or len(set(parsed)) != len(parsed):
        return names
    rank = {layer: i for i, (layer, _) in enumerate(architecture.weight_spec(
        {"variant": "v1", "pooling": None, "head": []}))}
    layers.sort(key=lambda layer: (0, rank[layer]) if layer in rank else (1, layers.index(layer)))
    kinds = list(KIND_ORDER)
    by_layer = {layer: [] for layer in layers}
    for name, (layer, kind) in zip(names, parsed):
        by_layer[layer].append((kinds.index(kind) if kind in kinds else len(kinds), name))
    return [name for layer in layers for _, name in sorted(by_layer[layer], key=lambda t: t[0])]


def _legacy_tensors(h5, root):
    """[(layer group name, weight name, dataset)] in the file's layer order (a nested model's
    tensors put back in layer order), layers without weights left out."""
    out = []
    for layer in h5.names(root, "layer_names"):
        group = h5.group(root, layer)
        if group is None:
            fail(h5.where, "layer %r is listed but has no group in the file" % layer)
        for weight in _layer_order(h5.names(group, "weight_names") or []):
            dataset = h5.get(group, weight)
            if dataset is None:
                fail(h5.where, "weight %r of layer %r is listed but missing" % (weight, layer))
            out.append((layer, weight, dataset))
    return out


def _read_in_order(h5, arch, tensors):
    """Named weights for arch from a flat list of (layer, weight name, dataset), consumed in
    Keras's order (architecture.weight_spec)."""
    named, i = {}, 0
    expected = sum(len(ws) for _, ws in architecture.weight_spec(arch))
    if len(tensors) != expected:
        fail(h5.where, "the file has %d weight tensors, this architecture (%s) has %d"
             % (len(tensors), _describe(arch), expected))
    for layer, spec_weights in architecture.weight_spec(arch):
        arrays = []
        for weight, shape in spec_weights:
            group, name, dataset = tensors[i]
            kind = _kind(name)
            if kind is not None and kind != weight:
                fail(h5.where, "tensor %s/%s is a %s where the architecture expects %s/%s (the file's layers "
                     "are not ResNet50's, or not in its order)" % (group, name, kind, layer, weight))
            arrays.append(h5.tensor(dataset, shape, "tensor %s/%s (for %s/%s)" % (group, name, layer, weight)))
            i += 1
        _fill(named, layer, spec_weights, arrays)
    return named


def _describe(arch):
    head = "-".join(str(d["units"]) for d in arch.get("head", [])) or "no head"
    return "ResNet50 %s, %s" % (arch["variant"], head)


def _split_weight_name(name):
    """('conv1_conv', 'kernel') from 'conv1_conv/kernel:0' or 'resnet50/conv1_conv/kernel:0'."""
    parts = re.sub(r":\d+$", "", name).split("/")
    return (parts[-2], parts[-1]) if len(parts) >= 2 else (None, parts[-1])


def _assign_by_name(names, layers):
    """{layer uid: [weight name, ...]} when every name says which layer and tensor it is; else None."""
    index = {}
    for name in names:
        key = _split_weight_name(name)
        if key[0] is None or key in index:
            return None
        index[key] = name
    out = {}
    for layer in layers:
        wanted = [(layer.name, kind) for kind, _ in keras_graph.weight_kinds(layer)]
        if not all(key in index for key in wanted):
            return None
        out[layer.uid] = [index[key] for key in wanted]
    return out if sum(len(v) for v in out.values()) == len(names) else None


def _assign_by_order(names, layers, where, group):
    """Keras's legacy order: a layer's trainable tensors, then its non-trainable ones; for a
    nested model, all trainable tensors of its layers, then all non-trainable ones."""
    order = [(layer, kind) for trainable in (True, False) for layer in layers
             for kind, is_trainable in keras_graph.weight_kinds(layer) if is_trainable == trainable]
    if len(order) != len(names):
        fail(where, "layer %r: the file holds %d weights, its config needs %d" % (group, len(names), len(order)))
    out = {layer.uid: {} for layer in layers}
    for (layer, kind), name in zip(order, names):
        stated = _kind(name)
        if stated is not None and stated != kind:
            fail(where, "layer %r: tensor %r where %s/%s was expected" % (group, name, layer.name, kind))
        out[layer.uid][kind] = name
    return {layer.uid: [out[layer.uid][kind] for kind, _ in keras_graph.weight_kinds(layer)] for layer in layers}


def _read_legacy_by_config(h5, root, arch, slots):
    """Named weights for a parsed model config. Each top-level layer has a group in the file (a
    nested model one group for all its layers); tensors are found by their names, or in Keras's
    order where the names do not say."""
    spec = keras_graph.read_spec(arch)
    groups = {}
    for layer, _ in spec:
        groups.setdefault(slots[layer].h5_group, []).append(slots[layer])
    assigned = {}
    for group_name, layers in groups.items():
        group = h5.group(root, group_name)
        if group is None:
            fail(h5.where, "no weights for layer %r (its group is missing)" % group_name)
        names = h5.names(group, "weight_names") or []
        found = _assign_by_name(names, layers) or _assign_by_order(names, layers, h5.where, group_name)
        for layer in layers:
            assigned[layer.uid] = (group, found[layer.uid])
    named = {}
    for layer, spec_weights in spec:
        slot = slots[layer]
        group, names = assigned[slot.uid]
        arrays = []
        for name, (weight, shape) in zip(names, spec_weights):
            dataset = h5.get(group, name)
            if dataset is None:
                fail(h5.where, "layer %r: weight %r is listed but missing" % (slot.name, name))
            arrays.append(h5.tensor(dataset, shape, "layer %r weight %r" % (slot.name, name)))
        _fill(named, layer, spec_weights, _zero_missing_bias(spec_weights, arrays))
    return named


def _infer_legacy_arch(h5, tensors):
    """The architecture of a weights-only file: ResNet50's 318 tensors, then Dense layers (kernel,
    bias) whose activations a weights file does not record: relu for hidden layers, softmax for
    the last (sigmoid when it has one unit), as in Keras's and the articles' models."""
    if len(tensors) < BACKBONE_TENSORS or (len(tensors) - BACKBONE_TENSORS) % 2:
        fail(h5.where, "%d weight tensors: not Keras's ResNet50 (%d) followed by Dense layers"
             % (len(tensors), BACKBONE_TENSORS))
    head, units_in = [], 2048
    for i in range(BACKBONE_TENSORS, len(tensors), 2):
        (layer, _, kernel), (_, _, bias) = tensors[i], tensors[i + 1]
        h5.check_tensor(kernel, "layer %r kernel" % layer, ndim=2)
        units = kernel.shape[1]
        if kernel.shape[0] != units_in or bias.shape != (units,):
            fail(h5.where, "layer %r: shapes %s and %s do not continue the network (%d inputs)"
                 % (layer, kernel.shape, bias.shape, units_in))
        head.append({"name": layer, "units": int(units), "activation": "relu"})
        units_in = units
    return _arch_with_head(head, h5.where)


def _arch_with_head(head, where):
    names = set()
    for layer in head:
        while layer["name"] in names:
            layer["name"] += "_"
        names.add(layer["name"])
    if head:
        head[-1]["activation"] = "softmax" if head[-1]["units"] > 1 else "sigmoid"
    arch = {"family": "resnet50", "variant": "v1", "bn_epsilon": 1.001e-5, "pooling": "avg" if head else None,
            "pooling_name": "avg_pool" if head else None, "head": head}
    try:
        return architecture.validate(arch)
    except ValueError as e:
        fail(where, str(e))


# --- Keras 3 weight files --------------------------------------------------------------------


def _v3_vars(h5, path, count, label):
    group = h5.group(h5.file, path)
    if group is None:
        fail(h5.where, "no weights for %s (group %s missing)" % (label, path))
    keys = h5.keys(group)
    if sorted(keys) != sorted(str(i) for i in range(count)):
        fail(h5.where, "%s: expected %d tensors in %s, found %s" % (label, count, path, sorted(keys)[:8]))
    return group


def _read_v3(h5, arch, paths, counts=None, spec=None):
    """Named weights from a Keras 3 weights file; paths: {covidx layer: its vars group}; spec:
    the layers and weights to read (default: those of arch)."""
    named = {}
    for layer, spec_weights in spec or architecture.weight_spec(arch):
        count = (counts or {}).get(layer, len(spec_weights))
        group = _v3_vars(h5, paths[layer], count, "layer %r" % layer)
        _check_v3_name(h5, group, layer)
        arrays = [h5.tensor(h5.get(group, str(i)), shape, "layer %r weight %s" % (layer, weight))
                  for i, (weight, shape) in enumerate(spec_weights[:count])]
        _fill(named, layer, spec_weights, _zero_missing_bias(spec_weights, arrays))
    return named


def _check_v3_name(h5, group, layer):
    """Recent Keras records each layer's name on its vars group: a ResNet50 name there that
    differs from the layer covidx expects means the file's layers are in another order."""
    name = h5.text(group, "name") if "name" in group.attrs else None
    if name and name != layer and RESNET_LAYER.fullmatch(name) and RESNET_LAYER.fullmatch(layer):
        fail(h5.where, "%s holds layer %r where ResNet50 has %r" % (group.name, name, layer))


def _v3_backbone_prefix(h5):
    """'' when ResNet50's layers are at the top of the file, 'layers/<model>/' when nested."""
    if h5.group(h5.file, "layers/conv2d") is not None:
        return ""
    layers = h5.group(h5.file, "layers")
    if layers is not None:
        for key in sorted(h5.keys(layers)):
            if h5.group(layers, key + "/layers/conv2d") is not None:
                return "layers/%s/" % key
    fail(h5.where, "a Keras 3 weights file without ResNet50's convolutions (no layers/conv2d)")


def _numbered(base, k):
    return base if k == 0 else "%s_%d" % (base, k)


def _v3_dense_groups(h5, prefix):
    """The Dense layers' vars groups of one model level, in order."""
    out, k = [], 0
    while h5.group(h5.file, prefix + "layers/" + _numbered("dense", k)) is not None:
        out.append(prefix + "layers/" + _numbered("dense", k) + "/vars")
        k += 1
        if k > 64:
            fail(h5.where, "more Dense layers than covidx runs")
    return out


def _v3_paths(h5, arch):
    """{covidx layer: vars group} for a Keras 3 weights file, computed the way Keras names them:
    the k-th Conv2D of a model is layers/conv2d_k, the k-th Dense layers/dense_k."""
    prefix = _v3_backbone_prefix(h5)
    paths, counters = {}, {}
    for layer, _ in architecture.weight_spec({**arch, "head": []}):
        kind = "conv2d" if layer.endswith("_conv") else "batch_normalization"
        k = counters.get(kind, 0)
        counters[kind] = k + 1
        paths[layer] = prefix + "layers/" + _numbered(kind, k) + "/vars"
    dense = (_v3_dense_groups(h5, prefix) if prefix else []) + _v3_dense_groups(h5, "")
    return paths, dense


def _v3_into(h5, arch):
    paths, dense = _v3_paths(h5, arch)
    head = arch.get("head", [])
    if len(dense) != len(head):
        fail(h5.where, "the file has %d Dense layers, the architecture (%s) %d"
             % (len(dense), _describe(arch), len(head)))
    for layer, path in zip(head, dense):
        paths[layer["name"]] = path
    return _read_v3(h5, arch, paths)


def _infer_v3_arch(h5):
    _, dense = _v3_paths(h5, {"variant": "v1", "pooling": None, "head": []})
    head, units_in = [], 2048
    for path in dense:
        group = _v3_vars(h5, path, 2, "Dense layer at %s" % path)
        kernel = h5.get(group, "0")
        h5.check_tensor(kernel, "%s/0" % path, ndim=2)
        if kernel.shape[0] != units_in:
            fail(h5.where, "%s: kernel shape %s does not continue the network (%d inputs)"
                 % (path, kernel.shape, units_in))
        name = h5.text(group, "name") if "name" in group.attrs else None
        head.append({"name": name or path.split("/")[-2], "units": int(kernel.shape[1]), "activation": "relu"})
        units_in = kernel.shape[1]
    return _arch_with_head(head, h5.where)


# --- whole files -----------------------------------------------------------------------------


def _json(text, where, what):
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        fail(where, "%s is not valid JSON (%s)" % (what, e))
    if not isinstance(value, dict):
        fail(where, "%s: expected a JSON object" % what)
    return value


def _training_config(h5):
    """The compile settings of a legacy .h5, or None: they only help, so damage there is ignored."""
    try:
        value = json.loads(h5.text(h5.file, "training_config") or "null")
    except (ValueError, RecursionError, ModelFileError):
        return None
    return value if isinstance(value, dict) else None


def _trainable(slots):
    """{layer name: trainable} of a full model's layers (a layer inside a frozen nested model is
    frozen, as in Keras)."""
    return {name: layer.trainable for name, layer in slots.items()}


def _model_name(config):
    inner = config.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) and name else "resnet50"


def _read_h5(h5, arch):
    """Parts of an HDF5 file: a full model (model_config), or weights only. With arch given,
    any legacy file is read into it by layer order, as Keras's load_weights does (layers without
    weights, whatever they are, are skipped)."""
    root = h5.file
    config_text = h5.text(root, "model_config")
    if config_text is not None and arch is None:
        config = _json(config_text, h5.where, "model_config")
        parsed_arch, slots = keras_graph.parse(config, h5.where)
        weights_root = h5.group(root, "model_weights") or root
        named = _read_legacy_by_config(h5, weights_root, parsed_arch, slots)
        folded_arch, named = keras_graph.fold(parsed_arch, named, h5.where)
        extra = _covidx_entry(_loads(h5.text(root, "covidx") if "covidx" in root.attrs else None))
        return Parts(folded_arch, named, _model_name(config), _training_config(h5), extra, _trainable(slots))
    if h5.names(root, "layer_names") is not None or h5.group(root, "model_weights") is not None:
        tensors = _legacy_tensors(h5, _legacy_root(h5))
        arch = arch or _infer_legacy_arch(h5, tensors)
        return Parts(arch, _read_in_order(h5, arch, tensors))
    if h5.group(root, "layers") is not None:
        arch = arch or _infer_v3_arch(h5)
        return Parts(arch, _v3_into(h5, arch))
    fail(h5.where, "an HDF5 file, but not a Keras model or weights file")


def read_h5(source, where, arch=None):
    """Parts of a Keras HDF5 file (path or bytes); see _read_h5."""
    return hdf5.read_file(source, where, lambda h5: _read_h5(h5, arch))


# --- .keras archives -------------------------------------------------------------------------


def weights_file_limit(arch):
    """The most bytes a Keras weights file for arch can need: its weights in float64, three times
    over (the optimizer's slots may be saved beside them), and the HDF5 metadata."""
    return 3 * 8 * architecture.weight_elements(arch) + HDF5_OVERHEAD


def read_archive(path, arch=None):
    """Parts of a Keras 3 .keras archive (config.json + model.weights.h5)."""
    with open_zip(path) as archive:
        try:
            names = set(archive.namelist())
            if "config.json" not in names:
                fail(path, "a zip archive, but not a Keras .keras file (no config.json)")
            if "model.weights.h5" not in names:
                extra = " (weights saved as npz are not read; save with the default h5)" \
                    if "model.weights.npz" in names else ""
                fail(path, "a .keras archive without model.weights.h5%s" % extra)
            config_bytes = member(archive, "config.json", MAX_CONFIG_BYTES, path)
            try:
                config = _json(config_bytes.decode("utf-8"), path, "config.json")
            except UnicodeDecodeError:
                fail(path, "config.json is not UTF-8 text")
            parsed_arch, slots = keras_graph.parse(config, path)
            weights = member(archive, "model.weights.h5", weights_file_limit(parsed_arch), path)
            metadata = member(archive, "metadata.json", MAX_CONFIG_BYTES, path) if "metadata.json" in names else b""
        except ModelFileError:
            raise
        except ZIP_ERRORS as e:
            fail(path, "damaged zip archive (%s: %s)" % (type(e).__name__, e))
    where = "%s (model.weights.h5)" % path

    def read(h5):
        spec = keras_graph.read_spec(parsed_arch)
        paths = {layer: slots[layer].v3_path for layer, _ in spec}
        counts = {layer: keras_graph.weight_count(slots[layer]) for layer, _ in spec}
        return _read_v3(h5, parsed_arch, paths, counts, spec)

    named = hdf5.read_file(weights, where, read)
    parsed_arch, named = keras_graph.fold(parsed_arch, named, path)
    if arch is not None:
        return Parts(arch, reorder(named, parsed_arch, arch, path))
    compile_config = config.get("compile_config")
    metadata = _loads(metadata)
    extra = _covidx_entry(metadata.get("covidx") if isinstance(metadata, dict) else None)
    return Parts(parsed_arch, named, _model_name(config), compile_config if isinstance(compile_config, dict) else None,
                 extra, _trainable(slots))


def reorder(named, source_arch, target_arch, where):
    """Weights of one architecture given to another, in Keras's order (as load_weights does)."""
    source = [named["%s/%s" % (layer, w)] for layer, ws in architecture.weight_spec(source_arch) for w, _ in ws]
    target = [("%s/%s" % (layer, w), shape) for layer, ws in architecture.weight_spec(target_arch) for w, shape in ws]
    if len(source) != len(target):
        fail(where, "the file's model has %d weight tensors, this architecture (%s) %d"
             % (len(source), _describe(target_arch), len(target)))
    out = {}
    for array, (key, shape) in zip(source, target):
        if array.shape != tuple(shape):
            fail(where, "%s: expected shape %s, the file has %s" % (key, tuple(shape), array.shape))
        out[key] = array
    return out
