"""Keras model configs (the model_config of a legacy .h5, the config.json of a .keras archive) read
into a covidx architecture.

covidx runs one graph: an optional Rescaling and an optional standardisation of the whole image
(LayerNormalization on axes 1, 2, 3, or GroupNormalization with one group; no center or scale) at
the input, Keras's ResNet50 (keras.applications, flat or
nested as one layer), then optional global pooling and a head of the layers covidx builds: Dense,
BatchNormalization (folded into a neighbouring Dense layer, as covidx.keras.layers heads are),
Activation, and Dropout, Flatten and the like, which change nothing at inference. The config is
checked layer by layer against that graph, connections included; the first layer that differs is
named in the error. Both the Keras 2 (tf.keras) and the Keras 3 spellings of configs are read.

parse() gives the architecture as read from the file, whose "file_head" lists the head's layers
(Dense and BatchNormalization with their weights, Activation); read_spec() names the weights to
read for it, and fold() turns it and its weights into the Dense-only head covidx's engine runs."""
from __future__ import annotations

import re

from .. import architecture, head, layer_table
from .errors import ModelFileError, fail

CONTAINERS = {"Functional", "Model", "Sequential"}
# layers that leave their input unchanged at inference
IDENTITY_LAYERS = {"Dropout", "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization"}
ACTIVATION_NAMES = {None: "linear", "linear": "linear", "relu": "relu", "softmax": "softmax", "sigmoid": "sigmoid"}
SUPPORTED = ("covidx runs Keras's ResNet50 (keras.applications) followed by global pooling and Dense layers "
             "(with BatchNormalization, Dropout and Activation layers between them)")


class Layer:
    """One layer of the flattened graph.

    uid: unique across nested models; name: the layer's own name (its group in a legacy .h5);
    inbound: uids of the layers it reads; h5_group: the top-level layer whose legacy .h5 group
    holds its weights (itself, or the nested model it is in); v3_path: its group in a Keras 3
    weights file ('layers/conv2d/vars', 'layers/functional/layers/conv2d/vars')."""

    def __init__(self, uid, name, cls, config, inbound, h5_group, v3_path, trainable=True):
        self.uid, self.name, self.cls, self.config = uid, name, cls, config
        self.inbound, self.h5_group, self.v3_path = inbound, h5_group, v3_path
        # the layer and every model around it trainable: decides Keras's legacy weight order
        self.trainable = trainable and config.get("trainable", True) is not False

    def __repr__(self):
        return "%r (%s)" % (self.name, self.cls)


def snake_case(name):
    """Keras's naming.to_snake_case: the group name of a layer class in Keras 3 weight files."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# --- flattening ------------------------------------------------------------------------------


class _Graph:
    def __init__(self, where):
        self.where = where
        self.layers = []
        self.alias = {}  # uid of an input layer or nested model -> the uid that really produces it

    def resolve(self, uid):
        seen = 0
        while uid in self.alias:
            uid = self.alias[uid]
            seen += 1
            if seen > 1000:
                fail(self.where, "model config: circular connections")
        return uid


def _history_names(value, out, depth=0):
    """Collects the producing layer names of Keras 3 tensors ('keras_history') found in value."""
    if depth > 16:
        raise ValueError("inbound nodes nested too deeply")
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = (value.get("config") or {}).get("keras_history")
            if isinstance(history, list) and history and isinstance(history[0], str):
                out.append(history[0])
            return
        for v in value.values():
            _history_names(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _history_names(v, out, depth + 1)


def _inbound_names(entry, where):
    nodes = entry.get("inbound_nodes") or []
    if not isinstance(nodes, list):
        fail(where, "model config: layer %r has malformed inbound_nodes" % entry.get("name"))
    if len(nodes) > 1:
        fail(where, "layer %r (%s) is not supported: it is called more than once (shared layer). %s"
             % (entry.get("name"), entry.get("class_name"), SUPPORTED))
    if not nodes:
        return []
    node, names = nodes[0], []
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        _history_names(node.get("args"), names)
        _history_names(node.get("kwargs"), names)
    elif isinstance(node, list):  # Keras 2: [[layer name, node index, tensor index, kwargs], ...]
        for item in node:
            if not (isinstance(item, list) and item and isinstance(item[0], str)):
                fail(where, "model config: layer %r has a malformed inbound node" % entry.get("name"))
            names.append(item[0])
    else:
        fail(where, "model config: layer %r has a malformed inbound node" % entry.get("name"))
    return names


def _endpoint_names(value, where, what):
    """input_layers/output_layers: ['name', 0, 0] (Keras 3, one tensor) or [['name', 0, 0], ...]."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, list) and v and isinstance(v[0], str) for v in value):
        fail(where, "model config: malformed %s" % what)
    return [v[0] for v in value]


def _flatten(graph, model, prefix, inbound, h5_group, v3_prefix, depth, trainable=True):
    """Adds the layers of one Functional/Sequential config to graph; returns the uid of its output.
    inbound: the uid feeding the model's input (None for the top-level model)."""
    where = graph.where
    if depth > 4:
        fail(where, "model config: models nested too deeply")
    cls, config = model.get("class_name"), model.get("config")
    if cls == "Sequential" and isinstance(config, list):  # Keras < 2.2 kept only the layer list
        config = {"layers": config}
    if cls not in CONTAINERS or not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        fail(where, "model config: expected a Functional or Sequential model, got %r" % (cls,))
    entries = config["layers"]
    if len(entries) > 10000:
        fail(where, "model config: %d layers, more than any supported model" % len(entries))
    used_names, previous = {}, inbound
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            fail(where, "model config: malformed layer entry")
        layer_cls, layer_config = entry.get("class_name"), entry["config"]
        name = entry.get("name") or layer_config.get("name")
        if not isinstance(name, str) or not isinstance(layer_cls, str):
            fail(where, "model config: a layer without a name or class")
        uid = prefix + name
        snake = snake_case(layer_cls)
        used_names[snake] = used_names.get(snake, -1) + 1
        path = v3_prefix + "layers/" + (snake if used_names[snake] == 0 else "%s_%d" % (snake, used_names[snake]))
        if cls == "Sequential":
            if previous is None and layer_cls not in CONTAINERS and layer_cls != "InputLayer":
                previous = _synthetic_input(graph, layer_config)  # Keras 2 kept the shape on the first layer
            sources = [] if layer_cls == "InputLayer" or previous is None else [previous]
        else:
            sources = [prefix + n for n in _inbound_names(entry, where)]
        if layer_cls == "InputLayer":
            if inbound is not None:
                graph.alias[uid] = inbound
            else:
                graph.layers.append(Layer(uid, name, layer_cls, layer_config, [], None, None))
        elif layer_cls in CONTAINERS:
            if len(sources) > 1:
                fail(where, "layer %r (%s) is not supported: a nested model with several inputs. %s"
                     % (name, layer_cls, SUPPORTED))
            source = sources[0] if sources else None  # None: the nested model's input is the input
            output = _flatten(graph, entry, uid + "/", source, h5_group or name, path + "/", depth + 1,
                              trainable and layer_config.get("trainable", True) is not False)
            graph.alias[uid] = output
        else:
            graph.layers.append(Layer(uid, name, layer_cls, layer_config, sources, h5_group or name, path + "/vars",
                                      trainable))
        previous = uid
    if cls == "Sequential":
        return previous
    outputs = _endpoint_names(config.get("output_layers"), where, "output_layers")
    ins = _endpoint_names(config.get("input_layers"), where, "input_layers")
    if len(outputs) != 1 or len(ins) != 1:
        fail(where, "model config: %d inputs and %d outputs; covidx models have one of each" % (len(ins), len(outputs)))
    return prefix + outputs[0]


def _synthetic_input(graph, first_config):
    shape = first_config.get("batch_input_shape") or first_config.get("batch_shape")
    layer = Layer("<input>", "input", "InputLayer", {"batch_input_shape": shape}, [], None, None)
    graph.layers.append(layer)
    return layer.uid


def flatten(model_config, where):
    """(layers, output uid): the model's layers in Keras's model.layers order, nested models
    replaced by their layers, each layer's inbound resolved to real producers."""
    graph = _Graph(where)
    output = _flatten(graph, model_config, "", None, None, "", 0)
    for layer in graph.layers:
        layer.inbound = [graph.resolve(u) for u in layer.inbound]
    inputs = [layer for layer in graph.layers if layer.cls == "InputLayer"]
    if len(inputs) != 1:
        fail(where, "model config: %d input layers; covidx models have one" % len(inputs))
    return graph.layers, graph.resolve(output)


# --- checking against ResNet50 ---------------------------------------------------------------


def _pair(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _padding(value):
    """ZeroPadding2D's padding as [[top, bottom], [left, right]]."""
    if isinstance(value, int):
        return [[value, value], [value, value]]
    if isinstance(value, list) and len(value) == 2:
        rows = [_pair(v) for v in value]
        if all(r is not None for r in rows):
            return rows
    return None


def _channels_last(config):
    return config.get("data_format") in (None, "channels_last")


def _activation_name(value):
    """'relu', 'softmax', 'sigmoid', 'linear', or None when covidx does not run it."""
    if isinstance(value, dict):  # Keras 3 spells some activations as serialised objects
        value = value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
    if value is None:
        return "linear"
    return ACTIVATION_NAMES.get(value.lower()) if isinstance(value, str) else None


def _bn_axis_ok(axis):
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    return axis in (3, -1)


# Keras's applications name ResNet layers conv<stage>_block<block>_...
KERAS_RESNET_NAME = re.compile(r"conv(\d)_block(\d+)_\w+")


def _stage_words(theirs, ours):
    """Why a keras.applications layer name differs from ResNet50's at the same point, in words."""
    blocks = {stage: n for stage, _f, n, _s in architecture.STAGES}
    t, o = int(theirs.group(1)), int(ours.group(1))
    if t < o and t in blocks:
        return "more than ResNet50's %d blocks in stage %d, such as ResNet101 or ResNet152" % (blocks[t], t)
    if t > o:
        return "fewer than ResNet50's %d blocks in stage %d" % (blocks[o], o)
    return "its blocks in another order"


class _Checker:
    """Matches the flattened layers, in order, against Keras's ResNet50 layer list."""

    def __init__(self, where):
        self.where = where
        self.convs = {name: (k, cin, cout, stride) for name, k, cin, cout, stride in architecture.conv_layers("v1")}
        self.epsilon = None

    def unsupported(self, layer, why):
        fail(self.where, "layer %r (%s) is not supported: %s. %s" % (layer.name, layer.cls, why, SUPPORTED))

    def backbone_layer(self, layer, expected_name, expected_cls):
        """Checks one layer's class and settings against the ResNet50 layer it stands for."""
        cls, c = layer.cls, layer.config
        ours, theirs = KERAS_RESNET_NAME.fullmatch(expected_name), KERAS_RESNET_NAME.fullmatch(layer.name)
        if ours and theirs and ours.group(1, 2) != theirs.group(1, 2):  # e.g. ResNet101's conv4_block7
            fail(self.where, "layer %r is where ResNet50 has %r: the file holds another architecture (a ResNet "
                 "with %s), not ResNet50. %s" % (layer.name, expected_name, _stage_words(theirs, ours), SUPPORTED))
        if cls == "ReLU" and expected_cls == "Activation":
            if any(c.get(k) not in (None, 0, 0.0) for k in ("max_value", "negative_slope", "threshold")):
                self.unsupported(layer, "a clipped or leaky ReLU where ResNet50 has %r" % expected_name)
            return
        if cls != expected_cls:
            self.unsupported(layer, "ResNet50 has %s %r at this point" % (expected_cls, expected_name))
        if cls in ("ZeroPadding2D", "Conv2D", "MaxPooling2D") and not _channels_last(c):
            self.unsupported(layer, "channels_first data; covidx takes channels_last images")
        if cls == "ZeroPadding2D":
            want = 3 if expected_name == "conv1_pad" else 1
            if _padding(c.get("padding")) != [[want, want], [want, want]]:
                self.unsupported(layer, "padding %r, ResNet50 pads %d" % (c.get("padding"), want))
        elif cls == "Conv2D":
            self.conv(layer, expected_name[:-len("_conv")])
        elif cls == "BatchNormalization":
            self.batchnorm(layer)
        elif cls == "Activation":
            if _activation_name(c.get("activation")) != "relu":
                self.unsupported(layer, "activation %r where ResNet50 has relu" % (c.get("activation"),))
        elif cls == "MaxPooling2D":
            if _pair(c.get("pool_size")) != [3, 3] or _pair(c.get("strides")) != [2, 2] or c.get("padding") != "valid":
                self.unsupported(layer, "pooling settings differ from ResNet50's 3x3 stride-2 max pooling")

    def conv(self, layer, prefix):
        k, cin, cout, stride = self.convs[prefix]
        c = layer.config
        padding = "same" if k == 3 else "valid"
        settings = [("filters", c.get("filters"), cout), ("kernel_size", _pair(c.get("kernel_size")), [k, k]),
                    ("strides", _pair(c.get("strides")), [stride, stride]), ("padding", c.get("padding"), padding),
                    ("dilation_rate", _pair(c.get("dilation_rate", 1)), [1, 1]), ("groups", c.get("groups", 1), 1)]
        for key, got, want in settings:
            if got != want:
                self.unsupported(layer, "%s %r, ResNet50 has %r here" % (key, c.get(key), want))
        if _activation_name(c.get("activation")) != "linear":
            self.unsupported(layer, "a fused activation %r in the convolution" % (c.get("activation"),))

    def batchnorm(self, layer):
        c = layer.config
        if not _bn_axis_ok(c.get("axis", -1)):
            self.unsupported(layer, "normalises axis %r, not the channels" % (c.get("axis"),))
        if c.get("center", True) is not True or c.get("scale", True) is not True:
            self.unsupported(layer, "batch normalization without center or scale")
        eps = c.get("epsilon", 1e-3)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            self.unsupported(layer, "epsilon %r" % (eps,))
        if self.epsilon is None:
            self.epsilon = float(eps)
        elif float(eps) != self.epsilon:
            self.unsupported(layer, "epsilon %r differs from the other batch normalizations (%r)" % (eps, self.epsilon))


def _input_ok(layer):
    c = layer.config
    shape = c.get("batch_shape") or c.get("batch_input_shape") or c.get("shape")
    if not isinstance(shape, list):
        return True
    dims = shape[1:] if len(shape) == 4 else shape
    if len(dims) != 3 or dims[2] != 3:
        return False
    return all(d is None or (isinstance(d, int) and d >= 32) for d in dims[:2])


def match(layers, output_uid, where):
    """(arch, slots): the covidx architecture of the flattened graph, and for every layer of
    architecture.weight_spec(arch) the Layer of the file that holds its weights (the backbone's
    other layers too, for their trainable flags).

    Raises ModelFileError naming the first layer that is not part of ResNet50 + a Dense head."""
    checker = _Checker(where)
    source = next(layer for layer in layers if layer.cls == "InputLayer")
    layers = [layer for layer in layers if layer is not source]
    if not _input_ok(source):
        checker.unsupported(source, "input shape %r; covidx takes (height >= 32, width >= 32, 3) images"
                            % (source.config.get("batch_shape") or source.config.get("batch_input_shape"),))
    input_layers, layers, network_input = _input_layers(checker, layers, source.uid)
    reference = {"pooling": None, "head": [], "variant": "v1"}
    rows = layer_table.build(reference, (None, None))[1:]  # without its input layer
    mapped = {"input_layer": network_input}
    slots = {}
    for (name, cls, _shape, _tp, _ntp, inbound), layer in zip(rows, layers):
        checker.backbone_layer(layer, name, cls)
        want = [mapped[n] for n in inbound]
        got = layer.inbound
        if sorted(got) != sorted(want) or (cls != "Add" and got != want):
            checker.unsupported(layer, "its inputs differ from ResNet50's %r" % name)
        mapped[name] = layer.uid
        slots[name] = layer  # its weights (Conv2D, BatchNormalization) and its trainable flag
    if len(layers) < len(rows):
        last = layers[-1] if layers else source
        fail(where, "the model ends at layer %r (%s), inside ResNet50 (where %r follows). %s"
             % (last.name, last.cls, rows[len(layers)][0], SUPPORTED))
    arch, head_slots = _top(checker, layers[len(rows):], mapped["conv5_block3_out"], output_uid)
    arch["bn_epsilon"] = checker.epsilon
    arch.update(input_layers)
    slots.update(head_slots)
    return arch, slots


def _factor(value):
    """A Rescaling scale or offset: a number, or one per channel; None otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in value):
        return [float(v) for v in value]
    return None


def _input_layers(checker, layers, input_uid):
    """({'rescaling': ..., 'input_norm': ...}, the layers after them, the uid feeding conv1_pad): a
    Rescaling right after the input, then a standardisation of each whole image without weights
    (LayerNormalization(axis=[1, 2, 3]) or GroupNormalization(groups=1), as covidx writes it in
    .h5 files, whose Keras reader loses a LayerNormalization's axis list), both optional."""
    found, previous = {}, input_uid
    while layers and layers[0].cls in ("Rescaling", "LayerNormalization", "GroupNormalization"):
        layer, c = layers[0], layers[0].config
        if layer.inbound != [previous]:
            checker.unsupported(layer, "it does not follow the input directly")
        if layer.cls == "Rescaling":
            if found:
                checker.unsupported(layer, "a Rescaling after another input layer")
            scale, offset = _factor(c.get("scale")), _factor(c.get("offset", 0.0))
            if scale is None or offset is None:
                checker.unsupported(layer, "scale %r and offset %r: covidx takes numbers (or one per channel)"
                                    % (c.get("scale"), c.get("offset")))
            found["rescaling"] = {"name": layer.name, "scale": scale, "offset": offset}
        else:
            if "input_norm" in found:
                checker.unsupported(layer, "a second input normalization")
            axis = c.get("axis")
            axis = sorted(axis) if isinstance(axis, list) else axis
            if layer.cls == "GroupNormalization":  # one group of all channels: the same per-image statistics
                if c.get("groups") != 1 or axis not in (-1, 3, [-1], [3]):
                    checker.unsupported(layer, "groups %r on axis %r; covidx runs one group of all channels "
                                        "(groups=1, axis=-1), the standardisation of each whole image"
                                        % (c.get("groups"), c.get("axis")))
            elif axis not in ([1, 2, 3], [-3, -2, -1]):
                checker.unsupported(layer, "it normalises axis %r; covidx runs a LayerNormalization of each whole "
                                    "image (axis=[1, 2, 3])" % (c.get("axis"),))
            if c.get("center", True) is not False or c.get("scale", True) is not False or c.get("rms_scaling"):
                checker.unsupported(layer, "center, scale or rms_scaling; covidx runs the input normalization "
                                    "without them (center=False, scale=False)")
            eps = c.get("epsilon", 1e-3)
            if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
                checker.unsupported(layer, "epsilon %r" % (eps,))
            found["input_norm"] = {"name": layer.name, "epsilon": float(eps)}
        previous = layer.uid
        layers = layers[1:]
    return found, layers, previous


def _top(checker, layers, previous, output_uid):
    """The layers after the backbone: global pooling, then the head (Dense, BatchNormalization,
    Activation, and layers that change nothing at inference), as the architecture's file_head."""
    pooling, pooling_name, head, slots, flat = None, None, [], {}, True
    names = set()
    for layer in layers:
        c = layer.config
        if layer.inbound != [previous]:
            checker.unsupported(layer, "it is not on the single path from the backbone to the output")
        if layer.cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            if pooling is not None or head:
                checker.unsupported(layer, "a second pooling")
            if not _channels_last(c):
                checker.unsupported(layer, "channels_first data; covidx takes channels_last images")
            pooling = "avg" if layer.cls == "GlobalAveragePooling2D" else "max"
            pooling_name, flat = layer.name, not c.get("keepdims", False)
        elif layer.cls == "Flatten":
            if pooling is None:
                checker.unsupported(layer, "flattening the feature map (use global pooling before Dense layers)")
            flat = True
        elif layer.cls in IDENTITY_LAYERS:
            pass
        elif layer.cls in ("Dense", "BatchNormalization"):
            if pooling is None or not flat:
                checker.unsupported(layer, "a %s layer needs global pooling (and Flatten after keepdims) before it"
                                    % layer.cls)
            name = layer.name
            while name in names:  # nested models may repeat a name
                name += "_"
            names.add(name)
            head.append(_dense(checker, layer, name) if layer.cls == "Dense" else _head_batchnorm(checker, layer, name))
            slots[name] = layer
        elif layer.cls in ("Activation", "Softmax", "ReLU"):
            activation = _standalone_activation(layer)
            if not head or activation is None:
                checker.unsupported(layer, "an activation layer that does not follow a Dense layer")
            head.append({"kind": "activation", "name": layer.name, "activation": activation})
        else:
            checker.unsupported(layer, "covidx has no such layer")
        previous = layer.uid
    if previous != output_uid:
        fail(checker.where, "the model's output is not the end of its layer chain. %s" % SUPPORTED)
    if pooling is not None and not flat:
        fail(checker.where, "the model ends with keepdims pooling (4-D output). %s" % SUPPORTED)
    return {"family": "resnet50", "variant": "v1", "pooling": pooling, "pooling_name": pooling_name,
            "file_head": head}, slots


def _dense(checker, layer, name):
    c = layer.config
    activation = _activation_name(c.get("activation"))
    units = c.get("units")
    if activation is None:
        checker.unsupported(layer, "activation %r (covidx runs relu, softmax, sigmoid, linear)"
                            % (c.get("activation"),))
    if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units <= 1 << 20:
        checker.unsupported(layer, "units %r" % (units,))
    return {"kind": "dense", "name": name, "units": units, "activation": activation}


def _head_batchnorm(checker, layer, name):
    c = layer.config
    if not _bn_axis_ok(c.get("axis", -1)) and c.get("axis") not in (1, [1]):
        checker.unsupported(layer, "normalises axis %r of the features" % (c.get("axis"),))
    eps = c.get("epsilon", 1e-3)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        checker.unsupported(layer, "epsilon %r" % (eps,))
    if c.get("renorm"):
        checker.unsupported(layer, "batch renormalization")
    return {"kind": "batchnorm", "name": name, "epsilon": float(eps), "center": c.get("center", True) is not False,
            "scale": c.get("scale", True) is not False}


def read_spec(arch):
    """[(layer, [(weight, shape)])]: the weights a parsed file holds, in Keras's order (the
    backbone's, then the head's Dense and BatchNormalization layers)."""
    spec = architecture.weight_spec(dict(arch, head=[]))
    units = 2048
    for entry in arch.get("file_head", []):
        if entry["kind"] == "dense":
            spec.append((entry["name"], [("kernel", (units, entry["units"])), ("bias", (entry["units"],))]))
            units = entry["units"]
        elif entry["kind"] == "batchnorm":
            kinds = (["gamma"] if entry["scale"] else []) + (["beta"] if entry["center"] else [])
            spec.append((entry["name"], [(k, (units,)) for k in kinds + ["moving_mean", "moving_variance"]]))
    return spec


def fold(arch, named, where):
    """(architecture, weights) of what covidx runs: the file's head folded into Dense layers
    (BatchNormalization merged into a neighbouring Dense layer, activations into the Dense layer
    before them), as covidx.keras.layers heads are folded."""
    layers, units = [], 2048
    for entry in arch.get("file_head", []):
        if entry["kind"] == "dense":
            layer = head.Dense(entry["units"], activation=entry["activation"], name=entry["name"],
                               kernel_initializer="zeros")
            layer.build((None, units))
            layer.set_weights([named[entry["name"] + "/kernel"], named[entry["name"] + "/bias"]])
            units = entry["units"]
        elif entry["kind"] == "batchnorm":
            layer = head.BatchNormalization(epsilon=entry["epsilon"], center=entry["center"],
                                            scale=entry["scale"], name=entry["name"])
            layer.build((None, units))
            layer.set_weights([named["%s/%s" % (entry["name"], w)] for w in layer._weights])
        else:
            layer = head.Activation(entry["activation"], name=entry["name"])
        layers.append(layer)
    try:
        folded = head.fold_head(layers)
    except ValueError as e:
        fail(where, "its head cannot run as covidx's Dense layers: %s. %s" % (e, SUPPORTED))
    head_names = {entry["name"] for entry in arch.get("file_head", [])}
    out = {k: v for k, v in named.items() if k.split("/")[0] not in head_names}
    for name, kernel, bias, _ in folded:
        out[name + "/kernel"], out[name + "/bias"] = kernel, bias
    result = {k: v for k, v in arch.items() if k != "file_head"}
    result["head"] = [{"name": n, "units": int(k.shape[1]), "activation": a} for n, k, _, a in folded]
    return result, out


def _standalone_activation(layer):
    c = layer.config
    if layer.cls == "Activation":
        return _activation_name(c.get("activation"))
    if layer.cls == "Softmax":
        axis = c.get("axis", -1)
        return "softmax" if axis in (-1, 1, [-1], [1]) else None
    if any(c.get(k) not in (None, 0, 0.0) for k in ("max_value", "negative_slope", "threshold")):
        return None
    return "relu"


def weight_kinds(layer):
    """The names of the tensors Keras stores for a Conv2D, BatchNormalization or Dense layer,
    each with whether it is trainable, in the layer's order."""
    if layer.cls == "BatchNormalization":
        c = layer.config
        kinds = [k for k, on in (("gamma", c.get("scale", True) is not False),
                                 ("beta", c.get("center", True) is not False)) if on]
        return [(k, layer.trainable) for k in kinds] + [("moving_mean", False), ("moving_variance", False)]
    kinds = [("kernel", layer.trainable)]
    if layer.config.get("use_bias", True):
        kinds.append(("bias", layer.trainable))
    return kinds


def weight_count(layer):
    """How many tensors Keras stores for a Conv2D, BatchNormalization or Dense layer."""
    if layer.cls == "BatchNormalization":
        return len(weight_kinds(layer))
    return 2 if layer.config.get("use_bias", True) else 1


def parse(model_config, where):
    """(arch, slots) for a model config dict; see match()."""
    try:
        layers, output = flatten(model_config, where)
        return match(layers, output, where)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, StopIteration) as e:
        if isinstance(e, ModelFileError):
            raise
        fail(where, "malformed model config (%s: %s)" % (type(e).__name__, e))
