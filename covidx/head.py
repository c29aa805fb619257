"""The head layers of covidx models, in NumPy: Keras's Dense, Dropout, BatchNormalization,
Activation, Flatten and global pooling, their activations and initialisers, the symbolic tensors
they are called on, and fold_head, which turns a chain of them into the Dense-only head the C
engine runs (Dropout dropped, each BatchNormalization folded into a neighbouring Dense layer).

A leaf: it imports nothing of covidx's models, so the functional model (functional.py), training
(training.py), the Keras file readers (formats/keras_graph.py) and Grad-CAM all build on it."""
from __future__ import annotations

import collections

import numpy as np

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
