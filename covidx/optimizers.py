"""Keras's optimizers for training a model's head: SGD (momentum, Nesterov), Adam and RMSprop, with
Keras 3's update formulas, in NumPy.

Weights are updated in place. State (momentums, velocities) is kept per weight name, so an
optimizer keeps its state across fit() calls, as in Keras."""
from __future__ import annotations

import warnings

import numpy as np


def _legacy_learning_rate(cls_name, learning_rate, kwargs):
    """Keras 2's `lr=` alias: accepted with a warning (Keras 3 rejects it)."""
    if "lr" in kwargs:
        lr = kwargs.pop("lr")
        warnings.warn("%s: `lr` is a deprecated alias of `learning_rate`; using learning_rate=%r"
                      % (cls_name, lr), UserWarning, stacklevel=4)
        return lr
    return learning_rate


class Optimizer:
    """The shared parts: learning rate (a number or a function of the step), Keras 2's `decay`,
    gradient clipping, decoupled weight decay and the step counter."""

    name = "optimizer"

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, name=None, decay=0.0, **kwargs):
        kwargs.pop("ema_momentum", None)
        kwargs.pop("ema_overwrite_frequency", None)
        kwargs.pop("loss_scale_factor", None)
        kwargs.pop("gradient_accumulation_steps", None)
        if kwargs:
            raise ValueError("Argument(s) not recognized: %s" % kwargs)
        if use_ema:
            raise ValueError("use_ema=True is not supported by covidx's optimizers")
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
                             "clipnorm=%s, clipvalue=%s, global_clipnorm=%s" % (clipnorm, clipvalue, global_clipnorm))
        if not callable(learning_rate):
            learning_rate = float(learning_rate)
            if not learning_rate >= 0:
                raise ValueError("learning_rate: expected a number >= 0, got %r" % (learning_rate,))
        self._learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.decay = float(decay)
        self.iterations = 0
        self._state = {}
        if name is not None:
            self.name = name

    # --- learning rate ---------------------------------------------------------------------------

    @property
    def learning_rate(self):
        """The current rate: a schedule is evaluated at the current step; Keras 2's decay applied."""
        lr = self._learning_rate(self.iterations) if callable(self._learning_rate) else self._learning_rate
        if self.decay:
            lr = lr / (1.0 + self.decay * self.iterations)
        return float(lr)

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = value if callable(value) else float(value)

    lr = learning_rate  # Keras 2 name, still read by old callbacks

    # --- updates ---------------------------------------------------------------------------------

    def _slot(self, key, slot, like):
        """A zero-initialised state array of the weight `key`."""
        per_weight = self._state.setdefault(key, {})
        if slot not in per_weight:
            per_weight[slot] = np.zeros_like(like)
        return per_weight[slot]

    def _clip(self, grads):
        if self.clipnorm:
            out = []
            for g in grads:
                norm = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
                out.append(g * np.float32(self.clipnorm / max(norm, self.clipnorm)))
            return out
        if self.global_clipnorm:
            norm = float(np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads)))
            scale = self.global_clipnorm * min(1.0 / norm if norm else np.inf, 1.0 / self.global_clipnorm)
            return [g * np.float32(scale) for g in grads]
        if self.clipvalue:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def apply(self, grads_and_weights):
        """grads_and_weights: [(name, gradient, weight array)]. Updates the weights in place, then
        counts one step."""
        if not grads_and_weights:
            return
        names = [n for n, _, _ in grads_and_weights]
        weights = [w for _, _, w in grads_and_weights]
        grads = self._clip([np.asarray(g, dtype=w.dtype) for (_, g, w) in grads_and_weights])
        lr = self.learning_rate
        if self.weight_decay:
            for w in weights:
                w -= w * w.dtype.type(self.weight_decay * lr)
        for name, g, w in zip(names, grads, weights):
            self._update(name, g, w, lr)
        self.iterations += 1

    def _update(self, key, g, w, lr):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "learning_rate": self.learning_rate, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm}

    def __repr__(self):
        return "<covidx.optimizers.%s learning_rate=%g>" % (type(self).__name__, self.learning_rate)


class SGD(Optimizer):
    """Keras's SGD: v = momentum*v - lr*g; w += v, or with Nesterov w += momentum*v - lr*g."""

    name = "SGD"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, use_ema=False, name=None, **kwargs):
        learning_rate = _legacy_learning_rate("SGD", learning_rate, kwargs)
        if not 0 <= momentum <= 1:
            raise ValueError("`momentum` must be a float between [0, 1]. Received: momentum=%s" % (momentum,))
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, name, **kwargs)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _update(self, key, g, w, lr):
        lr = w.dtype.type(lr)
        if not self.momentum:
            w -= lr * g
            return
        m = self._slot(key, "momentum", w)
        momentum = w.dtype.type(self.momentum)
        m *= momentum
        m -= lr * g
        if self.nesterov:
            w += momentum * m - lr * g
        else:
            w += m

    def get_config(self):
        return dict(super().get_config(), momentum=self.momentum, nesterov=self.nesterov)


class Adam(Optimizer):
    """Keras's Adam: bias correction folded into the step size, epsilon outside the square root."""

    name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, name=None, **kwargs):
        learning_rate = _legacy_learning_rate("Adam", learning_rate, kwargs)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = float(beta_1), float(beta_2), float(epsilon), amsgrad

    def _update(self, key, g, w, lr):
        t = self.iterations + 1
        alpha = w.dtype.type(lr * np.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t))
        m, v = self._slot(key, "m", w), self._slot(key, "v", w)
        m += (g - m) * w.dtype.type(1 - self.beta_1)
        v += (np.square(g) - v) * w.dtype.type(1 - self.beta_2)
        if self.amsgrad:
            v_hat = self._slot(key, "v_hat", w)
            np.maximum(v_hat, v, out=v_hat)
            v = v_hat
        w -= m * alpha / (np.sqrt(v) + w.dtype.type(self.epsilon))

    def get_config(self):
        return dict(super().get_config(), beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                    amsgrad=self.amsgrad)


class RMSprop(Optimizer):
    """Keras's RMSprop: velocity = rho*velocity + (1-rho)*g^2; step lr*g/sqrt(velocity + epsilon)
    (epsilon inside the square root, unlike PyTorch); optional momentum and centering."""

    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False, name=None, **kwargs):
        learning_rate = _legacy_learning_rate("RMSprop", learning_rate, kwargs)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, name, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = float(rho), float(momentum), float(epsilon), centered

    def _update(self, key, g, w, lr):
        f = w.dtype.type
        velocity = self._slot(key, "velocity", w)
        velocity *= f(self.rho)
        velocity += f(1 - self.rho) * np.square(g)
        if self.centered:
            average = self._slot(key, "average_gradient", w)
            average *= f(self.rho)
            average += f(1 - self.rho) * g
            denominator = velocity - np.square(average) + f(self.epsilon)
        else:
            denominator = velocity + f(self.epsilon)
        increment = f(lr) * g / np.sqrt(denominator)
        if self.momentum > 0:
            m = self._slot(key, "momentum", w)
            m *= f(self.momentum)
            m += increment
            w -= m
        else:
            w -= increment

    def get_config(self):
        return dict(super().get_config(), rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
                    centered=self.centered)


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier):
    """An optimizer from a name ('sgd', 'SGD', 'adam', 'rmsprop', with default settings), a
    {'class_name', 'config'} dict, or an optimizer object (returned as is)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(str(identifier.get("class_name", "")).lower())
        if cls is None:
            raise ValueError("Could not interpret optimizer identifier: %r" % (identifier,))
        return cls(**identifier.get("config", {}))
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError("optimizer: unknown optimizer %r (covidx trains with: SGD, Adam, RMSprop)" % identifier)
        return cls()
    raise ValueError("Could not interpret optimizer identifier: %r (expected 'sgd', 'adam', 'rmsprop' or an "
                     "optimizer from covidx.keras.optimizers)" % (identifier,))
