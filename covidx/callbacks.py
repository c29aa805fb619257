"""Keras's training callbacks: History, EarlyStopping, ModelCheckpoint (Keras or covidx model
files), ReduceLROnPlateau, LearningRateScheduler, CSVLogger, LambdaCallback, TerminateOnNaN, the
base class for custom ones, and TensorBoard (which does nothing here: there is no TensorFlow).

They follow Keras 3's rules (monitor direction, min_delta, patience, cooldown, file name
placeholders such as 'model-{epoch:02d}-{val_loss:.2f}.safetensors')."""
from __future__ import annotations

import collections
import collections.abc
import csv
import math
import os
import warnings

import numpy as np

from .progbar import Progbar


class Callback:
    """Base class: override the on_* methods you need. self.model and self.params are set by fit."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)  # Keras 2's name, still honoured

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass


class History(Callback):
    """Records each epoch's logs: history.history['loss'], ['val_acc'], ...; fit returns it."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self


_HIGHER_IS_BETTER = ("acc", "accuracy", "auc", "precision", "recall")


class MonitorCallback(Callback):
    """A callback that watches one logged value (monitor) for improvements."""

    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            warnings.warn("%s mode '%s' is unknown, fallback to auto mode." % (type(self).__name__, mode),
                          stacklevel=3)
            mode = "auto"
        self.monitor, self.mode, self.best = monitor, mode, baseline
        self.min_delta = abs(min_delta)
        self._sign = None  # +1: higher is better, -1: lower is better

    def _direction(self):
        if self.mode != "auto":
            return 1 if self.mode == "max" else -1
        name = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
        if name == "loss" or name.endswith("loss") or name.endswith("crossentropy"):
            return -1
        lowered = name.lower()
        if lowered in _HIGHER_IS_BETTER or lowered.endswith("accuracy") or lowered.startswith("auc"):
            return 1
        raise ValueError("%s callback received monitor=%s, but covidx cannot tell whether that value should be "
                         "maximized or minimized. Pass `mode='max'` in order to monitor based on the highest "
                         "value, or `mode='min'` in order to use the lowest value." % (type(self).__name__,
                                                                                      self.monitor))

    def _is_improvement(self, value, reference):
        if self._sign is None:
            self._sign = self._direction()
        if reference is None:
            return True
        if self._sign > 0:
            return value - self.min_delta > reference
        return value + self.min_delta < reference


class EarlyStopping(MonitorCallback):
    """Stops training when `monitor` has not improved for `patience` epochs; optionally restores
    the weights of the best epoch at the end."""

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta=min_delta)
        self.patience, self.verbose, self.baseline = patience, verbose, baseline
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, start_from_epoch
        self.wait, self.stopped_epoch, self.best_weights, self.best_epoch = 0, 0, None, 0

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best, self.best_weights, self.best_epoch = 0, 0, None, None, 0

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(self, logs, "Early stopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print("Epoch %d: early stopping" % (self.stopped_epoch + 1))
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print("Restoring model weights from the end of the best epoch: %d." % (self.best_epoch + 1))
            self.model.set_weights(self.best_weights)


class ReduceLROnPlateau(MonitorCallback):
    """Multiplies the optimizer's learning rate by `factor` when `monitor` has not improved for
    `patience` epochs (then waits `cooldown` epochs); never below min_lr."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, **kwargs):
        if "epsilon" in kwargs:  # Keras 2 name of min_delta
            min_delta = kwargs.pop("epsilon")
        if kwargs:
            raise ValueError("ReduceLROnPlateau: unexpected argument(s) %s" % sorted(kwargs))
        super().__init__(monitor, mode, min_delta=min_delta)
        if factor >= 1.0:
            raise ValueError("ReduceLROnPlateau does not support a factor >= 1.0. Received factor=%s" % (factor,))
        self.factor, self.min_lr, self.patience, self.verbose = factor, min_lr, patience, verbose
        self.cooldown, self.cooldown_counter, self.wait = cooldown, 0, 0

    def on_train_begin(self, logs=None):
        self.best, self.cooldown_counter, self.wait = None, 0, 0

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if logs is not None:
            logs["learning_rate"] = float(optimizer.learning_rate)
        current = _monitored(self, logs, "Learning rate reduction")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(optimizer.learning_rate)
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        print("\nEpoch %d: ReduceLROnPlateau reducing learning rate to %s." % (epoch + 1, new_lr))
                    self.cooldown_counter, self.wait = self.cooldown, 0


MODEL_EXTENSIONS = (".keras", ".h5", ".hdf5", ".safetensors", ".covidx")


class ModelCheckpoint(MonitorCallback):
    """Saves the model after each epoch, or only when `monitor` improves (save_best_only), in
    the format its extension names, as model.save does: '.keras' or '.h5' Keras files (which
    Keras 3 and covidx load), '.safetensors' or '.covidx' covidx's own; with save_weights_only,
    a '.weights.h5' Keras weights file. filepath may hold placeholders: '{epoch:02d}' and any
    logged value, e.g. '{val_acc:.3f}'."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None, **kwargs):
        kwargs.pop("options", None)
        kwargs.pop("period", None)
        if kwargs:
            raise ValueError("ModelCheckpoint: unexpected argument(s) %s" % sorted(kwargs))
        super().__init__(monitor, mode, initial_value_threshold)
        if save_freq != "epoch":
            raise ValueError("ModelCheckpoint: only save_freq='epoch' is supported, got %r" % (save_freq,))
        self.filepath = os.fspath(filepath)
        self.verbose, self.save_best_only, self.save_weights_only = verbose, save_best_only, save_weights_only
        if save_weights_only and not self.filepath.endswith(".weights.h5"):
            raise ValueError("When using `save_weights_only=True` in `ModelCheckpoint`, the filepath provided must "
                             "end in `.weights.h5` (Keras weights format). Received: filepath=%s" % self.filepath)
        if not save_weights_only and not self.filepath.lower().endswith(MODEL_EXTENSIONS):
            raise ValueError("The filepath provided must end in `.keras` or `.h5` (Keras model files), or "
                             "`.safetensors` / `.covidx` (covidx's). Received: filepath=%s" % self.filepath)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as e:
            raise KeyError('Failed to format this callback filepath: "%s". Reason: %s' % (self.filepath, e)) from None
        if not self._should_save(epoch, logs, path):
            return
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if os.path.isdir(path):
            raise IOError("Please specify a non-directory filepath for ModelCheckpoint. Filepath used is an "
                          "existing directory: %s" % path)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose > 0:
            print("\nEpoch %d: finished saving model to %s" % (epoch + 1, path))

    def _should_save(self, epoch, logs, path):
        if not self.save_best_only:
            if self.verbose > 0:
                print("\nEpoch %d: saving model to %s" % (epoch + 1, path))
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn("Can save best model only with %s available." % self.monitor, stacklevel=3)
            return True
        best = "None" if self.best is None else "%.5f" % self.best
        if self._is_improvement(current, self.best):
            if self.verbose > 0:
                print("\nEpoch %d: %s improved from %s to %.5f, saving model to %s"
                      % (epoch + 1, self.monitor, best, current, path))
            self.best = current
            return True
        if self.verbose > 0:
            print("\nEpoch %d: %s did not improve from %s" % (epoch + 1, self.monitor, best))
        return False


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at the start of each epoch to schedule(epoch, lr) (or
    schedule(epoch), the old form), and logs it as 'learning_rate'."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if not hasattr(optimizer, "learning_rate"):
            raise ValueError('Optimizer must have a "learning_rate" attribute.')
        try:
            learning_rate = self.schedule(epoch, float(optimizer.learning_rate))
        except TypeError:  # schedule(epoch), as in Keras 1
            learning_rate = self.schedule(epoch)
        if not isinstance(learning_rate, (float, np.float32, np.float64)):
            raise ValueError("The output of the `schedule` function should be a float. Got: %s" % (learning_rate,))
        optimizer.learning_rate = learning_rate
        if self.verbose > 0:
            print("\nEpoch %d: LearningRateScheduler setting learning rate to %s." % (epoch + 1, learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class CSVLogger(Callback):
    """Writes each epoch's logs as a row of a CSV file: 'epoch', then the logged values sorted by
    name (val_ columns announced from the first epoch), as Keras's CSVLogger writes them.
    append=True continues an existing file (without a second header)."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.sep, self.filename, self.append = separator, os.fspath(filename), append
        self.writer = self.keys = self.csv_file = None
        self.append_header = True

    def on_train_begin(self, logs=None):
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename) as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            mode = "w"
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = open(self.filename, mode, newline="")
        self.writer = self.keys = None

    @staticmethod
    def _value(v):
        if isinstance(v, str):
            return v
        if isinstance(v, collections.abc.Iterable) and not (isinstance(v, np.ndarray) and v.ndim == 0):
            return '"[%s]"' % ", ".join(map(str, v))
        return v

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs.keys())
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys.extend(["val_%s" % k for k in self.keys])
        if not self.writer:
            class Dialect(csv.excel):
                delimiter = self.sep

            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys, dialect=Dialect)
            if self.append_header:
                self.writer.writeheader()
        row = collections.OrderedDict({"epoch": epoch})
        row.update((k, self._value(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None


class TensorBoard(Callback):
    """Keras's TensorBoard writes TensorFlow event files; covidx has no TensorFlow, so this callback
    records nothing (it warns once when created, so a notebook that passes it still runs). Use
    CSVLogger('log.csv') for the training logs, or History (what fit() returns)."""

    def __init__(self, log_dir="logs", **kwargs):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        warnings.warn("covidx: TensorBoard writes TensorFlow event files, and there is no TensorFlow here: this "
                      "callback records nothing. Use covidx.keras.callbacks.CSVLogger('log.csv') for the logs "
                      "(or the History that fit() returns).", UserWarning, stacklevel=2)


class LambdaCallback(Callback):
    """A callback from functions: on_epoch_end=lambda epoch, logs: ..., etc."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, **kwargs):
        super().__init__()
        hooks = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end, on_train_begin=on_train_begin,
                     on_train_end=on_train_end, on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end)
        hooks["on_train_batch_begin"] = hooks["on_train_batch_begin"] or kwargs.pop("on_batch_begin", None)
        hooks["on_train_batch_end"] = hooks["on_train_batch_end"] or kwargs.pop("on_batch_end", None)
        if kwargs:
            raise ValueError("LambdaCallback: unexpected argument(s) %s" % sorted(kwargs))
        for hook, fn in hooks.items():
            if fn is not None:
                setattr(self, hook, fn)


class TerminateOnNaN(Callback):
    """Stops training as soon as a batch's loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print("Batch %d: Invalid loss, terminating training" % batch)
            self.model.stop_training = True


class ProgbarLogger(Callback):
    """Keras's progress output of fit: 'Epoch 1/3', then a bar per epoch with the running loss and
    metrics, completed at the end of the epoch with the validation values."""

    def __init__(self, verbose=1):
        super().__init__()
        self.verbose = verbose
        self.bar = None
        self.order = []  # keys in display order, as first seen
        self.seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        epochs = self.params.get("epochs", 1)
        if self.verbose and epochs > 1:
            print("Epoch %d/%d" % (epoch + 1, epochs))
        self.bar = Progbar(self.params.get("steps"), verbose=self.verbose)
        self.seen = 0

    def _values(self, logs, sort=False):
        keys = sorted(logs) if sort else list(logs)
        for key in keys:
            if key not in self.order:
                self.order.append(key)
        return [(k, logs[k]) for k in self.order if k in logs]

    def on_train_batch_end(self, batch, logs=None):
        self.seen = batch + 1
        if self.bar is not None:
            # Keras 3 shows each batch's logs sorted by name; tf.keras in compile order
            self.bar.update(self.seen, self._values(logs or {}, sort=self.bar.style == "keras3"), finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is None:
            return
        logs = logs or {}
        # the validation values come after the training ones, then anything callbacks added
        self._values({k: v for k, v in logs.items() if k.startswith("val_")}, sort=self.bar.style == "keras3")
        if self.bar.target is None:
            self.bar.target = self.seen
        self.bar.update(self.bar.target, self._values(logs), finalize=True)


class CallbackList:
    """Calls each callback in order: the user's, then History, then the progress bar (as Keras)."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                method = getattr(cb, hook, None)
                if method is not None:
                    method(*args, **kwargs)

        return call


def _monitored(callback, logs, what):
    value = (logs or {}).get(callback.monitor)
    if value is None:
        warnings.warn("%s conditioned on metric `%s` which is not available. Available metrics are: %s"
                      % (what, callback.monitor, ",".join(logs or {})), stacklevel=3)
    return value
