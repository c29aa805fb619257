"""A covidx model as a standard ONNX graph (needs the `onnx` package: pip install onnx, or
pip install 'covidx[onnx]').

The graph takes what predict takes, NHWC float32 images of any size (batch, height and width are
symbolic), and gives what predict gives. It holds the model's weights as they are (convolution,
batchnorm, Gemm), so any ONNX runtime can run it; batchnorm folding is left to the runtime. A
Rescaling layer at the input becomes Mul and Add, the input normalisation ReduceMean arithmetic.
Class names, preprocessing and the architecture go into the model's metadata."""
from __future__ import annotations

import json
import os

import numpy as np

from .. import architecture, atomic
from .._version import __version__

MIN_OPSET = 11
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf refuses messages over 2 GiB
ACTIVATION_OPS = {"relu": "Relu", "softmax": "Softmax", "sigmoid": "Sigmoid"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("to_onnx needs the onnx package: pip install onnx (or pip install 'covidx[onnx]')") from None
    return onnx


class _Graph:
    """Collects nodes and initializers; names each output after the node that makes it."""

    def __init__(self, onnx, epsilon, opset):
        self.onnx, self.epsilon, self.opset, self.nodes, self.initializers = onnx, epsilon, opset, [], []

    def constant(self, name, array):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op, inputs, name, **attributes):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name


def _conv_bn(g, w, name, x, k, stride, relu):
    """Conv (OIHW weights, symmetric padding) + BatchNormalization (+ Relu)."""
    conv, bn = name + "_conv", name + "_bn"
    inputs = [x, g.constant(conv + "/kernel", w[conv + "/kernel"].transpose(3, 2, 0, 1))]
    if conv + "/bias" in w:
        inputs.append(g.constant(conv + "/bias", w[conv + "/bias"]))
    pad = (k - 1) // 2
    y = g.node("Conv", inputs, conv, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    params = [g.constant("%s/%s" % (bn, p), w["%s/%s" % (bn, p)]) for p in ("gamma", "beta", "moving_mean",
                                                                                  "moving_variance")]
    y = g.node("BatchNormalization", [y] + params, bn, epsilon=float(g.epsilon))
    return g.node("Relu", [y], name + "_relu") if relu else y


def _standardize(g, x, norm):
    """Each image (x - mean) / sqrt(var + epsilon) over height, width and channels, from basic ops
    (opset 11 has no LayerNormalization)."""
    name = norm["name"]

    def mean_over_image(v, out):
        if g.opset >= 18:  # axes became an input in opset 18
            axes = name + "/axes"
            if not any(i.name == axes for i in g.initializers):
                g.initializers.append(g.onnx.numpy_helper.from_array(np.array([1, 2, 3], np.int64), axes))
            return g.node("ReduceMean", [v, axes], out, keepdims=1)
        return g.node("ReduceMean", [v], out, axes=[1, 2, 3], keepdims=1)

    mean = mean_over_image(x, name + "_mean")
    centred = g.node("Sub", [x, mean], name + "_centred")
    var = mean_over_image(g.node("Mul", [centred, centred], name + "_square"), name + "_var")
    eps = g.constant(name + "/epsilon", np.array(norm["epsilon"], np.float32))
    std = g.node("Sqrt", [g.node("Add", [var, eps], name + "_var_eps")], name + "_std")
    return g.node("Div", [centred, std], name)


def _backbone(g, w, variant, x):
    x = _conv_bn(g, w, "conv1", x, 7, 2, relu=True)
    x = g.node("MaxPool", [x], "pool1_pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for stage, _, blocks, stride in architecture.STAGES:
        for b in range(1, blocks + 1):
            p = "conv%d_block%d" % (stage, b)
            s = stride if b == 1 else 1
            s1, s2 = (s, 1) if variant == "v1" else (1, s)
            shortcut = _conv_bn(g, w, p + "_0", x, 1, s, relu=False) if b == 1 else x
            y = _conv_bn(g, w, p + "_1", x, 1, s1, relu=True)
            y = _conv_bn(g, w, p + "_2", y, 3, s2, relu=True)
            y = _conv_bn(g, w, p + "_3", y, 1, 1, relu=False)
            x = g.node("Relu", [g.node("Add", [shortcut, y], p + "_add")], p + "_out")
    return x


def _head(g, w, arch, x):
    pool = {"avg": "GlobalAveragePool", "max": "GlobalMaxPool"}[arch["pooling"]]
    x = g.node(pool, [x], arch.get("pooling_name") or "pool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    for layer in arch.get("head", []):
        name = layer["name"]
        x = g.node("Gemm", [x, g.constant(name + "/kernel", w[name + "/kernel"]),
                            g.constant(name + "/bias", w[name + "/bias"])], name)
        op = ACTIVATION_OPS.get(layer["activation"])
        if op == "Softmax":
            x = g.node(op, [x], name + "_softmax", axis=1)
        elif op is not None:
            x = g.node(op, [x], name + "_" + layer["activation"])
    return x


def build(model, opset=17):
    """The onnx.ModelProto of a covidx model."""
    onnx = _onnx()
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= latest:
        raise ValueError("opset: expected an integer from %d to %d, got %r" % (MIN_OPSET, latest, opset))
    arch, w = model.architecture, model.named_weights
    g = _Graph(onnx, arch["bn_epsilon"], opset)
    x = "input"
    rescaling = arch.get("rescaling")
    if rescaling:  # Keras's Rescaling layer: x * scale + offset, per channel or for all (NHWC: the last axis)
        x = g.node("Mul", [x, g.constant("rescaling/scale", np.asarray(rescaling["scale"], np.float32))], "rescale")
        x = g.node("Add", [x, g.constant("rescaling/offset", np.asarray(rescaling["offset"], np.float32))], "offset")
    if arch.get("input_norm"):
        x = _standardize(g, x, arch["input_norm"])
    x = g.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    x = _backbone(g, w, arch["variant"], x)
    if arch["pooling"] is None:
        x = g.node("Transpose", [x], "to_nhwc", perm=[0, 2, 3, 1])
        out_shape = ["batch", "out_height", "out_width", 2048]
    else:
        x = _head(g, w, arch, x)
        out_shape = ["batch", architecture.output_units(arch)]
    g.nodes.append(onnx.helper.make_node("Identity", [x], ["output"], name="output"))
    float_type = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, model.name,
        [onnx.helper.make_tensor_value_info("input", float_type, ["batch", "height", "width", 3])],
        [onnx.helper.make_tensor_value_info("output", float_type, out_shape)],
        initializer=g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="covidx",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    _metadata(onnx, proto, model)
    return proto


def _metadata(onnx, proto, model):
    fields = {"covidx_version": __version__, "architecture": json.dumps(model.architecture),
              "preprocessing": json.dumps(model.preprocessing)}
    if model.class_names is not None:
        fields["class_names"] = json.dumps(model.class_names)
    onnx.helper.set_model_props(proto, fields)


def export(model, path, opset=17):
    """Writes model to path as ONNX (atomically); returns the path. Graphs over 1 GiB of weights
    keep them in path + '.data' beside it, as ONNX's external data."""
    onnx = _onnx()
    proto = build(model, opset)
    onnx.checker.check_model(proto)
    path = os.fspath(path)
    if model.count_params() * 4 > EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, path, save_as_external_data=True, location=os.path.basename(path) + ".data")
        return path
    return atomic.write_file(path, lambda tmp: onnx.save_model(proto, tmp))
