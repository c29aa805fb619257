"""The network's description: layer names, weight names and shapes, in Keras's order.

An architecture is a plain dict (stored as JSON in model files):

    {"family": "resnet50", "variant": "v1" | "v1.5", "bn_epsilon": 1.001e-05,
     "pooling": "avg" | "max" | None, "pooling_name": "avg_pool",
     "head": [{"name": "dense", "units": 1024, "activation": "relu"}, ...],
     "rescaling": {"name": "rescaling", "scale": 0.00392156862745098, "offset": 0.0},   (optional)
     "input_norm": {"name": "input_norm", "epsilon": 1e-05}}                           (optional)

"rescaling" is Keras's Rescaling layer at the input (x * scale + offset); "input_norm" a
LayerNormalization of each image over height, width and channels, without center or scale,
before conv1_pad (after the rescaling). Absent or None: no such layer.

"v1" is Keras's ResNet50 (stride on the first 1x1 conv of a block, conv biases, BN epsilon
1.001e-5); "v1.5" is torchvision's (stride on the 3x3 conv, no conv biases, BN epsilon 1e-5).
"input_norm", where present and not None, standardises each image before the first convolution:
(x - mean) / sqrt(var + epsilon) over all its pixels and channels, as Keras's
LayerNormalization(axis=[1, 2, 3], center=False, scale=False) does; it has no weights.
"""
from __future__ import annotations

import math

import numpy as np

ACTIVATIONS = {"linear": 0, None: 0, "relu": 1, "softmax": 2, "sigmoid": 3}
VARIANTS = {"v1": 1, "v1.5": 2}
POOLINGS = {None: 0, "avg": 1, "max": 2}
OUTPUTS = {"head": 0, "features": 1, "feature_map": 2, "descriptor": 3}  # what the C engine's forward returns
INPUT_LAYERS = ("rescaling", "input_norm")  # optional layers before conv1_pad, in this order
STAGES = [(2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2)]  # stage, filters, blocks, stride
# What any architecture covidx runs can need, so that readers can refuse a file's declared sizes before
# allocating: ResNet50's largest tensor has 2.4M elements and the backbone 23.6M in all; a Dense layer
# may have up to 2**25 weights (2048 x 16384) and a model 2**26 weights in all (2.3x the backbone).
MAX_TENSOR_ELEMENTS = 1 << 25
MAX_WEIGHT_ELEMENTS = 1 << 26


def conv_layers(variant):
    """The 53 convolutions as (name, kernel size, cin, cout, stride), in the C core's canonical
    order: conv1, then per block _1, _2, _3 and, in a stage's first block, the shortcut _0."""
    convs = [("conv1", 7, 3, 64, 2)]
    cin = 64
    for stage, f, blocks, stride in STAGES:
        for b in range(1, blocks + 1):
            s = stride if b == 1 else 1
            s1, s2 = (s, 1) if variant == "v1" else (1, s)
            p = "conv%d_block%d" % (stage, b)
            convs += [(p + "_1", 1, cin, f, s1), (p + "_2", 3, f, f, s2), (p + "_3", 1, f, 4 * f, 1)]
            if b == 1:
                convs.append((p + "_0", 1, cin, 4 * f, s))
            cin = 4 * f
    return convs


def _keras_block_order(prefix, projection):
    """Conv/BN layer prefixes of one block in Keras's model.layers order: the shortcut conv sits
    between the main path's _2_relu and _3_conv."""
    if projection:
        return [(prefix + "_1", "conv"), (prefix + "_1", "bn"), (prefix + "_2", "conv"), (prefix + "_2", "bn"),
                (prefix + "_0", "conv"), (prefix + "_3", "conv"), (prefix + "_0", "bn"), (prefix + "_3", "bn")]
    return [(prefix + "_%d" % i, kind) for i in (1, 2, 3) for kind in ("conv", "bn")]


def weight_spec(arch):
    """[(layer name, [(weight name, shape), ...]), ...] for the layers that have weights, in
    Keras's model.layers order (the order of get_weights())."""
    variant = arch["variant"]
    shapes = {name: (k, cin, cout) for name, k, cin, cout, _ in conv_layers(variant)}
    order = [("conv1", "conv"), ("conv1", "bn")]
    for stage, _, blocks, _ in STAGES:
        for b in range(1, blocks + 1):
            order += _keras_block_order("conv%d_block%d" % (stage, b), b == 1)
    spec = []
    for prefix, kind in order:
        k, cin, cout = shapes[prefix]
        if kind == "conv":
            ws = [("kernel", (k, k, cin, cout))]
            if variant == "v1":
                ws.append(("bias", (cout,)))
            spec.append((prefix + "_conv", ws))
        else:
            spec.append((prefix + "_bn", [(n, (cout,)) for n in ("gamma", "beta", "moving_mean", "moving_variance")]))
    cin = 2048
    for layer in arch.get("head", []):
        spec.append((layer["name"], [("kernel", (cin, layer["units"])), ("bias", (layer["units"],))]))
        cin = layer["units"]
    return spec


def input_norm_epsilon(arch):
    """The input standardisation's epsilon, or 0.0 where the network has none."""
    norm = arch.get("input_norm")
    return float(norm["epsilon"]) if norm else 0.0


def output_units(arch):
    head = arch.get("head", [])
    return head[-1]["units"] if head else 2048


def validate(arch):
    """Raises ValueError naming the first field that is wrong."""
    if not isinstance(arch, dict):
        raise ValueError("architecture: expected a dict, got %r" % type(arch).__name__)
    if arch.get("family") != "resnet50":
        raise ValueError("architecture.family: only 'resnet50' is supported, got %r" % arch.get("family"))
    if arch.get("variant") not in VARIANTS:
        raise ValueError("architecture.variant: expected 'v1' or 'v1.5', got %r" % arch.get("variant"))
    eps = arch.get("bn_epsilon")
    if not isinstance(eps, (int, float)) or not 0 < eps < 1 or not math.isfinite(eps):
        raise ValueError("architecture.bn_epsilon: expected a small positive number, got %r" % (eps,))
    if arch.get("pooling") not in POOLINGS:
        raise ValueError("architecture.pooling: expected 'avg', 'max' or None, got %r" % arch.get("pooling"))
    head = arch.get("head", [])
    if not isinstance(head, list) or len(head) > 16:
        raise ValueError("architecture.head: expected a list of at most 16 Dense layers")
    if head and arch.get("pooling") is None:
        raise ValueError("architecture.head: Dense layers need a global pooling before them")
    names = set()
    for i, layer in enumerate(head):
        if not isinstance(layer, dict):
            raise ValueError("architecture.head[%d]: expected a dict" % i)
        units = layer.get("units")
        if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units <= 1 << 20:
            raise ValueError("architecture.head[%d].units: expected a positive integer, got %r" % (i, units))
        if layer.get("activation") not in ACTIVATIONS:
            raise ValueError("architecture.head[%d].activation: expected one of relu, softmax, sigmoid, "
                             "linear, got %r" % (i, layer.get("activation")))
        if not isinstance(layer.get("name"), str) or layer["name"] in names:
            raise ValueError("architecture.head[%d].name: expected a unique string" % i)
        names.add(layer["name"])
    cin, total = 2048, BACKBONE_ELEMENTS
    for i, layer in enumerate(head):
        if cin * layer["units"] > MAX_TENSOR_ELEMENTS:
            raise ValueError("architecture.head[%d]: a Dense layer of %d x %d weights is more than covidx runs "
                             "(at most %d per layer)" % (i, cin, layer["units"], MAX_TENSOR_ELEMENTS))
        total += (cin + 1) * layer["units"]
        cin = layer["units"]
    if total > MAX_WEIGHT_ELEMENTS:
        raise ValueError("architecture.head: %d weights in all is more than covidx runs (at most %d)"
                         % (total, MAX_WEIGHT_ELEMENTS))
    _validate_input_layers(arch)
    return arch


def check_weights(arch, named):
    """named ({'layer/weight': array}) as float32 C arrays, after checking that it holds every
    weight of arch, and no other, in its shape; else an error naming the first wrong tensor."""
    expected = {"%s/%s" % (layer, w): shape for layer, ws in weight_spec(arch) for w, shape in ws}
    missing = [k for k in expected if k not in named]
    if missing:
        raise ValueError("weights: missing %d tensors, first %r" % (len(missing), missing[0]))
    extra = [k for k in named if k not in expected]
    if extra:
        raise ValueError("weights: unexpected tensor %r for this architecture" % extra[0])
    weights = {}
    for key, shape in expected.items():
        a = np.asarray(named[key])
        if a.dtype.kind not in "biuf":
            raise TypeError("weights[%r]: expected a numeric array, got dtype %s" % (key, a.dtype))
        if a.shape != tuple(shape):
            raise ValueError("weights[%r]: expected shape %s, got %s" % (key, tuple(shape), a.shape))
        weights[key] = np.array(a, dtype=np.float32, order="C")
    return weights


def weight_elements(arch):
    """The number of weights (floats) of arch, in all."""
    return sum(math.prod(shape) for _, ws in weight_spec(arch) for _, shape in ws)


BACKBONE_ELEMENTS = weight_elements({"variant": "v1", "head": []})


def _validate_input_layers(arch):
    rescaling = arch.get("rescaling")
    if rescaling is not None:
        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def factor(v):  # one number, or one per channel
            return number(v) or (isinstance(v, list) and len(v) == 3 and all(number(c) for c in v))

        if not isinstance(rescaling, dict) or not isinstance(rescaling.get("name"), str) or not all(
                factor(rescaling.get(k)) for k in ("scale", "offset")):
            raise ValueError("architecture.rescaling: expected {'name': str, 'scale': s, 'offset': o} with numbers "
                             "(or 3 per-channel numbers), got %r" % (rescaling,))
    norm = arch.get("input_norm")
    if norm is not None:
        eps = norm.get("epsilon") if isinstance(norm, dict) else None
        if not isinstance(norm, dict) or not isinstance(norm.get("name"), str) or isinstance(eps, bool) or \
                not isinstance(eps, (int, float)) or not 0 < eps < 1 or not math.isfinite(eps):
            raise ValueError("architecture.input_norm: expected None or {'name': str, 'epsilon': a small positive "
                             "number in (0, 1)}, got %r" % (norm,))
