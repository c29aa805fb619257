"""Keras's functional API on a covidx ResNet50 backbone, for transfer learning:

    x = base_model.output
    x = GlobalAveragePooling2D()(x)
    x = Dense(1024, activation='relu')(x)
    preds = Dense(2, activation='softmax')(x)
    model = Model(inputs=base_model.input, outputs=preds)

The layers after the backbone (global pooling, Flatten, Dense, Dropout, BatchNormalization,
Activation) form the head. The head keeps its own weights here, in NumPy, so that covidx.training
can train it; the C engine runs a Dense-only copy in which Dropout is dropped and each
BatchNormalization is folded into a neighbouring Dense layer (both are affine maps at inference).
model.layers lists the backbone's 175 Keras layers (shared with base_model, like Keras) and then
the head's layers, with Keras's automatic names (dense, dense_1, ...)."""
from __future__ import annotations

import collections
import weakref

import numpy as np

from . import architecture
from . import model as model_mod
from .layer_table import format_shape

# --- automatic names, as Keras gives them (dense, dense_1, ... per process) -------------------------

_name_counts = collections.defaultdict(int)


def unique_name(prefix):
    count = _name_counts[prefix]
    _name_counts[prefix] += 1
    return prefix if count == 0 else "%s_%d" % (prefix, count)


def clear_session():
    """Restarts the automatic layer names (dense, dense_1, ...), as keras.backend.clear_session()."""
    _name_counts.clear()


# --- symbolic tensors ---------------------------------------------------------------------------

class KerasTensor:
    """A symbolic tensor: a shape and where it comes from (a layer and the tensor that layer was
    called on, or a backbone model's input/output). It holds no values."""

    def __init__(self, shape, layer=None, parent=None, model=None, role=None):
        self.shape = tuple(shape)
        self.dtype = "float32"
        self._layer, self._parent = layer, parent
        self._model, self._role = model, role
        self.name = unique_name("keras_tensor")

    @property
    def ndim(self):
        return len(self.shape)

    def _source_name(self):
        """The layer that produced this tensor (for summary's 'Connected to')."""
        if self._layer is not None:
            return self._layer.name
        if self._model is None:  # keras.Input
            return self.name
        layers = self._model.layers
        return layers[0].name if self._role == "input" else layers[-1].name

    def __repr__(self):
        return "<KerasTensor shape=%s, dtype=float32, sparse=False, name=%s>" % (format_shape(self.shape), self.name)


_symbolic = weakref.WeakKeyDictionary()


def _backbone_output_shape(model):
    arch = model.architecture
    if arch.get("head"):
        return (None, arch["head"][-1]["units"])
    if arch["pooling"] is not None:
        return (None, 2048)
    h, w = model._input_shape[0], model._input_shape[1]
    if h is None or w is None:
        return (None, None, None, 2048)
    return (None,) + model._output_tail("feature_map", (None, h, w, 3))


def _symbolic_pair(model):
    if model not in _symbolic:
        inp = KerasTensor((None,) + tuple(model._input_shape), model=model, role="input")
        out = KerasTensor(_backbone_output_shape(model), parent=inp, model=model, role="output")
        _symbolic[model] = (inp, out)
    return _symbolic[model]


def Input(shape=None, batch_size=None, dtype=None, sparse=None, batch_shape=None, name=None, tensor=None,
          optional=False):
    """keras.Input: a symbolic image input, for the Keras 3 transfer-learning pattern

        inputs = keras.Input(shape=(224, 224, 3))
        x = base_model(inputs, training=False)
        x = GlobalAveragePooling2D()(x)
        outputs = Dense(2, activation='softmax')(x)
        model = keras.Model(inputs, outputs)

    covidx models take RGB images (height, width, 3): the input feeds a ResNet50 backbone."""
    if tensor is not None or sparse:
        raise ValueError("Input: tensor= and sparse= are not supported by covidx")
    if dtype not in (None, "float32"):
        raise ValueError("Input: covidx models take float32 images, got dtype=%r" % (dtype,))
    if batch_shape is not None:
        shape = tuple(batch_shape)[1:]
    if shape is None:
        raise ValueError("Input: give shape=(height, width, 3)")
    shape = tuple(None if d is None else int(d) for d in shape)
    if len(shape) != 3 or shape[2] != 3 or any(d is not None and d < 32 for d in shape[:2]):
        raise ValueError("Input: covidx models take RGB images, shape=(height, width, 3) with height and width of "
                         "at least 32 (or None), got shape=%r" % (shape,))
    t = KerasTensor((batch_size,) + shape, role="user_input")
    if name:
        t.name = name
    return t


def call_backbone(model, inputs):
    """base_model(inputs): the backbone's output tensor, computed from a keras.Input."""
    if not isinstance(inputs, KerasTensor) or inputs._role != "user_input":
        raise TypeError("%s: covidx backbones are called on a keras.Input (inputs = keras.Input(shape=(224, 224, 3)); "
                        "x = base_model(inputs)), or on arrays to compute" % model.name)
    if model.architecture.get("head"):
        raise ValueError("the backbone %r already has Dense layers; build on a backbone without top: "
                         "ResNet50(include_top=False, weights=...)" % model.name)
    return KerasTensor(_backbone_output_shape(model), parent=inputs, model=model, role="output")


def symbolic_input(model):
    """model.input: the functional model's input, or a backbone's input tensor."""
    if isinstance(model, Model):
        return model._graph_inputs
    return _symbolic_pair(model)[0]


def symbolic_output(model):
    """model.output: the functional model's output, or a backbone's output tensor (the last
    block's feature map, or the pooled features for pooling='avg'/'max')."""
    if isinstance(model, Model):
        return model._graph_outputs
    return _symbolic_pair(model)[1]


# --- activations and initialisers ----------------------------------------------------------------

ACTIVATIONS = ("linear", "relu", "softmax", "sigmoid")


def _activation_name(activation):
    if activation is None:
        return "linear"
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return activation.lower()
    name = getattr(activation, "__name__", None)
    if name in ACTIVATIONS:
        return name
    raise ValueError("activation: covidx heads support 'relu', 'softmax', 'sigmoid' and 'linear' (None), got %r"
                     % (activation,))


def activate(name, z):
    if name == "relu":
        return np.maximum(z, 0)
    if name == "softmax":
        e = np.exp(z - np.max(z, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)
    if name == "sigmoid":
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)
    return z


def activation_backward(name, grad, a):
    """The gradient at the activation's input, given the gradient at its output a."""
    if name == "relu":
        return grad * (a > 0)
    if name == "softmax":
        return a * (grad - np.sum(grad * a, axis=-1, keepdims=True))
    if name == "sigmoid":
        return grad * a * (1 - a)
    return grad


_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated at 2 sigma


def _truncated_normal(std, shape):
    values = np.random.normal(0.0, 1.0, size=shape)
    bad = np.abs(values) > 2
    while bad.any():
        values[bad] = np.random.normal(0.0, 1.0, size=int(bad.sum()))
        bad = np.abs(values) > 2
    return values * std / _TRUNCATED_STD


def initial_values(initializer, shape):
    """Keras's named initialisers, drawn from NumPy's global random state (np.random.seed makes
    them reproducible); a callable(shape, dtype) is also accepted."""
    if callable(initializer) and not isinstance(initializer, str):
        return np.asarray(initializer(shape, dtype="float32"), np.float32)
    name = str(initializer).lower()
    fan_in, fan_out = (shape[0], shape[-1]) if len(shape) > 1 else (shape[0], shape[0])
    if name == "zeros":
        values = np.zeros(shape)
    elif name == "ones":
        values = np.ones(shape)
    elif name == "random_normal":
        values = np.random.normal(0.0, 0.05, size=shape)
    elif name == "random_uniform":
        values = np.random.uniform(-0.05, 0.05, size=shape)
    elif name in ("glorot_uniform", "he_uniform", "lecun_uniform"):
        scale = {"glorot_uniform": 6.0 / (fan_in + fan_out), "he_uniform": 6.0 / fan_in,
                 "lecun_uniform": 3.0 / fan_in}[name]
        values = np.random.uniform(-np.sqrt(scale), np.sqrt(scale), size=shape)
    elif name in ("glorot_normal", "he_normal", "lecun_normal"):
        variance = {"glorot_normal": 2.0 / (fan_in + fan_out), "he_normal": 2.0 / fan_in,
                    "lecun_normal": 1.0 / fan_in}[name]
        values = _truncated_normal(np.sqrt(variance), shape)
    else:
        raise ValueError("initializer: unknown initializer %r (covidx knows glorot_uniform, glorot_normal, "
                         "he_uniform, he_normal, lecun_uniform, lecun_normal, random_normal, random_uniform, "
                         "zeros, ones)" % (initializer,))
    return np.asarray(values, np.float32)


# --- layers --------------------------------------------------------------------------------------

class Layer:
    """A head layer: called on a symbolic tensor it records the graph; forward/backward compute on
    NumPy batches of features (batch, units) for training. Weights are float32 arrays kept in
    Keras's order (get_weights/set_weights)."""

    default_name = "layer"

    def __init__(self, name=None, trainable=True, dtype=None, **kwargs):
        kwargs.pop("autocast", None)
        kwargs.pop("input_shape", None)
        kwargs.pop("input_dim", None)
        if kwargs:
            raise TypeError("%s: unexpected keyword argument(s): %s" % (type(self).__name__, ", ".join(sorted(kwargs))))
        if dtype not in (None, "float32"):
            raise ValueError("%s: covidx heads compute in float32, got dtype=%r" % (type(self).__name__, dtype))
        self.name = name or unique_name(self.default_name)
        self.trainable = bool(trainable)
        self.built = False
        self.input = self.output = None
        self.input_shape = self.output_shape = None
        self.inbound = []
        self._weights = collections.OrderedDict()  # weight name -> array, Keras's order
        self._non_trainable_names = set()  # weights that never train (moving statistics)
        self._version = 0  # counts changes of the weights, so that models know when to refold

    @property
    def class_name(self):
        return type(self).__name__

    # --- graph ---

    def __call__(self, inputs, training=None, **kwargs):
        if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
            inputs = inputs[0]
        if not isinstance(inputs, KerasTensor):
            raise TypeError("%s: covidx layers are called on symbolic tensors such as base_model.output, to build a "
                            "model; to compute on arrays, build the model and use model.predict()" % self.name)
        if training:
            raise ValueError("%s: training=True is not supported; covidx models run inference mode in predict()"
                             % self.name)
        if self.output is not None:
            raise ValueError("layer %r was already called on a tensor; covidx heads do not share layers" % self.name)
        shape = self.compute_output_shape(inputs.shape)
        if not self.built:
            self.build(inputs.shape)
        self.input, self.input_shape, self.output_shape = inputs, inputs.shape, shape
        self.inbound = [inputs._source_name()]
        self.output = KerasTensor(shape, layer=self, parent=inputs)
        return self.output

    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        return self._require_vector(input_shape)

    def _require_vector(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError("%s (%s): covidx heads work on feature vectors (batch, units); got an input of shape %s. "
                             "Add GlobalAveragePooling2D() after the backbone's output first."
                             % (self.name, self.class_name, format_shape(input_shape)))
        return tuple(input_shape)

    # --- weights ---

    @property
    def weights(self):
        return list(self._weights.values())

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [w for n, w in self._weights.items() if n not in self._non_trainable_names]

    @property
    def non_trainable_weights(self):
        if not self.trainable:
            return self.weights
        return [w for n, w in self._weights.items() if n in self._non_trainable_names]

    def get_weights(self):
        return [w.copy() for w in self._weights.values()]

    def set_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self._weights):
            raise ValueError("Layer %s expected %d weights, got %d" % (self.name, len(self._weights), len(weights)))
        for (name, current), new in zip(self._weights.items(), weights):
            new = np.asarray(new)
            if new.shape != current.shape:
                raise ValueError("Layer %s weight %s: expected shape %s, got %s" % (self.name, name, current.shape,
                                                                                   new.shape))
            current[...] = new
        self._version += 1

    def count_params(self):
        return int(sum(w.size for w in self._weights.values()))

    @property
    def _trainable_params(self):  # read by summary(): the parameters that can train
        return int(sum(w.size for n, w in self._weights.items() if n not in self._non_trainable_names))

    @property
    def _non_trainable_params(self):
        return int(sum(w.size for n, w in self._weights.items() if n in self._non_trainable_names))

    def trainable_variables(self):
        """[(weight name, array)] that an optimizer updates (none when the layer is frozen)."""
        if not self.trainable:
            return []
        return [(n, w) for n, w in self._weights.items() if n not in self._non_trainable_names]

    # --- computation on feature batches ---

    def forward(self, x, training=False):
        """(output, cache for backward)."""
        return x, None

    def backward(self, grad, cache, need_input_grad=True):
        """(gradient at the input or None, {weight name: gradient} for trainable weights)."""
        return grad, {}

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable}

    def __repr__(self):
        return "<%s name=%s, built=%s>" % (self.class_name, self.name, self.built)


class _GlobalPooling2D(Layer):
    """Global pooling of the backbone's last feature map; the C engine computes it."""

    pooling = None

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError("%s: covidx feature maps are channels_last, got data_format=%r" % (self.name, data_format))
        if keepdims:
            raise ValueError("%s: keepdims=True is not supported (covidx heads work on feature vectors)" % self.name)

    def __call__(self, inputs, training=None, **kwargs):
        if not (isinstance(inputs, KerasTensor) and inputs._role == "output" and len(inputs.shape) == 4):
            raise ValueError("%s: covidx applies global pooling only to a ResNet50 backbone's feature map "
                             "(base_model.output of a model built with include_top=False, pooling=None)" % self.name)
        return super().__call__(inputs, training, **kwargs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


class GlobalAveragePooling2D(_GlobalPooling2D):
    default_name = "global_average_pooling2d"
    pooling = "avg"


class GlobalMaxPooling2D(_GlobalPooling2D):
    default_name = "global_max_pooling2d"
    pooling = "max"


class Flatten(Layer):
    """Flatten of a feature vector (after global pooling) is the identity."""

    default_name = "flatten"

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError("%s: Flatten of the %s feature map is not supported; covidx heads start with global "
                             "pooling: use GlobalAveragePooling2D() (then Flatten() if you like, it changes nothing)"
                             % (self.name, format_shape(input_shape)))
        return tuple(input_shape)


class Dense(Layer):
    """Keras's Dense: activation(x @ kernel + bias)."""

    default_name = "dense"

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError("Received an invalid value for `units`, expected a positive integer. Received: units=%r"
                             % (units,))
        unsupported = {"kernel_regularizer": kernel_regularizer, "bias_regularizer": bias_regularizer,
                       "activity_regularizer": activity_regularizer, "kernel_constraint": kernel_constraint,
                       "bias_constraint": bias_constraint}
        given = [k for k, v in unsupported.items() if v is not None]
        if given:
            raise ValueError("Dense: %s not supported by covidx's training" % ", ".join(given))
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = _activation_name(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def build(self, input_shape):
        self._require_vector(input_shape)
        units_in = input_shape[-1]
        self._weights["kernel"] = initial_values(self.kernel_initializer, (units_in, self.units))
        if self.use_bias:
            self._weights["bias"] = initial_values(self.bias_initializer, (self.units,))
        self.built = True

    def compute_output_shape(self, input_shape):
        self._require_vector(input_shape)
        return (input_shape[0], self.units)

    @property
    def kernel(self):
        return self._weights["kernel"]

    @property
    def bias(self):
        return self._weights["bias"] if self.use_bias else np.zeros(self.units, np.float32)

    def forward(self, x, training=False):
        z = x @ self.kernel
        if self.use_bias:
            z += self.bias
        a = activate(self.activation, z)
        return a, (x, a)

    def backward(self, grad, cache, need_input_grad=True):
        x, a = cache
        dz = activation_backward(self.activation, grad, a)
        grads = {}
        if self.trainable:
            grads["kernel"] = x.T @ dz
            if self.use_bias:
                grads["bias"] = np.sum(dz, axis=0)
        return (dz @ self.kernel.T if need_input_grad else None), grads

    def get_config(self):
        return dict(super().get_config(), units=self.units, activation=self.activation, use_bias=self.use_bias)


class Dropout(Layer):
    """Keras's Dropout: in training, zeroes a fraction `rate` of the values and scales the rest by
    1/(1-rate); the identity in predict()."""

    default_name = "dropout"

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError("Invalid value received for argument `rate`. Expected a float value between 0 and 1. "
                             "Received: rate=%r" % (rate,))
        if noise_shape is not None:
            raise ValueError("%s: noise_shape is not supported" % self.name)
        self.rate = float(rate)
        self._rng = np.random.default_rng(seed if seed is not None else np.random.randint(2 ** 31))

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            return x, None
        keep = (self._rng.random(x.shape) >= self.rate).astype(x.dtype) / x.dtype.type(1 - self.rate)
        return x * keep, keep

    def backward(self, grad, cache, need_input_grad=True):
        return (grad if cache is None else grad * cache), {}

    def get_config(self):
        return dict(super().get_config(), rate=self.rate)


class BatchNormalization(Layer):
    """Keras's BatchNormalization on feature vectors: batch statistics in training (moving
    averages updated with `momentum`), moving statistics in predict() and when frozen."""

    default_name = "batch_normalization"

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None, gamma_constraint=None,
                 synchronized=False, **kwargs):
        if kwargs.pop("renorm", False):
            self._unsupported("renorm")
        if any(v is not None for v in (beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint)):
            self._unsupported("regularizers and constraints")
        super().__init__(**kwargs)
        if axis not in (-1, 1, [-1], [1]):
            raise ValueError("%s: covidx normalises feature vectors along their last axis; got axis=%r"
                             % (self.name, axis))
        self.axis, self.momentum, self.epsilon = -1, float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self._initializers = {"gamma": gamma_initializer, "beta": beta_initializer,
                              "moving_mean": moving_mean_initializer, "moving_variance": moving_variance_initializer}
        self._non_trainable_names = {"moving_mean", "moving_variance"}

    @staticmethod
    def _unsupported(what):
        raise ValueError("BatchNormalization: %s not supported by covidx's training" % what)

    def build(self, input_shape):
        self._require_vector(input_shape)
        units = input_shape[-1]
        names = (["gamma"] if self.scale else []) + (["beta"] if self.center else []) + ["moving_mean",
                                                                                        "moving_variance"]
        for name in names:
            self._weights[name] = initial_values(self._initializers[name], (units,))
        self.built = True

    def _gamma_beta(self, units):
        gamma = self._weights["gamma"] if self.scale else np.ones(units, np.float32)
        beta = self._weights["beta"] if self.center else np.zeros(units, np.float32)
        return gamma, beta

    def affine(self):
        """(a, c): the inference map x -> a*x + c, for folding into a Dense layer."""
        units = self._weights["moving_mean"].shape[0]
        gamma, beta = self._gamma_beta(units)
        a = gamma / np.sqrt(self._weights["moving_variance"] + np.float32(self.epsilon))
        return a.astype(np.float32), (beta - self._weights["moving_mean"] * a).astype(np.float32)

    def forward(self, x, training=False):
        gamma, beta = self._gamma_beta(x.shape[-1])
        if training and self.trainable:
            mean, var = np.mean(x, axis=0), np.var(x, axis=0)
            m = np.float32(self.momentum)
            mm, mv = self._weights["moving_mean"], self._weights["moving_variance"]
            mm[...] = mm * m + mean * (1 - m)
            mv[...] = mv * m + var * (1 - m)
            self._version += 1
        else:
            mean, var = self._weights["moving_mean"], self._weights["moving_variance"]
        inv_std = (1 / np.sqrt(var + np.float32(self.epsilon))).astype(np.float32)
        x_hat = (x - mean) * inv_std
        return x_hat * gamma + beta, (x_hat, inv_std, bool(training and self.trainable))

    def backward(self, grad, cache, need_input_grad=True):
        x_hat, inv_std, batch_stats = cache
        gamma, _ = self._gamma_beta(x_hat.shape[-1])
        grads = {}
        if self.trainable:
            if self.scale:
                grads["gamma"] = np.sum(grad * x_hat, axis=0)
            if self.center:
                grads["beta"] = np.sum(grad, axis=0)
        if not need_input_grad:
            return None, grads
        g_hat = grad * gamma
        if not batch_stats:
            return g_hat * inv_std, grads
        n = np.float32(grad.shape[0])
        dx = inv_std / n * (n * g_hat - np.sum(g_hat, axis=0) - x_hat * np.sum(g_hat * x_hat, axis=0))
        return dx, grads

    def get_config(self):
        return dict(super().get_config(), axis=self.axis, momentum=self.momentum, epsilon=self.epsilon,
                    center=self.center, scale=self.scale)


class Activation(Layer):
    """Keras's Activation layer ('relu', 'softmax', 'sigmoid', 'linear')."""

    default_name = "activation"

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = _activation_name(activation)

    def forward(self, x, training=False):
        a = activate(self.activation, x)
        return a, a

    def backward(self, grad, cache, need_input_grad=True):
        return activation_backward(self.activation, grad, cache), {}

    def get_config(self):
        return dict(super().get_config(), activation=self.activation)


# --- folding the head for the C engine -----------------------------------------------------------

def fold_head(layers):
    """The engine's Dense-only head for a chain of head layers (after global pooling):
    [(name, kernel, bias, activation)]. Dropout and Flatten are dropped; a BatchNormalization is
    folded into the Dense layer before it when that layer has no activation yet, otherwise into
    the next Dense layer; an Activation layer becomes the activation of the Dense before it."""
    folded = []  # [name, kernel, bias, activation or None while still open]
    pending = None  # an elementwise affine map (a, c) waiting for the next Dense layer

    def close_open_layer():
        if folded and folded[-1][3] is None:
            folded[-1][3] = "linear"

    for layer in layers:
        if isinstance(layer, (Dropout, Flatten)):
            continue
        if isinstance(layer, Dense):
            close_open_layer()
            kernel, bias = layer.kernel.astype(np.float32), layer.bias.astype(np.float32)
            if pending is not None:
                a, c = pending
                kernel, bias = a[:, None] * kernel, c @ kernel + bias
                pending = None
            folded.append([layer.name, kernel, bias, None])
            if layer.activation != "linear":
                folded[-1][3] = layer.activation
        elif isinstance(layer, BatchNormalization):
            a, c = layer.affine()
            if folded and folded[-1][3] is None:
                folded[-1][1] = folded[-1][1] * a[None, :]
                folded[-1][2] = folded[-1][2] * a + c
            else:
                pending = (a, c) if pending is None else (pending[0] * a, pending[1] * a + c)
        elif isinstance(layer, Activation):
            if pending is not None or not folded:
                raise ValueError("%s: an activation must follow a Dense layer (with at most BatchNormalization "
                                 "between them) for covidx's engine" % layer.name)
            if folded[-1][3] is None:
                folded[-1][3] = layer.activation
            elif layer.activation == "linear" or (layer.activation == folded[-1][3] == "relu"):
                continue
            else:
                raise ValueError("%s: a second activation after %s is not supported by covidx's engine"
                                 % (layer.name, folded[-1][0]))
        else:
            raise ValueError("%s (%s): not supported in a covidx head" % (layer.name, layer.class_name))
    if pending is not None:
        raise ValueError("a BatchNormalization at the end of the head, after an activation, cannot be folded into a "
                         "Dense layer; end the head with a Dense layer")
    close_open_layer()
    return [tuple(f) for f in folded]


# --- the functional model ------------------------------------------------------------------------

def _single(tensors, what):
    if isinstance(tensors, (list, tuple)):
        if len(tensors) != 1:
            raise ValueError("%s: covidx models have one input and one output, got %d tensors" % (what, len(tensors)))
        tensors = tensors[0]
    if isinstance(tensors, dict):
        raise ValueError("%s: dicts of tensors are not supported" % what)
    if not isinstance(tensors, KerasTensor):
        raise TypeError("%s: expected a symbolic tensor (e.g. base_model.input / a layer's output), got %s"
                        % (what, type(tensors).__name__))
    return tensors


def _trace_head(inputs, outputs):
    """(backbone model, head layers in order) for a chain of layers from the backbone's output."""
    chain, tensor = [], outputs
    while tensor._layer is not None:
        chain.append(tensor._layer)
        tensor = tensor._parent
    if tensor._role != "output":
        raise ValueError("outputs: must be computed from a ResNet50 backbone's output (x = base_model.output, or x = "
                         "base_model(inputs); then x = GlobalAveragePooling2D()(x); ...): covidx models are a backbone "
                         "and a head")
    base = tensor._model
    if inputs is not symbolic_input(base) and inputs is not tensor._parent:
        raise ValueError("inputs: must be the input the outputs were computed from (base_model.input, or the "
                         "keras.Input the backbone was called on)")
    chain.reverse()
    return base, chain


_applied_trainable = weakref.WeakKeyDictionary()


def _apply_pending_trainable(model):
    """Keras's `base_model.trainable = False` sets every layer of base_model; a covidx model records
    the flag as a plain attribute, applied to its layers here (once per assignment of a new value)."""
    flag = None if isinstance(model, Model) else model.__dict__.get("trainable")
    if flag is not None and _applied_trainable.get(model) is not flag:
        for layer in model.layers:
            layer.trainable = bool(flag)
        _applied_trainable[model] = flag


class Model(model_mod.Model):
    """keras.Model(inputs=base_model.input, outputs=preds): a covidx ResNet50 backbone and a head of
    Keras layers. Called as Model(architecture, weights, ...) it is the plain covidx.Model.

    Predictions run in the C engine with the head folded to Dense layers; fit() trains the head
    layers whose .trainable is True (the backbone must be frozen). save() writes the folded model
    (Dropout removed, BatchNormalization merged into Dense layers), which load_model() reads as a
    plain covidx model."""

    def __new__(cls, *args, **kwargs):
        if (args and isinstance(args[0], dict)) or "arch" in kwargs:
            return model_mod.Model(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        if kwargs:
            raise TypeError("Model: unexpected keyword argument(s): %s" % ", ".join(sorted(kwargs)))
        if inputs is None or outputs is None:
            raise ValueError("Model: give inputs= and outputs=, e.g. Model(inputs=base_model.input, outputs=preds)")
        inputs, outputs = _single(inputs, "inputs"), _single(outputs, "outputs")
        base, chain = _trace_head(inputs, outputs)
        _apply_pending_trainable(base)
        arch, head_start = self._architecture_of(base, chain, self._backbone_alone_ok)
        self._graph_inputs, self._graph_outputs = inputs, outputs
        self._base, self._chain, self._head = base, chain, chain[head_start:]
        self._check_unique_names()
        self._synced = None
        super().__init__(arch, self._folded_weights(), class_names=None, preprocessing=base.preprocessing,
                         name=name or unique_name("functional"))
        self._input_shape = tuple(base._input_shape)
        self._trainable = bool(trainable)
        if not trainable:
            self.trainable = False

    _backbone_alone_ok = False  # a Sequential holding only its backbone so far is one

    @staticmethod
    def _architecture_of(base, chain, backbone_alone_ok=False):
        """(the folded architecture, index of the first layer after the pooling in chain)."""
        barch = base.architecture
        if barch.get("head"):
            raise ValueError("the backbone %r already has Dense layers; build on a backbone without top: "
                             "ResNet50(include_top=False, weights=...)" % base.name)
        if barch["pooling"] is None and not chain and backbone_alone_ok:  # a Sequential being built
            pooling, pooling_name, start = None, None, 0
        elif barch["pooling"] is None:
            if not chain or not isinstance(chain[0], _GlobalPooling2D):
                raise ValueError("the head must start with GlobalAveragePooling2D() or GlobalMaxPooling2D() on "
                                 "base_model.output")
            pooling, pooling_name, start = chain[0].pooling, chain[0].name, 1
        else:
            pooling, pooling_name, start = barch["pooling"], barch.get("pooling_name"), 0
        folded = fold_head(chain[start:])
        head = [{"name": n, "units": int(k.shape[1]), "activation": act} for n, k, _, act in folded]
        arch = {"family": "resnet50", "variant": barch["variant"], "bn_epsilon": barch["bn_epsilon"],
                "pooling": pooling, "pooling_name": pooling_name, "head": head}
        arch.update((k, barch[k]) for k in architecture.INPUT_LAYERS if barch.get(k))  # the layers before conv1
        return architecture.validate(arch), start

    def _check_unique_names(self):
        seen = set()
        for layer in self.layers:
            if layer.name in seen:
                raise ValueError("The name %r is used 2 times in the model. All layer names should be unique."
                                 % layer.name)
            seen.add(layer.name)

    # --- the engine follows the head's weights ---
    #
    # The backbone's arrays are the backbone model's own (shared, as Keras shares layers between
    # models); this model keeps only its folded head. The engine is rebuilt when the head's
    # weights or the backbone model's engine changed since it was built.

    def _state(self):
        return (self._base._engine,) + tuple(layer._version for layer in self._head)

    def _folded_weights(self):
        out = {}
        for name, kernel, bias, _ in fold_head(self._head):
            out[name + "/kernel"], out[name + "/bias"] = kernel, bias
        return out

    def _set_named_weights(self, named):
        head_names = {d["name"] for d in self.architecture["head"]}
        head = {k: np.ascontiguousarray(v, np.float32) for k, v in named.items() if k.split("/")[0] in head_names}
        synced = self.__dict__.get("_synced")
        if self._unfamiliar is not None and synced is not None and synced[0] is not self._base._engine:
            self._drop_unfamiliar()  # the backbone model's weights changed, not only the head's
        self.__dict__["_head_store"] = head
        self.__dict__["_engine_store"] = self._engine_for(dict(self._base._weights, **head))
        self._synced = self._state()

    def _stale(self):
        synced = self.__dict__.get("_synced")
        return synced is not None and synced != self._state()

    @property
    def _engine(self):
        if self._stale():
            self._set_named_weights(self._folded_weights())
        return self.__dict__.get("_engine_store")

    @_engine.setter
    def _engine(self, engine):
        self.__dict__["_engine_store"] = engine

    @property
    def _weights(self):
        """{'layer/weight': array}: the backbone's and the folded head's (what save() writes)."""
        if self._stale():
            self._set_named_weights(self._folded_weights())
        return dict(self._base._weights, **self.__dict__.get("_head_store", {}))

    @_weights.setter
    def _weights(self, weights):
        pass  # the backbone model holds the backbone; _set_named_weights keeps the head

    # --- Keras's model attributes ---

    @property
    def layers(self):
        """The backbone's Keras layers (shared with the backbone model), then the head's."""
        _apply_pending_trainable(self._base)
        return list(self._base.layers) + list(self._chain)

    @property
    def head_layers(self):
        """The layers after global pooling, which fit() trains."""
        return list(self._head)

    @property
    def backbone(self):
        return self._base

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Keras's load_weights: the backbone's weights (shared with the backbone model) and the
        head's Dense layers, from a file with this model's architecture."""
        from . import formats

        if skip_mismatch:
            raise ValueError("load_weights: skip_mismatch=True is not supported; every tensor must fit")
        if any(not isinstance(layer, (Dense, Dropout, Flatten, Activation)) for layer in self._head):
            raise ValueError("load_weights: this model's head has BatchNormalization layers, which covidx files and "
                             "the Keras files it writes hold folded into the Dense layers; load the file as a model "
                             "instead: covidx.load_model(%r)" % (filepath,))
        named = formats.load_weights(filepath, self.architecture)
        self._base.set_weights([named[k] for k in self._backbone_keys()])
        for layer in self._head:
            if isinstance(layer, Dense):
                values = [named[layer.name + "/kernel"]] + ([named[layer.name + "/bias"]] if layer.use_bias else [])
                layer.set_weights(values)

    def _weights_and_flags(self):
        """The backbone's weights and flags, then each head layer's (Keras's order)."""
        out = list(model_mod.Model._weights_and_flags(self._base))
        for layer in self._head:
            out += [(w, layer.trainable and name not in layer._non_trainable_names)
                    for name, w in layer._weights.items()]
        return out

    def _backbone_keys(self):
        return ["%s/%s" % (layer, w) for layer, ws in architecture.weight_spec(self._base.architecture) for w, _ in ws]

    def get_weights(self):
        """Keras's order: the backbone's weights, then each head layer's (Dense kernel, bias;
        BatchNormalization gamma, beta, moving_mean, moving_variance)."""
        backbone = self._base._weights
        return [backbone[k].copy() for k in self._backbone_keys()] + [w for l in self._head for w in l.get_weights()]

    def set_weights(self, weights):
        keys = self._backbone_keys()
        weights = list(weights)
        expected = len(keys) + sum(len(l.weights) for l in self._head)
        if len(weights) != expected:
            raise ValueError("set_weights: expected a list of %d arrays, got %d" % (expected, len(weights)))
        backbone, rest = weights[:len(keys)], weights[len(keys):]
        current = self._base._weights
        if any(np.shape(w) != current[k].shape or not np.array_equal(w, current[k]) for k, w in zip(keys, backbone)):
            self._base.set_weights(backbone)  # shared with the backbone model, as in Keras
        for layer in self._head:
            n = len(layer.weights)
            layer.set_weights(rest[:n])
            rest = rest[n:]

    def count_params(self):
        return int(sum(layer.count_params() for layer in self.layers))

    def __repr__(self):
        head = ", ".join("%s(%s)" % (l.class_name, getattr(l, "units", "")) if isinstance(l, Dense) else l.class_name
                         for l in self._chain)
        return "<covidx functional Model %r: ResNet50 %s backbone -> %s>" % (self.name,
                                                                            self.architecture["variant"], head)


_SEQUENTIAL_OWN = {"add", "pop", "_build"}


class Sequential(Model):
    """keras.Sequential for a backbone and a head:

        model = keras.Sequential([base_model, GlobalAveragePooling2D(), Dense(2, activation='softmax')])

    (or .add() them one by one; a keras.Input first is allowed). The first layer after the input
    must be a covidx ResNet50 backbone without top; the rest are head layers."""

    _backbone_alone_ok = True

    def __init__(self, layers=None, trainable=True, name=None):
        self.__dict__["_sequence"] = []
        self.__dict__["_sequence_input"] = None
        self.__dict__["_sequence_name"] = name or unique_name("sequential")
        self.__dict__["_sequence_trainable"] = bool(trainable)
        for layer in layers or []:
            self.add(layer)

    def __getattr__(self, name):  # only reached for attributes not set yet: before a backbone is added
        if name.startswith("__") or "_sequence" not in self.__dict__ or self.__dict__.get("_graph_outputs") is not None:
            raise AttributeError(name)
        raise AttributeError("Sequential model %r has no backbone yet (%r is not available): add a ResNet50 backbone "
                             "first, e.g. Sequential([ResNet50(include_top=False, weights=...), "
                             "GlobalAveragePooling2D(), Dense(2, activation='softmax')])"
                             % (self.__dict__["_sequence_name"], name))

    def add(self, layer):
        """Appends a layer (the backbone first, then head layers) and rebuilds the model."""
        sequence = self.__dict__["_sequence"]
        if isinstance(layer, KerasTensor):
            if sequence or self.__dict__["_sequence_input"] is not None or layer._role != "user_input":
                raise ValueError("Sequential: a keras.Input can only come first")
            self.__dict__["_sequence_input"] = layer
            return
        if not sequence:
            if not isinstance(layer, model_mod.Model) or isinstance(layer, Model):
                raise ValueError("Sequential: covidx models start with a ResNet50 backbone (e.g. ResNet50("
                                 "include_top=False, weights=...)), got %r first" % (layer,))
            start = self.__dict__["_sequence_input"]
            tensor = call_backbone(layer, start) if start is not None else symbolic_output(layer)
            inputs = start if start is not None else symbolic_input(layer)
        else:
            if not isinstance(layer, Layer):
                raise ValueError("Sequential: after the backbone come head layers (GlobalAveragePooling2D, Dense, "
                                 "Dropout, BatchNormalization, Activation, Flatten), got %r" % (layer,))
            inputs, tensor = self.__dict__["_sequence_io"]
            tensor = layer(tensor)
        sequence.append(layer)
        self.__dict__["_sequence_io"] = (inputs, tensor)
        self.__dict__["_sequence_dirty"] = True  # built when next used: one engine for all the add() calls

    def __getattribute__(self, name):
        d = object.__getattribute__(self, "__dict__")
        if d.get("_sequence_dirty") and not name.startswith("__") and name not in _SEQUENTIAL_OWN:
            d["_sequence_dirty"] = False
            try:
                object.__getattribute__(self, "_build")()
            except BaseException:
                d["_sequence_dirty"] = True
                raise
        return object.__getattribute__(self, name)

    def _build(self):
        d = self.__dict__
        inputs, tensor = d["_sequence_io"]
        compiled, optimizer = d.get("_compiled"), d.get("optimizer")
        Model.__init__(self, inputs=inputs, outputs=tensor, name=d["_sequence_name"],
                       trainable=d["_sequence_trainable"])
        self._compiled, self.optimizer = compiled, optimizer

    def pop(self):
        raise ValueError("Sequential.pop is not supported by covidx (layers are called once); build a new Sequential")
