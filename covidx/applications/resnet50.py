"""ResNet50 with Keras's signature, plus `head=` for the Dense layers that the articles' model adds
after global average pooling, and `variant=` for torchvision's v1.5 layout."""
from __future__ import annotations

import os

import numpy as np

from .. import architecture, checks, formats
from ..scaling import preprocess_input  # noqa: F401  (Keras's keras.applications.resnet50.preprocess_input)
from . import imagenet
from ..model import Model
from ..saving import weights_for



def _glorot_uniform(rng, shape):
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def _initial_weights(arch, seed):
    """Keras's initialisers: glorot-uniform kernels, zero biases, BN gamma=1, beta=0, mean=0, var=1."""
    rng = np.random.default_rng(seed)
    ones = {"gamma", "moving_variance"}
    out = {}
    for layer, ws in architecture.weight_spec(arch):
        for w, shape in ws:
            if w == "kernel":
                out[layer + "/" + w] = _glorot_uniform(rng, shape)
            else:
                out[layer + "/" + w] = (np.ones if w in ones else np.zeros)(shape, dtype=np.float32)
    return out


def resnet50_architecture(include_top=True, pooling=None, classes=1000, classifier_activation="softmax",
                          head=None, variant="v1", input_norm=None):
    if variant not in architecture.VARIANTS:
        raise ValueError("variant: expected 'v1' (Keras) or 'v1.5' (torchvision), got %r" % (variant,))
    if include_top:
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ValueError("classes: expected a positive integer, got %r" % (classes,))
        if classifier_activation not in architecture.ACTIVATIONS:
            raise ValueError("classifier_activation: expected 'softmax', 'sigmoid', 'relu', 'linear' or None, got %r"
                             % (classifier_activation,))
        if head is None:
            pool_name, layers = "avg_pool", [{"name": "predictions", "units": classes,
                                              "activation": classifier_activation}]
        else:
            units = list(head)
            if not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in units):
                raise ValueError("head: expected a sequence of positive layer sizes, got %r" % (head,))
            # named as Keras names layers added with the functional API: dense, dense_1, ...
            names = ["dense"] + ["dense_%d" % i for i in range(1, len(units) + 1)]
            layers = [{"name": names[i], "units": u, "activation": "relu"} for i, u in enumerate(units)]
            layers.append({"name": names[len(units)], "units": classes, "activation": classifier_activation})
            pool_name = "global_average_pooling2d"
        pooling = "avg"
    else:
        if head is not None:
            raise ValueError("head: only used with include_top=True")
        if pooling not in ("avg", "max", None):
            raise ValueError("pooling: expected None, 'avg' or 'max', got %r" % (pooling,))
        pool_name, layers = {"avg": "avg_pool", "max": "max_pool", None: None}[pooling], []
    arch = {"family": "resnet50", "variant": variant, "bn_epsilon": 1.001e-5 if variant == "v1" else 1e-5,
            "pooling": pooling, "pooling_name": pool_name, "head": layers}
    if input_norm is not None:
        if isinstance(input_norm, bool) or not isinstance(input_norm, (int, float)) or not 0 < input_norm < 1:
            raise ValueError("input_norm: expected None or the standardisation's epsilon (a small positive number), "
                             "got %r" % (input_norm,))
        arch["input_norm"] = {"name": "input_norm", "epsilon": float(input_norm)}
    return architecture.validate(arch)


def ResNet50(include_top=True, weights="imagenet", input_tensor=None, input_shape=None, pooling=None,
             classes=1000, classifier_activation="softmax", name="resnet50", *, head=None, variant="v1",
             class_names=None, preprocessing="caffe", seed=None, input_norm=None, precision="fp32"):
    """Keras's ResNet50. covidx additions (keyword-only):

    head: sizes of hidden Dense(relu) layers between global average pooling and the output layer,
        e.g. (1024, 1024, 1024, 512) for the articles' model; None gives Keras's top.
    variant: 'v1' (Keras) or 'v1.5' (torchvision: stride on the 3x3 conv, no conv biases).
    class_names: output class names, in class_indices order.
    preprocessing: what the model expects of its inputs, recorded in saved files and applied only
        where covidx reads image files itself: 'caffe', 'tf', 'torch', or {'rescale': 1/255}.
    seed: seed for the random initial weights (weights=None).
    input_norm: None, or epsilon: each image is first standardised over its pixels and channels,
        (x - mean) / sqrt(var + epsilon), as Keras's LayerNormalization(axis=[1, 2, 3],
        center=False, scale=False, epsilon=epsilon) placed after the input. No weights.

    weights: None (random), 'imagenet' (Keras's official file, from Keras's cache or downloaded;
    see covidx.applications.imagenet), or the path of a weights file loaded into this
    architecture as Keras's load_weights does: Keras .h5 / .keras / .weights.h5, a PyTorch
    torchvision state_dict (variant='v1.5'), or a covidx .safetensors model. A covidx model's
    backbone comes with its input layers (the shipped model's per-image standardisation), so
    ResNet50(weights=<its file>, include_top=False) gives the very features that model's head sees.

    precision: 'fp32' (default) or 'bf16', see Model.set_precision.

    Input images may have any size >= 32x32; input_shape is only checked."""
    checks.precision(precision)
    model = _resnet50(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name,
                      head, variant, class_names, preprocessing, seed, input_norm)
    if precision != "fp32":
        model.set_precision(precision)
    return model


def _resnet50(include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name, head,
              variant, class_names, preprocessing, seed, input_norm):
    if input_tensor is not None:
        raise ValueError("input_tensor: not supported; covidx models take NumPy arrays")
    if input_shape is not None:
        shape = tuple(input_shape)
        if len(shape) != 3 or shape[2] != 3 or any(d is not None and d < 32 for d in shape[:2]):
            raise ValueError("input_shape: expected (height >= 32, width >= 32, 3), got %r" % (input_shape,))
    if isinstance(weights, str) and weights == "imagenet":
        _check_imagenet_arguments(include_top, classes, classifier_activation, head, variant)
    arch = resnet50_architecture(include_top, pooling, classes, classifier_activation, head, variant, input_norm)
    if weights is None:
        return Model(arch, _initial_weights(arch, seed), class_names=class_names, preprocessing=preprocessing,
                     name=name)
    if isinstance(weights, str) and weights == "imagenet":
        named = formats.load_weights(imagenet.weights_path(include_top), arch)
        return Model(arch, named, class_names=class_names, preprocessing=preprocessing, name=name)
    if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(weights):
        raise ValueError("weights: expected None (random initialisation), 'imagenet' or the path of a weights "
                         "file, got %r" % (weights,))
    arch, named, class_names, preprocessing = weights_for(arch, weights, class_names, preprocessing)
    return Model(arch, named, class_names=class_names, preprocessing=preprocessing, name=name)


def _check_imagenet_arguments(include_top, classes, classifier_activation, head, variant):
    """Keras's checks for weights='imagenet', and the covidx options the file cannot fill."""
    if variant != "v1":
        raise ValueError("weights='imagenet': Keras's ImageNet weights are variant 'v1', got variant=%r" % (variant,))
    if include_top and head is not None:
        raise ValueError("weights='imagenet': the ImageNet top has no hidden Dense layers; use head=None")
    if include_top and classes != 1000:
        raise ValueError("If using `weights='imagenet'` with `include_top=True`, `classes` should be 1000. "
                         "Received classes=%r" % (classes,))
    if include_top and classifier_activation not in (None, "softmax"):
        raise ValueError("If using `weights='imagenet'` with `include_top=True`, `classifier_activation` must "
                         "be None or 'softmax'. Received: %r" % (classifier_activation,))
