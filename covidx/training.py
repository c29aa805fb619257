"""Model.fit for covidx models: trains the head (the layers after global pooling) on a frozen
ResNet50 backbone, in NumPy, with Keras's losses, optimizers, metrics, callbacks and progress bar.

The C engine computes the backbone's pooled features; only the head needs gradients, so an epoch
over cached features takes seconds on a CPU. Features are computed once per image and cached
when the images are the same every epoch (arrays, or an image iterator without augmentation);
with augmentation they are recomputed for every batch. The batches come from the one batch
pipeline (covidx.batches), which then loads only the images whose features are not yet kept.

The loss is Keras 3's probability-space cross-entropy (outputs clipped to [1e-7, 1 - 1e-7]); its
gradient is the exact derivative of that formula, through the softmax or sigmoid."""
from __future__ import annotations

import warnings

import numpy as np

from . import architecture, batches, checks, scaling
from . import callbacks as callbacks_mod
from . import evaluation
from . import head as head_mod
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod

# --- losses and their gradients ------------------------------------------------------------------

_LOSS_KINDS = {losses_mod.categorical_crossentropy: "categorical",
               losses_mod.sparse_categorical_crossentropy: "sparse",
               losses_mod.binary_crossentropy: "binary"}
_LOSS_VALUES = {"categorical": losses_mod.categorical_crossentropy,
                "sparse": losses_mod.sparse_categorical_crossentropy,
                "binary": losses_mod.binary_crossentropy}


def loss_kind(loss, y, y_pred):
    """'categorical', 'sparse' or 'binary'. Integer labels (class_mode 'binary'/'sparse') against a
    multi-column softmax under categorical cross-entropy are taken as sparse labels, as evaluate does."""
    kind = _LOSS_KINDS.get(getattr(loss, "fn", None))
    if kind is None:
        raise ValueError("fit: covidx trains with 'categorical_crossentropy', 'sparse_categorical_crossentropy' or "
                         "'binary_crossentropy'; the model was compiled with loss %r" % getattr(loss, "name", loss))
    y = np.asarray(y)
    if kind == "categorical" and y_pred.shape[-1] > 1 and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        return "sparse"
    return kind


def loss_values(kind, y, y_pred):
    """Per-sample losses (Keras 3's formulas, float32)."""
    return _LOSS_VALUES[kind](y, y_pred)


def loss_gradient(kind, y, y_pred):
    """d(per-sample loss)/d(y_pred), the derivative of Keras 3's clipped formulas (zero where the
    clip is active, as autodiff gives)."""
    p = np.asarray(y_pred, np.float32)
    eps = np.float32(losses_mod.EPSILON)
    if kind == "binary":
        y = np.asarray(y, np.float32)
        y = y[..., None] if y.ndim == p.ndim - 1 else y  # labels (b,) for outputs (b, 1)
        inside = (p >= eps) & (p <= 1 - eps)
        c = np.clip(p, eps, 1 - eps)
        return np.where(inside, (c - y) / (c * (1 - c)), 0).astype(np.float32) / np.float32(p.shape[-1])
    if kind == "sparse":
        onehot = np.zeros(p.shape, np.float32)
        onehot[np.arange(len(p)), np.asarray(y).reshape(len(p)).astype(np.int64)] = 1
        y = onehot
    y = np.asarray(y, np.float32)
    total = np.sum(p, axis=-1, keepdims=True)
    q = p / total
    inside = (q >= eps) & (q <= 1 - eps)
    grad_q = np.where(inside, -y / np.where(inside, q, 1), 0).astype(np.float32)
    return (grad_q - np.sum(grad_q * q, axis=-1, keepdims=True)) / total


def class_weights_of(y, class_weight):
    """Keras's class_weight -> per-sample weights: one-hot labels by argmax, others rounded."""
    y = np.asarray(y)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[..., 0]
    labels = np.round(y).astype(np.int64)
    return np.array([class_weight.get(int(c), 1.0) for c in labels], np.float32)


# --- the head being trained ----------------------------------------------------------------------

_FREEZE_HINT = ("covidx trains only the head (the layers after global pooling); the ResNet50 backbone must be "
                "frozen, but {count} of its layers with weights are trainable (first: {first!r}). Freeze it before "
                "fit(), as the articles do:\n\n"
                "    for layer in model.layers[:175]:\n"
                "        layer.trainable = False\n\n"
                "(or set base_model.trainable = False before building the model).{finetune}")
_FINETUNE_NOTE = ("\n\nFine-tuning backbone layers (such as unfreezing the last block, conv5_*) is out of covidx's "
                  "scope: its C engine computes the backbone forward only, without gradients. To fine-tune, train "
                  "in Keras or PyTorch and load the result here (model.save('m.keras') writes a file Keras 3 "
                  "loads; covidx.load_model reads the .keras/.h5 or torchvision file back); or train a bigger head "
                  "on the frozen features.")


class Head:
    """The head of a model as a chain of layers computing on pooled features: the functional
    model's own layers, or Dense copies of a plain covidx model's head (written back after
    training)."""

    def __init__(self, model):
        self.model = model
        if model.head_layers is not None:  # a functional model: its own layers
            self.layers = model.head_layers
            backbone = model.layers[:len(model.backbone.layers)]  # applies base_model.trainable = False
            self._copies = False
        else:
            self.layers = self._dense_copies(model)
            names = {layer.name for layer in self.layers}
            backbone = [layer for layer in model.layers if layer.name not in names]
            self._copies = True
        self._check_frozen(backbone)
        self.engine = model._engine  # its backbone computes the features; the head is ours

    @staticmethod
    def _dense_copies(model):
        arch = model.architecture
        if arch["pooling"] is None or not arch.get("head"):
            raise ValueError("fit: %r has no head to train. Add one the Keras way: x = GlobalAveragePooling2D()("
                             "base_model.output); preds = Dense(2, activation='softmax')(x); model = Model("
                             "inputs=base_model.input, outputs=preds)" % model.name)
        entries = {layer.name: layer for layer in model.layers}
        weights = model.named_weights
        copies, units_in = [], 2048
        for spec in arch["head"]:
            dense = head_mod.Dense(spec["units"], activation=spec["activation"], name=spec["name"],
                                     kernel_initializer="zeros")
            dense.build((None, units_in))
            dense.set_weights([weights[spec["name"] + "/kernel"], weights[spec["name"] + "/bias"]])
            dense.trainable = entries[spec["name"]].trainable
            copies.append(dense)
            units_in = spec["units"]
        return copies

    @staticmethod
    def _check_frozen(backbone):
        trainable = [layer.name for layer in backbone if layer.trainable and layer.count_params() > 0]
        if trainable:
            raise ValueError(_FREEZE_HINT.format(count=len(trainable), first=trainable[0], finetune=_FINETUNE_NOTE))

    @property
    def input_units(self):
        return 2048

    def has_trainable_weights(self):
        return any(layer.trainable_variables() for layer in self.layers)

    def forward(self, features, training):
        caches, x = [], features
        for layer in self.layers:
            x, cache = layer.forward(x, training)
            caches.append(cache)
        return x, caches

    def backward(self, grad, caches):
        """[(weight key, gradient, weight array)] for the trainable weights; the gradient stops at
        the first layer that has any."""
        with_weights = [i for i, layer in enumerate(self.layers) if layer.trainable_variables()]
        if not with_weights:
            return []
        first, out = with_weights[0], []
        for i in range(len(self.layers) - 1, first - 1, -1):
            layer = self.layers[i]
            grad, grads = layer.backward(grad, caches[i], need_input_grad=i > first)
            for name, g in grads.items():
                out.append(("%s/%s" % (layer.name, name), g, layer._weights[name]))
        return out

    def updated(self):
        """Marks the head's weights as changed (the model refolds its engine when next used)."""
        for layer in self.layers:
            if layer.trainable_variables():
                layer._version += 1

    def write_back(self):
        """Puts a plain model's trained head into the model (rebuilds its engine)."""
        if not self._copies:
            return
        weights = self.model.get_weights()
        head = [w for layer in self.layers for w in layer.get_weights()]
        self.model.set_weights(weights[:len(weights) - len(head)] + head)


# --- data: batches of pooled features ------------------------------------------------------------

def augments(image_data_generator):
    """Whether an ImageDataGenerator draws random transforms (then features change every epoch)."""
    g = image_data_generator
    if g is None:
        return False
    zoom = list(getattr(g, "zoom_range", [1, 1]))
    return bool(getattr(g, "rotation_range", 0) or getattr(g, "width_shift_range", 0)
                or getattr(g, "height_shift_range", 0) or getattr(g, "shear_range", 0) or zoom != [1, 1]
                or getattr(g, "channel_shift_range", 0) or getattr(g, "horizontal_flip", False)
                or getattr(g, "vertical_flip", False) or getattr(g, "brightness_range", None) is not None)


class Labels:
    """Turns a batch's raw labels into training targets: class weights (in the data's own class
    indices), then the alignment of folder classes to the model's classes."""

    def __init__(self, model, iterator=None, class_weight=None):
        self.class_weight = class_weight
        self.mapping = evaluation.say_alignment(model, iterator)
        self.mode = getattr(iterator, "class_mode", None)
        self.n_model = evaluation.model_class_count(model)

    def __call__(self, y, w):
        if y is None:
            raise ValueError("fit: the data has no labels (an image iterator needs class_mode 'categorical', "
                             "'binary' or 'sparse')")
        if self.mode == "input":
            raise ValueError("fit: class_mode='input' labels are images; covidx models output classes")
        y = np.asarray(y)
        if self.class_weight is not None:
            if w is not None:
                raise ValueError("You cannot specify `class_weight` and `sample_weight` at the same time.")
            w = class_weights_of(y, self.class_weight)
        y = evaluation.apply_alignment(y, self.mapping, self.mode, self.n_model)
        return y, (None if w is None else np.asarray(w, np.float32))


FIT_RAN_OUT = "Your input ran out of data: steps=%(steps)d but the data has %(batches)d batches; using %(batches)d."


class FeatureData:
    """fit's batches of (pooled features, targets, sample weights) from the batch pipeline's
    batches of a source (covidx.batches). With `cache` (an indexed source: arrays or a covidx
    image iterator), each sample's features, label and weight are kept after their first use, so
    later epochs read no image and run no backbone: the pipeline loads only the samples not yet
    seen (nor found unreadable). Other sources have their features computed for every batch."""

    def __init__(self, source, features_of, labels, cache):
        self.source, self.features_of, self.labels = source, features_of, labels
        self.cache = bool(cache) and source.indexed
        self.n_batches = source.num_batches
        if self.cache:
            self._feats = self._y = self._w = None
            self._have = np.zeros(source.samples, bool)
            self._bad = np.zeros(source.samples, bool)

    def _missing(self, idx):
        """Which of the samples idx are neither cached nor known to be unreadable."""
        return ~self._have[idx] & ~self._bad[idx]

    def _store(self, idx, feats, y, w):
        if self._feats is None:
            n = self.source.samples
            self._feats = np.zeros((n,) + feats.shape[1:], np.float32)
            self._y = np.zeros((n,) + y.shape[1:], y.dtype)
            self._w = None if w is None else np.ones(n, np.float32)
        self._feats[idx], self._y[idx] = feats, y
        if w is not None and self._w is not None:
            self._w[idx] = w
        self._have[idx] = True

    def _finish(self, batch):
        """(features, y, w) of the batch, or None when none of its images could be read."""
        x, y, w, ok = batch.x, batch.y, batch.w, batch.ok
        if self.cache:  # the samples whose rows x holds
            rows = batch.indices if batch.loaded is None else batch.indices[batch.loaded]
        if x is not None and ok is not None and not ok.all():  # unreadable files (on_error='skip') leave it
            if self.cache:
                self._bad[rows[~ok]] = True
                rows = rows[ok]
            x, y, w = x[ok], (None if y is None else np.asarray(y)[ok]), (None if w is None else np.asarray(w)[ok])
            if not len(x) and not self.cache:
                return None
        if not self.cache:
            y, w = self.labels(y, w)
            return self.features_of(x), y, w
        if x is not None and len(x):
            y, w = self.labels(y, w)
            self._store(rows, self.features_of(x), y, w)
        keep = batch.indices[self._have[batch.indices]]
        if not len(keep):
            return None
        return self._feats[keep], self._y[keep], (None if self._w is None else self._w[keep])

    def batches(self, steps=None, shuffle=False):
        ran_out = FIT_RAN_OUT if self.source.indexed else None
        for batch in self.source.epoch(steps, shuffle, need=self._missing if self.cache else None,
                                       ran_out=ran_out):
            out = self._finish(batch)
            if out is not None:
                yield out

    def end_epoch(self):
        self.source.on_epoch_end()


def make_data(model, x, y, sample_weight, batch_size, class_weight, features_of, cache):
    """fit's batches of x: arrays, a covidx image iterator, a Sequence or a generator, through the
    batch pipeline. Features are cached for arrays (unless cache is False) and for an iterator
    that does not augment (cache None) or when cache is True."""
    source = batches.adapter(x, y, sample_weight, batch_size)
    labels = Labels(model, source.iterator, class_weight)
    if source.kind == "iterator" and cache is None:
        cache = not augments(getattr(x, "image_data_generator", None))
    elif source.kind == "array":
        cache = cache is not False
    return FeatureData(source, features_of, labels, cache)


# --- the training loop ---------------------------------------------------------------------------

class Trainer:
    """One fit() call: the head, optimizer, loss and metrics of a compiled model."""

    def __init__(self, model):
        if model._compiled is None:
            raise ValueError("You must call `compile()` before using the model (e.g. model.compile(optimizer='sgd', "
                             "loss='categorical_crossentropy', metrics=['accuracy'])).")
        self.model = model
        self.head = Head(model)
        self.loss = model._compiled["loss"]
        loss_kind(self.loss, np.zeros((1, 2)), np.zeros((1, 2)))  # a clear error now for unsupported losses
        self.metrics = model._compiled["metrics"]
        self.optimizer = optimizers_mod.get(model.optimizer if model.optimizer is not None
                                            else model._compiled["optimizer"])
        model.optimizer = self.optimizer  # Keras's model.optimizer is the object; it keeps its state
        if not self.head.has_trainable_weights():
            warnings.warn("The model does not have any trainable weights.", stacklevel=3)

    def image_features(self, x):
        scaling.warn_if_unscaled(self.model, x)
        return self.head.engine.forward(checks.images(x), output=architecture.OUTPUTS["features"])

    def given_features(self, x):
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.head.input_units:
            raise ValueError("features: expected an array (batch, %d) of pooled backbone features, got shape %s"
                             % (self.head.input_units, x.shape))
        return x

    def train_step(self, feats, y, w):
        out, caches = self.head.forward(feats, training=True)
        kind = loss_kind(self.loss, y, out)
        per_sample = loss_values(kind, y, out)
        n = np.float32(len(out))
        weights = np.ones(len(out), np.float32) if w is None else w
        batch_loss = np.float32(np.sum(per_sample * weights, dtype=np.float32) / n)
        grad = loss_gradient(kind, y, out) * (weights / n)[:, None]
        self.optimizer.apply(self.head.backward(grad.astype(np.float32), caches))
        self.head.updated()
        return out, batch_loss

    def evaluate(self, data, steps):
        """Keras's validation: the loss (batch means weighted by batch size) and metrics."""
        tracker = metrics_mod.Mean(name="loss")
        for m in self.metrics:
            m.reset_state()
        for feats, y, w in data.batches(steps, shuffle=False):
            out, _ = self.head.forward(feats, training=False)
            per_sample = loss_values(loss_kind(self.loss, y, out), y, out)
            if w is not None:
                per_sample = per_sample * w
            tracker.update_state(np.mean(per_sample, dtype=np.float32), sample_weight=len(out))
            for m in self.metrics:
                m.update_state(y, out)
        data.end_epoch()
        return self.logs(tracker)

    def logs(self, tracker):
        logs = {"loss": float(tracker.result())}
        for m in self.metrics:
            logs[m.name] = float(m.result())
        return logs

    def run(self, train, val, epochs, verbose, callbacks, shuffle, initial_epoch, steps_per_epoch, validation_steps,
            validation_freq):
        model = self.model
        verbose = 1 if verbose == "auto" else int(verbose)
        steps = steps_per_epoch if steps_per_epoch is not None else train.n_batches  # None: unknown
        if steps_per_epoch is not None and train.n_batches is not None:
            steps = min(steps_per_epoch, train.n_batches)
        history = callbacks_mod.History()
        user = list(callbacks or [])
        extra = [history] + ([callbacks_mod.ProgbarLogger(verbose)] if verbose else [])
        params = {"verbose": verbose, "epochs": epochs, "steps": steps}
        cbs = callbacks_mod.CallbackList(user + extra, model, params)
        model.stop_training = False
        cbs.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            logs = self._train_epoch(train, cbs, steps_per_epoch, shuffle)
            if logs is None:
                warnings.warn("Your input ran out of data; interrupting training. Make sure that your dataset or "
                              "generator can generate at least `steps_per_epoch * epochs` batches.", stacklevel=3)
                break
            if val is not None and _validation_due(epoch, validation_freq):
                logs.update({"val_" + k: v for k, v in self.evaluate(val, validation_steps).items()})
            if user:
                self.head.write_back()  # callbacks may save or read the model
            cbs.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        self.head.write_back()
        cbs.on_train_end(logs or {})
        return history

    def _train_epoch(self, train, cbs, steps, shuffle):
        tracker = metrics_mod.Mean(name="loss")
        for m in self.metrics:
            m.reset_state()
        step = -1
        for step, (feats, y, w) in enumerate(train.batches(steps, shuffle)):
            cbs.on_train_batch_begin(step)
            out, batch_loss = self.train_step(feats, y, w)
            tracker.update_state(batch_loss, sample_weight=len(out))
            for m in self.metrics:
                m.update_state(y, out)
            cbs.on_train_batch_end(step, self.logs(tracker))
            if self.model.stop_training:
                break
        train.end_epoch()
        return None if step < 0 else self.logs(tracker)


def _validation_due(epoch, freq):
    if isinstance(freq, int):
        return (epoch + 1) % freq == 0
    return (epoch + 1) in freq


def _split_validation(x, y, sample_weight, validation_split):
    """Keras's validation_split: the last fraction of the arrays (before any shuffling)."""
    if not isinstance(x, np.ndarray):
        raise ValueError("`validation_split` is only supported for arrays, not for a generator or an image iterator; "
                         "give validation_data instead")
    if not 0 < validation_split < 1:
        raise ValueError("validation_split: expected a number between 0 and 1, got %r" % (validation_split,))
    at = int(np.floor(len(x) * (1.0 - validation_split)))
    if at == 0 or at == len(x):
        raise ValueError("validation_split=%s leaves no training or no validation samples (%d samples)"
                         % (validation_split, len(x)))
    y = None if y is None else np.asarray(y)
    w = None if sample_weight is None else np.asarray(sample_weight)
    part = lambda a, s: None if a is None else a[s]  # noqa: E731
    train = (x[:at], part(y, slice(None, at)), part(w, slice(None, at)))
    val = (x[at:], part(y, slice(at, None)), part(w, slice(at, None)))
    return train, val


def _validation_source(model, validation_data, batch_size, features_of, cache):
    if validation_data is None:
        return None
    if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3) and not batches.is_sequence(
            validation_data):
        vx, vy = validation_data[0], validation_data[1]
        vw = validation_data[2] if len(validation_data) == 3 else None
        return make_data(model, vx, vy, vw, batch_size, None, features_of, cache)
    return make_data(model, validation_data, None, None, batch_size, None, features_of, cache)


def _adopt_class_names(model, data):
    """A model without class names takes those of the folders it is trained on (saved with it)."""
    indices = getattr(data, "class_indices", None)
    if model.class_names is None and indices and len(indices) == model.output_shape[-1]:
        model.class_names = sorted(indices, key=indices.get)


_LEGACY_KWARGS = {"max_queue_size", "workers", "use_multiprocessing"}


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
        validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
        steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1, **kwargs):
    """Keras's Model.fit for the head of a covidx model on a frozen backbone. x: images (batch,
    height, width, 3) with labels y, an image iterator (flow_from_directory), a Keras Sequence or a
    generator. Returns a History. covidx's extra keyword: cache_features=None (cache unless the
    iterator augments), True or False. A model without class names takes those of the image
    folders it is trained on."""
    return _fit(model, "images", x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                shuffle, class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps,
                validation_batch_size, validation_freq, kwargs)


def fit_features(model, features, y, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
                 validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
                 steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1):
    """fit() on pooled backbone features (batch, 2048), e.g. from model.features(images): the same
    training, without running the backbone. validation_data holds features too."""
    return _fit(model, "features", features, y, batch_size, epochs, verbose, callbacks, validation_split,
                validation_data, shuffle, class_weight, sample_weight, initial_epoch, steps_per_epoch,
                validation_steps, validation_batch_size, validation_freq, {})


def _fit(model, given, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
         class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps, validation_batch_size,
         validation_freq, kwargs):
    cache = kwargs.pop("cache_features", None)
    unknown = set(kwargs) - _LEGACY_KWARGS
    if unknown:
        raise TypeError("fit() got unexpected keyword argument(s): %s" % ", ".join(sorted(unknown)))
    if x is None:
        raise ValueError("fit: no training data given (x)")
    trainer = Trainer(model)
    features_of = trainer.image_features if given == "images" else trainer.given_features
    if validation_split and validation_data is None:
        (x, y, sample_weight), validation_data = _split_validation(x, y, sample_weight, validation_split)
    train = make_data(model, x, y, sample_weight, batch_size, class_weight, features_of,
                      cache if given == "images" else False)
    _adopt_class_names(model, x)
    val = _validation_source(model, validation_data, validation_batch_size or batch_size, features_of,
                             cache if given == "images" else False)
    return trainer.run(train, val, epochs, verbose, callbacks, shuffle, initial_epoch, steps_per_epoch,
                       validation_steps, validation_freq)


def train_on_batch(model, x, y, sample_weight, class_weight, return_dict):
    """Keras's Model.train_on_batch: one optimizer step on one batch of images. The loss and
    metrics are those of this batch's forward pass (before the step), as Keras reports them."""
    trainer = Trainer(model)
    if y is None:
        raise ValueError("train_on_batch: labels y are needed")
    y, w = Labels(model, None, class_weight)(y, sample_weight)
    feats = trainer.image_features(x)
    if len(y) != len(feats):
        raise ValueError("train_on_batch: %d images but %d labels" % (len(feats), len(y)))
    for m in trainer.metrics:
        m.reset_state()
    out, loss = trainer.train_step(feats, y, w)
    for m in trainer.metrics:
        m.update_state(y, out)
    trainer.head.write_back()
    logs = {"loss": float(loss)}
    logs.update((m.name, float(m.result())) for m in trainer.metrics)
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values
