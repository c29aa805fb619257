"""The Keras layer list of a covidx model: every layer Keras's functional ResNet50 has (input,
padding, conv, batchnorm, activation, pooling, add), in Keras's model.layers order, with output
shapes, parameter counts and inbound layers. It drives summary(), model.layers and trainable."""
from __future__ import annotations

from . import architecture


class Layer:
    """One entry of model.layers: .name, .trainable (writable), class_name, output_shape,
    count_params(). Weights live in the model; layers only describe them."""

    def __init__(self, name, class_name, output_shape, trainable_params=0, non_trainable_params=0, inbound=()):
        self.name, self.class_name, self.output_shape = name, class_name, output_shape
        self._trainable_params, self._non_trainable_params = trainable_params, non_trainable_params
        self.inbound = list(inbound)
        self._trainable = True

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)

    def count_params(self):
        return self._trainable_params + self._non_trainable_params

    def __repr__(self):
        return "<%s name=%s, built=True>" % (self.class_name, self.name)


def _conv_out(size, k, stride, pad):
    return None if size is None else (size + 2 * pad - k) // stride + 1


def build(arch, input_shape, input_name="input_layer"):
    """[(name, class_name, output_shape, trainable params, non-trainable params, inbound)]."""
    h, w = input_shape[0], input_shape[1]
    variant, rows = arch["variant"], []
    bias = 1 if variant == "v1" else 0

    def add(name, cls, shape, tp=0, ntp=0, inbound=()):
        rows.append((name, cls, (None,) + tuple(shape), tp, ntp, list(inbound)))
        return name

    def pad(v, p):
        return None if v is None else v + 2 * p

    def conv_bn(prefix, k, cin, cout, stride, inbound, size):
        hh, ww = size
        same = (k - 1) // 2 if k == 3 else 0
        oh, ow = _conv_out(hh, k, stride, same), _conv_out(ww, k, stride, same)
        c = add(prefix + "_conv", "Conv2D", (oh, ow, cout), k * k * cin * cout + bias * cout, 0, [inbound])
        return c, (oh, ow)

    x = add(input_name, "InputLayer", (h, w, 3))
    if arch.get("input_norm"):
        x = add(arch["input_norm"]["name"], "LayerNormalization", (h, w, 3), inbound=[x])
    x = add("conv1_pad", "ZeroPadding2D", (pad(h, 3), pad(w, 3), 3), inbound=[x])
    h1, w1 = _conv_out(pad(h, 3), 7, 2, 0), _conv_out(pad(w, 3), 7, 2, 0)
    x = add("conv1_conv", "Conv2D", (h1, w1, 64), 7 * 7 * 3 * 64 + bias * 64, 0, [x])
    x = add("conv1_bn", "BatchNormalization", (h1, w1, 64), 128, 128, [x])
    x = add("conv1_relu", "Activation", (h1, w1, 64), inbound=[x])
    x = add("pool1_pad", "ZeroPadding2D", (pad(h1, 1), pad(w1, 1), 64), inbound=[x])
    size = (_conv_out(pad(h1, 1), 3, 2, 0), _conv_out(pad(w1, 1), 3, 2, 0))
    x = add("pool1_pool", "MaxPooling2D", size + (64,), inbound=[x])
    cin = 64
    for stage, f, blocks, stride in architecture.STAGES:
        for b in range(1, blocks + 1):
            p = "conv%d_block%d" % (stage, b)
            s = stride if b == 1 else 1
            s1, s2 = (s, 1) if variant == "v1" else (1, s)
            block_in = x
            c1, sz1 = conv_bn(p + "_1", 1, cin, f, s1, block_in, size)
            bn1 = add(p + "_1_bn", "BatchNormalization", sz1 + (f,), 2 * f, 2 * f, [c1])
            r1 = add(p + "_1_relu", "Activation", sz1 + (f,), inbound=[bn1])
            c2, sz2 = conv_bn(p + "_2", 3, f, f, s2, r1, sz1)
            bn2 = add(p + "_2_bn", "BatchNormalization", sz2 + (f,), 2 * f, 2 * f, [c2])
            r2 = add(p + "_2_relu", "Activation", sz2 + (f,), inbound=[bn2])
            if b == 1:
                c0, sz0 = conv_bn(p + "_0", 1, cin, 4 * f, s, block_in, size)
            c3, sz3 = conv_bn(p + "_3", 1, f, 4 * f, 1, r2, sz2)
            if b == 1:
                short = add(p + "_0_bn", "BatchNormalization", sz0 + (4 * f,), 8 * f, 8 * f, [c0])
            else:
                short = block_in
            bn3 = add(p + "_3_bn", "BatchNormalization", sz3 + (4 * f,), 8 * f, 8 * f, [c3])
            a = add(p + "_add", "Add", sz3 + (4 * f,), inbound=[short, bn3])
            x = add(p + "_out", "Activation", sz3 + (4 * f,), inbound=[a])
            size, cin = sz3, 4 * f
    if arch["pooling"] is not None:
        cls = "GlobalAveragePooling2D" if arch["pooling"] == "avg" else "GlobalMaxPooling2D"
        x = add(arch.get("pooling_name") or "avg_pool", cls, (2048,), inbound=[x])
    units_in = 2048
    for d in arch.get("head", []):
        x = add(d["name"], "Dense", (d["units"],), units_in * d["units"] + d["units"], 0, [x])
        units_in = d["units"]
    return rows


def format_shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
