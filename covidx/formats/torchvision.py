"""torchvision's ResNet50 state_dict (v1.5: stride on the 3x3 conv, no conv biases) in covidx's
Keras naming.

torchvision key                     covidx (Keras) name
conv1.weight (O, I, kh, kw)         conv1_conv/kernel (kh, kw, I, O)
bn1.weight, bias, running_mean/var  conv1_bn/gamma, beta, moving_mean, moving_variance
layer<s>.<b>.conv<i>.weight         conv<s+1>_block<b+1>_<i>_conv/kernel
layer<s>.<b>.bn<i>.*                conv<s+1>_block<b+1>_<i>_bn/*
layer<s>.0.downsample.0/1.*         conv<s+1>_block1_0_conv / _0_bn
fc.weight (out, in), fc.bias        a Dense layer: kernel (in, out), bias
fc.<k>.weight, fc.<k>.bias          the Linear layers of an nn.Sequential head, in order

num_batches_tracked is training bookkeeping and ignored. A state_dict records no activations:
hidden head layers are taken as ReLU and the last as softmax (sigmoid with one output), which is
what a classifier's probabilities are; ResNet50(weights=path, variant='v1.5', ...) chooses them."""
from __future__ import annotations

import re

import numpy as np

from .. import architecture
from .errors import fail

BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
CLASS_NAME_KEYS = ("class_names", "classes")


def _is_tensor_dict(obj):
    return isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) and \
        any(isinstance(v, np.ndarray) for v in obj.values())


def state_dict(obj, where):
    """(state_dict, class names or None) from what torch.save stored: a state_dict, or a
    checkpoint dict holding one under a usual key (and perhaps its class names)."""
    class_names = None
    if isinstance(obj, dict):
        for key in CLASS_NAME_KEYS:
            names = obj.get(key)
            if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
                class_names = list(names)
        if not _is_tensor_dict(obj) or not any(k.endswith("conv1.weight") for k in obj):
            for key in WRAPPER_KEYS:
                if _is_tensor_dict(obj.get(key)):
                    obj = obj[key]
                    break
    if not _is_tensor_dict(obj):
        fail(where, "no state_dict in the file (expected {name: tensor}, got %s)" % type(obj).__name__)
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, class_names


def _backbone_key(prefix):
    """torchvision module path -> covidx layer name, for the convs and batchnorms."""
    if prefix == "conv1":
        return "conv1_conv"
    if prefix == "bn1":
        return "conv1_bn"
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.(conv|bn)([1-3])", prefix)
    if m:
        return "conv%d_block%d_%s_%s" % (int(m.group(1)) + 1, int(m.group(2)) + 1, m.group(4),
                                          "conv" if m.group(3) == "conv" else "bn")
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.downsample\.([01])", prefix)
    if m:
        return "conv%d_block%d_0_%s" % (int(m.group(1)) + 1, int(m.group(2)) + 1,
                                        "conv" if m.group(3) == "0" else "bn")
    return None


def _float(array, key, where):
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        fail(where, "%s: expected a float tensor, got %s" % (key, getattr(array, "dtype", type(array).__name__)))
    return array.astype(np.float32)


def split(sd, where):
    """({covidx backbone name: array}, [(head key prefix, weight, bias)]) from a state_dict;
    any key outside torchvision's ResNet50 layout is refused by name."""
    backbone, head = {}, {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if param == "num_batches_tracked":
            continue
        layer = _backbone_key(module)
        if layer is not None and layer.endswith("_conv") and param == "weight":
            array = _float(value, key, where)
            if array.ndim != 4:
                fail(where, "%s: expected a 4-D conv weight, got shape %s" % (key, array.shape))
            backbone[layer + "/kernel"] = array.transpose(2, 3, 1, 0)
        elif layer is not None and layer.endswith("_bn") and param in BN_NAMES:
            backbone["%s/%s" % (layer, BN_NAMES[param])] = _float(value, key, where)
        elif re.fullmatch(r"fc(\.\d+)?", module) and param in ("weight", "bias"):
            head.setdefault(module, {})[param] = _float(value, key, where)
        else:
            fail(where, "unexpected key %r: not torchvision's ResNet50 layout (conv1, bn1, layer1-4, fc)" % key)
    layers = []
    for module in sorted(head, key=lambda m: int(m[3:]) if m != "fc" else -1):
        parts = head[module]
        if set(parts) != {"weight", "bias"} or parts["weight"].ndim != 2:
            fail(where, "%s: expected a Linear layer (2-D weight and a bias)" % module)
        layers.append((module, parts["weight"], parts["bias"]))
    return backbone, layers


def infer_arch(head_layers, where):
    head, units_in = [], 2048
    for module, weight, bias in head_layers:
        units = weight.shape[0]
        if weight.shape[1] != units_in:
            fail(where, "%s.weight: shape %s does not continue the network (%d inputs)"
                 % (module, weight.shape, units_in))
        head.append({"name": module.replace(".", "_"), "units": int(units), "activation": "relu"})
        units_in = units
    if head:
        head[-1]["activation"] = "softmax" if head[-1]["units"] > 1 else "sigmoid"
    return {"family": "resnet50", "variant": "v1.5", "bn_epsilon": 1e-5, "pooling": "avg",
            "pooling_name": "avgpool", "head": head}


def named_weights(backbone, head_layers, arch, where):
    """{covidx name: array} for arch, every shape checked against it."""
    if arch["variant"] != "v1.5":
        fail(where, "a torchvision ResNet50 is variant 'v1.5' (stride on the 3x3 conv, no conv biases); "
                    "build the architecture with variant='v1.5'")
    head = arch.get("head", [])
    if len(head_layers) != len(head):
        fail(where, "the file has %d Linear layers in fc, the architecture %d Dense layers"
             % (len(head_layers), len(head)))
    named = dict(backbone)
    for (module, weight, bias), layer in zip(head_layers, head):
        named[layer["name"] + "/kernel"] = np.ascontiguousarray(weight.T)
        named[layer["name"] + "/bias"] = bias
    for layer, spec_weights in architecture.weight_spec(arch):
        for weight, shape in spec_weights:
            key = "%s/%s" % (layer, weight)
            if key not in named:
                fail(where, "missing tensor for %s (torchvision key %s)" % (key, _torch_key(layer, weight)))
            if named[key].shape != tuple(shape):
                got = named[key].shape
                if weight == "kernel" and len(got) == 4:
                    got, shape = (got[3], got[2], got[0], got[1]), (shape[3], shape[2], shape[0], shape[1])
                elif weight == "kernel":
                    got, shape = got[::-1], tuple(shape)[::-1]
                fail(where, "%s: expected shape %s, the file has %s"
                     % (_torch_key(layer, weight), tuple(shape), tuple(got)))
    return named


def _torch_key(layer, weight):
    """The torchvision key of a covidx weight, for messages."""
    if layer == "conv1_conv":
        return "conv1.weight"
    if layer == "conv1_bn":
        return "bn1." + {v: k for k, v in BN_NAMES.items()}[weight]
    m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer)
    if not m:
        return "fc (%s/%s)" % (layer, weight)
    stage, block, index, kind = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3), m.group(4)
    param = "weight" if kind == "conv" else {v: k for k, v in BN_NAMES.items()}[weight]
    if index == "0":
        return "layer%d.%d.downsample.%d.%s" % (stage, block, 0 if kind == "conv" else 1, param)
    return "layer%d.%d.%s%s.%s" % (stage, block, kind, index, param)
