"""covidx.Model: a ResNet50 + Dense head held by the C engine, with Keras's names and methods.

The one place the engine is built (_engine_for: weights, precision, out-of-distribution
statistics, input rescaling). Files go through covidx.formats (their readers return data;
formats.write picks the writer), fit through covidx.training, evaluate and predict over
iterators through covidx.evaluation; predict over arrays and the features methods read their
batches from covidx.batches, the one batch pipeline, as all of those do. Model(inputs=...,
outputs=...) is the functional model (covidx.functional), the one module that imports this one
back."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np

from . import _config, _core, architecture, batches, checks, evaluation, formats, head, int8, layer_table, scaling
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import summary as summary_mod
from . import training as training_mod
from .formats import keras_writer, onnx_export
from .progbar import Progbar
from .unfamiliar import UnfamiliarStats

STATISTICS = ("moving_mean", "moving_variance")  # weights that never train


def _check_legacy_kwargs(method, kwargs):
    """Keras 2's max_queue_size/workers/use_multiprocessing are accepted and ignored."""
    unknown = set(kwargs) - {"max_queue_size", "workers", "use_multiprocessing"}
    if unknown:
        raise TypeError("%s() got unexpected keyword argument(s): %s" % (method, ", ".join(sorted(unknown))))


class InputRescaling:
    """Keras's Rescaling layer in front of the engine: x * scale + offset in float32 (as Keras
    computes it), then the network. scale and offset: numbers or one per channel."""

    def __init__(self, engine, rescaling):
        self.engine = engine
        self.scale = np.asarray(rescaling["scale"], np.float32)
        self.offset = np.asarray(rescaling["offset"], np.float32)

    def forward(self, x, **kwargs):
        scaled = np.ascontiguousarray(x * self.scale + self.offset, np.float32)
        return self.engine.forward(scaled, **kwargs)

    def activation_histograms(self, x):
        return self.engine.activation_histograms(np.ascontiguousarray(x * self.scale + self.offset, np.float32))

    def __getattr__(self, name):  # workspace_bytes, set_unfamiliar, ...: the engine's own
        return getattr(self.engine, name)


class Model:
    """A ResNet50 backbone, global pooling and a Dense head, run by covidx's C engine.

    Weights are kept as Keras stores them (get_weights/set_weights use Keras's order); the engine
    holds its own copy with batchnorm folded into the convolutions.

    Model(architecture, weights, ...) is this plain model; as in Keras, Model(inputs=...,
    outputs=...) builds a functional model (covidx.functional.Model, a subclass), so
    covidx.keras.Model is this class and every covidx model is an instance of it."""

    def __new__(cls, *args, **kwargs):
        if cls is Model and (args or kwargs) and not (args and isinstance(args[0], dict)) \
                and "arch" not in kwargs:
            from . import functional  # the one import circle: model <-> functional, as in Keras

            return super().__new__(functional.Model)
        return super().__new__(cls)

    def __init__(self, arch, weights, class_names=None, preprocessing=None, name="resnet50"):
        self.architecture = architecture.validate(arch)
        self.name = name
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != self.output_shape[-1]:
            raise ValueError("class_names: %d names for %d outputs" % (len(self.class_names), self.output_shape[-1]))
        self.preprocessing = preprocessing
        self._compiled = None
        self.optimizer = None
        self._layers = None
        self._input_shape = (224, 224, 3) if self.architecture["pooling"] is not None else (None, None, 3)
        self._weights = {}
        self._engine = None
        self._precision = "fp32"   # what the user asked for
        self._kernel = None        # (kernel name, note or None) of the engine's set_precision
        self._unfamiliar = None
        self._trainable = True
        self.calibration = None  # how the outputs were calibrated (a dict, kept in covidx files), if they were
        self.int8_calibration = None  # the int8 mode's input scales (calibrate_int8; kept in covidx files)
        self._set_named_weights(weights)

    # --- weights ---------------------------------------------------------------------------------

    @property
    def layer_names(self):
        """Names of the layers that hold weights, in Keras's model.layers order."""
        return [layer for layer, _ in architecture.weight_spec(self.architecture)]

    @property
    def output_shape(self):
        if self.architecture["pooling"] is None:
            return (None, None, None, 2048)
        return (None, architecture.output_units(self.architecture))

    def count_params(self):
        """The number of weights (trainable or not, batchnorm statistics included), as Keras's
        model.count_params()."""
        return int(sum(w.size for w in self._weights.values()))

    def _set_named_weights(self, named):
        """named: {'layer/weight': array}. Checks every name and shape, then rebuilds the engine."""
        weights = architecture.check_weights(self.architecture, named)
        if self._unfamiliar is not None or self.int8_calibration is not None:
            head = {"%s/%s" % (d["name"], w) for d in self.architecture.get("head", []) for w in ("kernel", "bias")}
            if not all(np.array_equal(weights[k], self._weights[k]) for k in weights if k not in head):
                if self._unfamiliar is not None:
                    self._drop_unfamiliar()
                if self.int8_calibration is not None:
                    self._drop_int8_calibration()
        self._engine = self._engine_for(weights)
        self._weights = weights

    def _drop_unfamiliar(self):
        """Statistics of the old backbone's features would be wrong for a new one."""
        warnings.warn("model %r: the backbone's weights changed, so its out-of-distribution statistics "
                      "were dropped; refit them with covidx.fit_unfamiliar" % self.name, stacklevel=4)
        self._unfamiliar = None

    def _drop_int8_calibration(self):
        """Scales measured on the old backbone's activations would be wrong for a new one."""
        warnings.warn("model %r: the backbone's weights changed, so its int8 calibration was dropped%s; calibrate "
                      "again with model.calibrate_int8(training_images)"
                      % (self.name, " and it runs in fp32" if self._precision == "int8" else ""), stacklevel=4)
        self.int8_calibration = None
        if self._precision == "int8":
            self._precision, self._kernel = "fp32", None

    def _engine_for(self, weights):
        """The C engine of these named float32 weights, with this model's precision and
        out-of-distribution statistics applied. The one place an engine is made (a functional model
        only says which weights go in), so nothing set on the model is lost when weights change."""
        engine = self._build_engine(weights)
        if self._unfamiliar is not None:
            engine.set_unfamiliar(self._unfamiliar.engine_args())
        if self.int8_calibration is not None:
            engine.set_int8_scales(int8.scale_array(self.int8_calibration, self.architecture))
        if self._precision != "fp32":  # the new engine packs its weights for bf16 too
            self._kernel = tuple(engine.set_precision(self._precision))
        return engine

    # --- precision -------------------------------------------------------------------------------

    @property
    def precision(self):
        """'fp32' (the default), 'bf16' or 'int8', as set by set_precision (see precision_info for
        the kernel that actually runs: bf16 and int8 fall back to fp32 where the CPU has no kernel
        for them)."""
        return self._precision

    def set_precision(self, precision):
        """'bf16': the convolutions after the stem run in bfloat16 (weights rounded to nearest even
        and packed once, now; activations rounded to bf16 as each convolution reads them; sums in
        fp32; the stem convolution, which reads the image, the Dense head, pooling and softmax
        stay fp32), on AMX where the CPU has it, else AVX512_BF16. Where
        it has neither (or COVIDX_GEMM rules them out), the model keeps running in fp32 and a
        RuntimeWarning says so; precision_info() and show_config() say which kernel runs. 'fp32':
        back to full precision (the default). Outputs in bf16 differ from fp32 by bf16 rounding:
        see README, 'Precision and CPU kernels'.

        'int8': the convolutions after the stem run in int8: weights (batchnorm folded) quantised
        per output channel, symmetric, once, now; each convolution's input quantised to 0..127
        with the scale calibrate_int8 found for it; sums exact in int32, then scaled back to fp32
        with the bias, residual and ReLU (the stem, pooling and the Dense head stay fp32). On
        AVX-512 VNNI, else AVX-VNNI, else AVX2; a model without int8 calibration is refused
        (ValueError: calibrate it first with calibrate_int8 on training images)."""
        checks.precision(precision)
        if precision == "int8" and self.int8_calibration is None:
            raise ValueError("precision 'int8': model %r has no int8 calibration; calibrate it first on training "
                             "images (never on the images you measure it on): model.calibrate_int8(images), "
                             "then save it to keep the scales (weights/calibrate_int8.py does this for the shipped "
                             "model)" % self.name)
        kernel, note = self._engine.set_precision(precision)
        self._precision = precision
        self._kernel = (kernel, note)
        if _config.kernel_precision(kernel) != precision:  # AVX512_BF16 instead of AMX is only noted
            warnings.warn("model %r: %s" % (self.name, note), RuntimeWarning, stacklevel=2)
        return self

    def calibrate_int8(self, x, batch_size=None, steps=None, verbose=0, method="clip-weighted",
                       keep_fp32=int8.STEM_READERS):
        """Calibrates the int8 mode (set_precision('int8')) on images x: an array (batch, height,
        width, 3), preprocessed as for predict, or an image iterator / generator (steps: how many
        of its batches). Use training images, never the ones the model is measured on. Runs x in
        fp32 and picks each convolution's input scale from a histogram of its values (method
        'clip-weighted', the default: least squared error, clipping counted 10 times; 'mse': least
        squared error; or 'max': no clipping), see covidx.int8. The
        scales are kept in int8_calibration and saved with the model (.safetensors). A model
        already in int8 switches to the new scales. keep_fp32: convolutions that stay fp32 (by
        default the two that read the stem's output, where one 7-bit scale loses the most; () puts
        every convolution after the stem in int8). Returns int8_calibration."""
        calibration = int8.calibrate(self, x, batch_size=batch_size, steps=checks.positive_int(steps, "steps"),
                                     verbose=verbose, method=method, keep_fp32=keep_fp32)
        self._set_int8_calibration(calibration)
        return calibration

    def _set_int8_calibration(self, calibration):
        """Takes calibration (checked), gives its scales to the engine and re-applies int8."""
        self.int8_calibration = int8.check_calibration(calibration, self.architecture)
        self._engine.set_int8_scales(int8.scale_array(calibration, self.architecture))
        if self._precision == "int8":
            self._kernel = tuple(self._engine.set_precision("int8"))

    def precision_info(self):
        """{'precision': asked for, 'running': 'fp32', 'bf16' or 'int8', 'kernel': the GEMM kernel
        of the convolutions, 'note': why bf16 runs elsewhere than on AMX, or int8 elsewhere than on
        AVX-512 VNNI (or either in fp32), else None}."""
        if self._kernel is None:
            kernel, note = _core.gemm_kernels()["fp32"], None
        else:
            kernel, note = self._kernel
        running = _config.kernel_precision(kernel) or "fp32"
        return {"precision": self._precision, "running": running, "kernel": kernel, "note": note}

    def _build_engine(self, w):
        arch = self.architecture
        convs = []
        for name, *_ in architecture.conv_layers(arch["variant"]):
            c, b = name + "_conv/", name + "_bn/"
            convs.append((name + "_conv", w[c + "kernel"], w.get(c + "bias"), w[b + "gamma"], w[b + "beta"],
                          w[b + "moving_mean"], w[b + "moving_variance"]))
        dense = [(d["name"], w[d["name"] + "/kernel"], w[d["name"] + "/bias"], architecture.ACTIVATIONS[d["activation"]])
                 for d in arch.get("head", [])]
        engine = _core.Engine(architecture.VARIANTS[arch["variant"]], architecture.POOLINGS[arch["pooling"]],
                              float(arch["bn_epsilon"]), convs, dense,
                              input_norm_eps=architecture.input_norm_epsilon(arch))
        return InputRescaling(engine, arch["rescaling"]) if arch.get("rescaling") else engine

    def get_weights(self):
        """All weights as a list of arrays, in Keras's order: per layer in model.layers order,
        conv kernel (HWIO) and bias; BN gamma, beta, moving_mean, moving_variance; Dense kernel, bias."""
        return [self._weights[k].copy() for k in self._weight_keys()]

    def set_weights(self, weights):
        """Replaces every weight from a list of arrays in get_weights()'s order and shapes (Keras's
        order); the list is checked whole before anything changes."""
        keys = self._weight_keys()
        weights = list(weights)
        if len(weights) != len(keys):
            raise ValueError("set_weights: expected a list of %d arrays, got %d" % (len(keys), len(weights)))
        self._set_named_weights(dict(zip(keys, weights)))

    def _weight_keys(self):
        return ["%s/%s" % (layer, w) for layer, ws in architecture.weight_spec(self.architecture) for w, _ in ws]

    def _weights_and_flags(self):
        """[(array, trainable)] in Keras's model.weights order. As in Keras, batchnorm statistics
        never train, and a frozen layer's weights are all non-trainable."""
        trainable = {layer.name: layer.trainable for layer in self.layers}
        return [(self._weights["%s/%s" % (layer, w)], trainable.get(layer, True) and w not in STATISTICS)
                for layer, ws in architecture.weight_spec(self.architecture) for w, _ in ws]

    @property
    def head_layers(self):
        """The head's own layers, which fit() trains, for a functional model; None for a plain
        model (fit trains Dense copies of its head and writes them back)."""
        return None

    @property
    def trainable(self):
        """Keras's model.trainable: setting it sets every layer's trainable flag (base_model.trainable
        = False freezes the backbone); reading it gives the value last set (True at first)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        for layer in self.layers:
            layer.trainable = bool(value)

    @trainable.deleter
    def trainable(self):  # back to the default flag; the layers keep theirs
        self._trainable = True

    @property
    def weights(self):
        """Every weight array (copies), in Keras's order (as get_weights())."""
        return [a.copy() for a, _ in self._weights_and_flags()]

    @property
    def trainable_weights(self):
        """The weights fit() may change (copies), in Keras's order: those of trainable layers,
        without batchnorm statistics."""
        return [a.copy() for a, on in self._weights_and_flags() if on]

    @property
    def non_trainable_weights(self):
        """Batchnorm statistics and the weights of frozen layers (copies), in Keras's order."""
        return [a.copy() for a, on in self._weights_and_flags() if not on]

    @property
    def named_weights(self):
        """{'layer/weight': array} (read-only views)."""
        out = {}
        for k, v in self._weights.items():
            v = v.view()
            v.flags.writeable = False
            out[k] = v
        return out

    # --- out-of-distribution statistics ----------------------------------------------------------

    @property
    def unfamiliar(self):
        """The out-of-distribution statistics (covidx.unfamiliar.UnfamiliarStats), or None."""
        return self._unfamiliar

    def set_unfamiliar(self, stats):
        """Attaches out-of-distribution statistics (from covidx.fit_unfamiliar), or None to drop them."""
        if stats is not None and not isinstance(stats, UnfamiliarStats):
            raise TypeError("set_unfamiliar: expected covidx.unfamiliar.UnfamiliarStats or None, got %s"
                            % type(stats).__name__)
        if stats is not None and self.architecture.get("pooling") is None:
            raise ValueError("set_unfamiliar: the model has no global pooling")
        self._unfamiliar = stats
        self._engine.set_unfamiliar(self._unfamiliar.engine_args()) if stats is not None else self._engine.set_unfamiliar(None)

    def _check_unfamiliar(self):
        if self._unfamiliar is None:
            raise ValueError("model %r has no out-of-distribution statistics: fit them with "
                             "covidx.fit_unfamiliar(model, train_generator) (the shipped model has them)" % self.name)

    # --- inference -------------------------------------------------------------------------------

    def _run(self, source, output, verbose=0, unfamiliar=False):
        """`output` of every batch of an ArraySource of images (checked by _images), in order."""
        bar = Progbar(source.num_batches, verbose=verbose) if verbose else None
        parts = []
        for i, batch in enumerate(source.epoch()):
            x = np.ascontiguousarray(batch.x, dtype=np.float32)  # a batch at a time: the engine needs no more
            parts.append(self._engine.forward(x, output=architecture.OUTPUTS[output], unfamiliar=unfamiliar))
            if bar:
                bar.update(i + 1, [], finalize=i + 1 == source.num_batches)
        if unfamiliar:
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @staticmethod
    def _images(x, batch_size, steps=None):
        """The batch pipeline's source of an array of images x: the first `steps` batches where
        given, checked (checks.images, without a float32 copy of the whole array)."""
        if not isinstance(x, (np.ndarray, list, tuple)):
            checks.images(x)  # raises, naming what x is
        source = batches.ArraySource(x, batch_size=batch_size).first(steps)
        checks.images(source.x, convert=False)
        return source

    def _forward(self, x, output="head", unfamiliar=False):
        return self._engine.forward(checks.images(x), output=architecture.OUTPUTS[output], unfamiliar=unfamiliar)

    def _output_tail(self, output, input_shape):
        """The per-sample output shape for images of input_shape (batch, h, w, 3)."""
        if output == "head":
            return self.output_shape[1:] if self.architecture["pooling"] is not None else \
                self._output_tail("feature_map", input_shape)
        if output == "features":
            return (2048,)
        h, w = input_shape[1], input_shape[2]
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # conv1
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # pool1
        for _ in range(3):  # the stride-2 stages
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return (h, w, 2048)

    def _is_array(self, x):
        return isinstance(x, (np.ndarray, list)) or (isinstance(x, tuple) and not batches.is_sequence(x))

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, *, return_unfamiliar=False,
                **kwargs):
        """Outputs for images: an array (batch, height, width, 3), used exactly as given (no
        preprocessing, as in Keras), or an image iterator/generator, whose batches are loaded in
        the background while the engine computes. verbose: 'auto' (=1), 0, 1 or 2.

        return_unfamiliar=True: returns (outputs, scores), scores (batch,) each image's
        out-of-distribution score from the same forward pass (see covidx.unfamiliar): above 1,
        the image is unlike the training images (about 1% of images like them score above 1).

        With an iterator made with on_error='skip', rows of unreadable files are NaN, so the rows
        stay aligned with the iterator's order."""
        _check_legacy_kwargs("predict", kwargs)
        if return_unfamiliar:
            self._check_unfamiliar()
        verbose = 1 if verbose == "auto" else verbose
        steps = checks.positive_int(steps, "steps")
        if self._is_array(x):
            source = self._images(x, batch_size, steps)  # only the first `steps` batches are computed
            scaling.warn_if_unscaled(self, source.x)
            return self._run(source, "head", verbose, unfamiliar=bool(return_unfamiliar))
        return evaluation.predict(self, x, batch_size, verbose, steps, "head", unfamiliar=bool(return_unfamiliar))

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False, **kwargs):
        """Keras's evaluate: the compiled loss and metrics averaged per sample over the data (an
        image iterator, a generator, or arrays x, y). Returns [loss, metric, ...] (a float when
        there is no metric) or a dict with return_dict=True. Folder labels are aligned with the
        model's classes by name (e.g. 'COVID-19' -> 'COV19'), and covidx says so once."""
        _check_legacy_kwargs("evaluate", kwargs)
        if x is None:
            raise ValueError("evaluate: no data given (x)")
        steps = checks.positive_int(steps, "steps")
        return evaluation.evaluate(self, x, y, batch_size, verbose, sample_weight, steps, return_dict)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True, **kwargs):
        """Keras's compile: keeps the optimizer (used by fit) and resolves the loss and metrics
        ('accuracy'/'acc', 'AUC', 'precision', 'recall', or covidx.metrics objects)."""
        if loss is None:
            raise ValueError("compile: a loss is needed, e.g. loss='categorical_crossentropy'")
        if metrics is None:
            metrics = []
        if isinstance(metrics, (str, metrics_mod.Metric)):
            metrics = [metrics]
        if isinstance(metrics, dict):
            raise ValueError("compile: metrics per output are not supported (covidx models have one output)")
        self._compiled = {"optimizer": optimizer, "loss": losses_mod.get(loss),
                          "metrics": [metrics_mod.get(m) for m in metrics],
                          "config": {"loss": loss if isinstance(loss, str) else None,
                                     "metrics": [m for m in metrics if isinstance(m, str)]}}
        self.optimizer = optimizer

    @property
    def metrics_names(self):
        if self._compiled is None:
            return []
        return ["loss"] + [m.name for m in self._compiled["metrics"]]

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1, **kwargs):
        """Keras's fit, for the trainable Dense head on a frozen backbone (see covidx.training)."""
        return training_mod.fit(self, x=x, y=y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                            callbacks=callbacks, validation_split=validation_split, validation_data=validation_data,
                            shuffle=shuffle, class_weight=class_weight, sample_weight=sample_weight,
                            initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                            validation_steps=validation_steps, validation_batch_size=validation_batch_size,
                            validation_freq=validation_freq, **kwargs)

    def fit_generator(self, generator, steps_per_epoch=None, epochs=1, verbose=1, callbacks=None,
                      validation_data=None, validation_steps=None, validation_freq=1, class_weight=None,
                      max_queue_size=10, workers=1, use_multiprocessing=False, shuffle=True, initial_epoch=0):
        return self.fit(generator, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=verbose,
                        callbacks=callbacks, validation_data=validation_data, validation_steps=validation_steps,
                        validation_freq=validation_freq, class_weight=class_weight, shuffle=shuffle,
                        initial_epoch=initial_epoch)

    # Keras 2.x names that TF 2.0-era notebooks use.
    def evaluate_generator(self, generator, steps=None, callbacks=None, max_queue_size=10, workers=1,
                           use_multiprocessing=False, verbose=0):
        return self.evaluate(generator, steps=steps, verbose=verbose)

    def predict_generator(self, generator, steps=None, callbacks=None, max_queue_size=10, workers=1,
                          use_multiprocessing=False, verbose=0):
        return self.predict(generator, steps=steps, verbose=verbose)

    def to_onnx(self, path, opset=17):
        """Writes this model as a standard ONNX graph (needs the `onnx` package: pip install onnx)."""
        return onnx_export.export(self, path, opset=opset)

    # --- layers and summary ----------------------------------------------------------------------

    @property
    def input(self):
        """The symbolic input, for building models the Keras functional way (covidx.functional)."""
        from . import functional  # the one import circle: model <-> functional

        return functional.symbolic_input(self)

    @property
    def output(self):
        """The symbolic output: `x = base_model.output; x = GlobalAveragePooling2D()(x); ...`."""
        from . import functional  # the one import circle: model <-> functional

        return functional.symbolic_output(self)

    @property
    def input_shape(self):
        return (None,) + tuple(self._input_shape)

    @property
    def layers(self):
        """Keras's model.layers: the 175 backbone layers (input, padding, conv, batchnorm,
        activation, pooling, add) and the head, in Keras's order, with writable .trainable."""
        if self._layers is None:
            rows = layer_table.build(self.architecture, self._input_shape)
            self._layers = [layer_table.Layer(*row) for row in rows]
        return self._layers

    def get_layer(self, name=None, index=None):
        """The layer of model.layers with this name (or at this index), as Keras's get_layer;
        ValueError when there is none."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError("No such layer: %s. Existing layers are: %s..." % (name, [l.name for l in self.layers[:5]]))

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False, show_trainable=False,
                layer_range=None):
        """Prints Keras's table of layers, output shapes, parameter counts and inbound layers;
        returns None."""
        summary_mod.print_summary(self, line_length=line_length, positions=positions, print_fn=print_fn,
                                  show_trainable=show_trainable)

    def predict_on_batch(self, x):
        """Outputs for one batch of images (batch, height, width, 3), used exactly as given (no
        preprocessing), in one forward pass, as Keras's predict_on_batch."""
        return self._engine.forward(checks.images(x), output=0)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """Keras's train_on_batch: one optimizer step of the head on this batch (images and
        labels); returns the batch's loss and metrics, computed before the step, as [loss,
        metric, ...] (a float without metrics) or a dict."""
        return training_mod.train_on_batch(self, x, y, sample_weight, class_weight, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """Keras's test_on_batch: the compiled loss and metrics on this batch."""
        if y is None:
            raise ValueError("test_on_batch: labels y are needed")
        n = len(x) if hasattr(x, "__len__") else None
        return self.evaluate(x, y, batch_size=n, verbose=0, sample_weight=sample_weight, return_dict=return_dict)

    def __call__(self, x, training=None, **kwargs):
        """model(x): outputs for images, as predict_on_batch; on a keras.Input, the symbolic
        output, for building a model (x = base_model(inputs, training=False))."""
        if isinstance(x, head.KerasTensor):
            from . import functional  # the one import circle: model <-> functional

            return functional.call_backbone(self, x)
        return self.predict_on_batch(x)

    def features(self, x, batch_size=None):
        """The globally pooled backbone features (batch, 2048)."""
        return self._run(self._images(x, batch_size), "features")

    def descriptors(self, x, batch_size=None):
        """What the out-of-distribution statistics are fitted to (batch, 28352): the pooled
        features, then each channel's mean and std after the stem and at the end of each stage,
        the last feature map on a 3x3 grid and an 8x8 thumbnail of the input
        (covidx.unfamiliar.FEATURE_SETS says where each set lies)."""
        if self.architecture.get("pooling") is None:
            raise ValueError("descriptors: the model has no global pooling")
        return self._run(self._images(x, batch_size), "descriptor")

    def feature_map(self, x, batch_size=None):
        """The last block's output (batch, h/32, w/32, 2048)."""
        return self._run(self._images(x, batch_size), "feature_map")

    def predict_reference(self, x):
        """Outputs from the plain C layers (direct loops, double accumulators): slow; for checks."""
        return self._engine.forward(checks.images(x), output=0, reference=True)

    def preprocess(self, x):
        """Applies the preprocessing recorded with this model to raw 0-255 RGB images (batch, h, w, 3).
        covidx calls it only where it reads image files itself; predict never does."""
        return scaling.preprocess(self.preprocessing, x, self.name)

    # --- files -----------------------------------------------------------------------------------

    def save(self, path, overwrite=True, dtype="float32", **kwargs):
        """Writes the model in the format its extension names, as Keras does:

        - '.keras': the Keras 3 archive; '.h5' (or '.hdf5'): Keras's legacy HDF5 (model_config +
          model_weights): both load in Keras 3 (keras.models.load_model) and in covidx;
        - '.safetensors' or '.covidx': covidx's own file (weights in Keras's naming; architecture,
          class names, preprocessing and compile settings in the metadata). dtype='float16'
          halves it.

        Other extensions are refused (say which format you want)."""
        kwargs.pop("include_optimizer", None)
        kwargs.pop("save_format", None)
        kwargs.pop("zipped", None)
        if kwargs:
            raise TypeError("save() got unexpected keyword argument(s): %s" % ", ".join(sorted(kwargs)))
        return formats.write(self, path, overwrite=overwrite, dtype=dtype)

    def compile_settings(self):
        """The compile settings a saved file records ({'loss': name or None, 'metrics': [names]}),
        or None when the model is not compiled."""
        return None if self._compiled is None else self._compiled["config"]

    def save_weights(self, filepath, overwrite=True):
        """Keras 3's model.save_weights: the weights as a Keras 3 '.weights.h5' file (loads with
        load_weights here and in Keras)."""
        filepath = os.fspath(filepath)
        if not filepath.endswith(".weights.h5"):
            raise ValueError("The filename must end in `.weights.h5`. Received: filepath=%s" % filepath)
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError("save_weights: %s exists (overwrite=False)" % filepath)
        return keras_writer.save_weights(self, filepath)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Keras's model.load_weights: weights from a '.weights.h5', '.keras' or legacy '.h5' file
        (or a covidx file) with this model's architecture, read as Keras reads them."""
        if skip_mismatch:
            raise ValueError("load_weights: skip_mismatch=True is not supported; every tensor must fit")
        filepath = os.fspath(filepath)
        if not os.path.isfile(filepath):
            raise FileNotFoundError("load_weights: no such file: %s" % filepath)
        self._set_named_weights(formats.load_weights(filepath, self.architecture))

    # --- Keras's config ----------------------------------------------------------------------------

    def get_config(self):
        """The model's Keras config (the 'config' of to_json()): name, layers, inputs, outputs."""
        return keras_writer.model_config(self)["config"]

    def to_json(self, **kwargs):
        """The model's architecture as Keras 3 JSON: keras.models.model_from_json builds it."""
        config = keras_writer.model_config(self)
        compiled = keras_writer.compile_config(self)
        if compiled is not None:
            config["compile_config"] = compiled
        return json.dumps(config, **kwargs)

    def __repr__(self):
        head = "-".join(str(d["units"]) for d in self.architecture.get("head", [])) or "none"
        return "<covidx.Model %r: ResNet50 %s, pooling=%s, head=%s, classes=%s>" % (
            self.name, self.architecture["variant"], self.architecture["pooling"], head, self.class_names)


DEFAULT_MODEL = "covid_resnet50.safetensors"


def default_model_path():
    """The shipped model: installed as package data (covidx/weights/), or the checkout's weights/."""
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.path.join(here, "weights"), os.path.join(os.path.dirname(here), "weights")):
        p = os.path.join(d, DEFAULT_MODEL)
        if os.path.isfile(p):
            return p
    return None
