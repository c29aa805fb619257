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
the head's layers, with Keras's automatic names (dense, dense_1, ...).

The head layers themselves, their activations and fold_head live in covidx.head (a leaf); this
module ties them to a backbone: the symbolic input and output, keras.Input, the functional Model
and Sequential. keras.Model(inputs=..., outputs=...) (covidx.Model) builds a functional Model."""
from __future__ import annotations

import weakref

import numpy as np

from . import architecture, formats
from . import model as model_mod
from .head import (Activation, BatchNormalization, Dense, Dropout, Flatten, GlobalAveragePooling2D,  # noqa: F401
                   GlobalMaxPooling2D, KerasTensor, Layer, _GlobalPooling2D, clear_session, fold_head, unique_name)

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
        if self.int8_calibration is not None and synced is not None and synced[0] is not self._base._engine:
            self._drop_int8_calibration()  # its scales were measured on the old backbone
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
        return list(self._base.layers) + list(self._chain)

    @property
    def head_layers(self):
        """The layers after global pooling, which fit() trains."""
        return list(self._head)

    @property
    def backbone(self):
        return self._base

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Keras's load_weights: the backbone's weights (shared with the backbone model) and the
        head's Dense layers, from a file with this model's architecture."""
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
