"""evaluate and predict over arrays, Keras Sequences (the image iterators) and Python generators,
read through the one batch pipeline (covidx.batches), and the alignment of a folder's classes
with the model's (labels from a folder follow the model's classes by name where they match)."""
from __future__ import annotations

import re
import warnings

import numpy as np

from . import batches
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import scaling
from .progbar import Progbar


# --- class alignment ------------------------------------------------------------------------------

_NORMAL_NAMES = {"normal", "nofinding", "healthy", "negative", "neg", "noncovid", "noncovid19", "non", "notcovid",
                 "nocovid", "covidnegative", "covid19negative", "negativecovid"}
_COVID_NAMES = {"positive", "pos", "covidpositive", "covid19positive", "positivecovid"}


def _canonical(name):
    """'normal', 'covid', or the name in lower case without punctuation. A leading number that
    orders folders ('0_normal', '1-COVID') is not part of the name."""
    n = re.sub(r"[^0-9a-z]", "", re.sub(r"^\s*\d+\s*[-_. ]+\s*(?=[A-Za-z])", "", str(name)).lower())
    if n in _NORMAL_NAMES or "negative" in n or n.startswith("non"):
        return "normal"
    if n in _COVID_NAMES or "covid" in n or n.startswith("cov") or "sarscov" in n:
        return "covid"
    return n


def model_class_count(model):
    if model.class_names:
        return len(model.class_names)
    units = model.output_shape[-1]
    return 2 if units == 1 else units


def class_alignment(model, iterator):
    """(mapping, message): mapping[g] is the model class index of generator class g, or None when
    no change is needed; message says what was aligned (None when nothing was)."""
    indices = getattr(iterator, "class_indices", None)
    mode = getattr(iterator, "class_mode", None)
    if not indices or mode not in ("binary", "sparse", "categorical") or model.architecture["pooling"] is None:
        return None, None
    gen_names = sorted(indices, key=indices.get)
    n_model = model_class_count(model)
    names = model.class_names
    if names:
        if gen_names == list(names):
            return None, None
        canon = [_canonical(m) for m in names]
        mapping = []
        for g in gen_names:
            hits = [i for i, c in enumerate(canon) if c == _canonical(g)]
            if len(hits) != 1:
                break
            mapping.append(hits[0])
        else:
            if len(set(mapping)) == len(mapping):
                pairs = ", ".join("'%s' -> '%s' (class %d)" % (g, names[m], m) for g, m in zip(gen_names, mapping))
                return (np.array(mapping, np.int64),
                        "covidx: matched the folder's classes to the model's by name: %s. Labels follow the "
                        "model's classes %s." % (pairs, list(names)))
    if len(gen_names) > n_model:
        raise ValueError("the data has %d classes %s but the model has %d %s; they cannot be aligned"
                         % (len(gen_names), gen_names, n_model, list(names) if names else "outputs"))
    if len(gen_names) < n_model:  # by position would be a guess: refuse, saying how to be explicit
        raise ValueError(_subset_message(gen_names, names, n_model))
    mapping = np.arange(len(gen_names))
    if names is None and len(gen_names) == n_model:
        return None, None
    named = [(g, i, j) for j, g in enumerate(gen_names)
             for i, m in enumerate(names) if _canonical(g) == _canonical(m)]
    if any(i != j for _, i, j in named):  # by position, a folder would be scored as another class than it names
        g, i, j = next(t for t in named if t[1] != t[2])
        raise ValueError("the folder's classes %s do not all match the model's classes %s, and by position '%s' "
                         "(folder class %d) would be scored as '%s' although its name says '%s'. Say which: "
                         "flow_from_directory(..., classes=%r) lists the folder's sub-folders in the model's order."
                         % (gen_names, list(names), g, j, names[j], names[i], _classes_hint(gen_names, list(names))))
    target = ["'%s'" % names[i] for i in mapping] if names else ["output %d" % i for i in mapping]
    pairs = ", ".join("'%s' -> %s" % (g, t) for g, t in zip(gen_names, target))
    return mapping, ("covidx: the folder's class names do not match the model's %s, so they were aligned by "
                     "index: %s." % (list(names) if names else "outputs", pairs))


def true_labels(model, iterator):
    """The true class of each image of a flow_from_directory iterator, as indices into the model's
    classes: the labels model.evaluate scores against (the folder's classes matched to the model's
    by name where they differ, e.g. COVID-19 -> COV19). With model.predict on the same unshuffled
    iterator, what reports.classification_summary takes. Raises ValueError where the folder's
    classes cannot be matched to the model's (the message says how to be explicit)."""
    if getattr(iterator, "classes", None) is None or getattr(iterator, "class_indices", None) is None:
        raise TypeError("true_labels: expected a flow_from_directory iterator (one sub-folder per class), got %s"
                        % type(iterator).__name__)
    mapping, _ = class_alignment(model, iterator)
    labels = np.asarray(iterator.classes, np.float32)
    return apply_alignment(labels, mapping, "sparse", model_class_count(model)).astype(np.int64)


def _subset_message(gen_names, names, n_model):
    found = "the folder has %d class%s %s" % (len(gen_names), "" if len(gen_names) == 1 else "es", gen_names)
    example = list(names) if names else ["COV19", "Normal"][:n_model] if n_model == 2 else ["..."] * n_model
    if names:
        why = ("but none of its names matches the model's classes %s, so covidx cannot tell which of the %d outputs "
               "%s" % (list(names), n_model, "it is" if len(gen_names) == 1 else "they are"))
    else:
        why = ("but the model has %d outputs and no class names, so covidx cannot tell which output %s (by position "
               "it would only be a guess)" % (n_model, "it is" if len(gen_names) == 1 else "each is"))
    return ("%s, %s. Say which: give the model its class names in output order, e.g. covidx.load_model(path, "
            "class_names=%r) (or model.class_names = [...]); or list every output's class in order when reading the "
            "folder, e.g. flow_from_directory(..., classes=%r), naming the folder's own sub-folders (classes without "
            "a folder simply have no images)." % (found, why, example, _classes_hint(gen_names, example)))


def _classes_hint(gen_names, example):
    """The classes= list that puts each of the folder's classes at the position of the same name, where any."""
    hint = list(example)
    for g in gen_names:
        if g not in hint:
            hits = [i for i, n in enumerate(hint) if _canonical(n) == _canonical(g)]
            if hits:
                hint[hits[0]] = g
    return hint


def apply_alignment(y, mapping, mode, n_model):
    if mapping is None or y is None:
        return y
    if mode in ("binary", "sparse"):
        return mapping[np.asarray(y).astype(np.int64)].astype(np.asarray(y).dtype)
    if mode == "categorical":
        out = np.zeros((len(y), n_model), dtype=y.dtype)
        out[:, mapping] = y
        return out
    return y


def say_alignment(model, iterator):
    """The class mapping of iterator's labels to model's classes (None: unchanged); the message
    saying what was aligned is printed once per iterator and model."""
    if iterator is None:
        return None
    mapping, message = class_alignment(model, iterator)
    if message and getattr(iterator, "_covidx_alignment_said", None) != id(model):
        print(message)
        try:
            iterator._covidx_alignment_said = id(model)
        except AttributeError:
            pass
    return mapping


# --- evaluate / predict ---------------------------------------------------------------------------

def warn_if_unscaled(model, x):
    scaling.warn_if_unscaled(model, x)


def warn_if_shuffled(iterator):
    """predict over a shuffling image iterator gives rows in a random order, which a later
    comparison with iterator.classes (in file order) silently scores as chance: warn, once."""
    if iterator is None or not getattr(iterator, "shuffle", False) or getattr(iterator, "classes", None) is None:
        return
    if getattr(iterator, "_covidx_shuffle_said", False):
        return
    try:
        iterator._covidx_shuffle_said = True
    except AttributeError:
        pass
    warnings.warn("covidx: predict() over an iterator made with shuffle=True: the rows come in a shuffled order, not "
                  "the order of its .classes and .filenames, so comparing them scores chance. Make the iterator with "
                  "shuffle=False to compare predictions with .classes.", UserWarning, stacklevel=4)


def _resolve_loss(compiled, y, y_pred):
    """Keras's loss, with one covidx convenience: integer labels (class_mode 'binary'/'sparse')
    against a multi-column softmax under categorical cross-entropy are scored as sparse labels."""
    y = np.asarray(y)
    if (compiled.name == "categorical_crossentropy" and y_pred.ndim == 2 and y_pred.shape[1] > 1
            and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1))):
        return losses_mod.sparse_categorical_crossentropy
    return compiled.per_sample


EMPTY_GENERATOR = ("When passing a Python generator to a Keras model, the generator must yield at least one batch. "
                   "Received an empty generator.")


def nothing_scored(caller, skipped):
    if skipped:
        return ValueError("%s: nothing to score: none of the %d images could be read (%s)"
                          % (caller, len(skipped), "; ".join("%s (%s)" % s for s in skipped[:3])
                             + (" ..." if len(skipped) > 3 else "")))
    return ValueError("%s: nothing to score: the data produced no samples" % caller)


def evaluate(model, x, y, batch_size, verbose, sample_weight, steps, return_dict):
    if model._compiled is None:
        raise ValueError("You must call `compile()` before using the model (e.g. model.compile("
                         "loss='categorical_crossentropy', metrics=['accuracy'])).")
    batches.require_data(x, "evaluate")
    loss_obj, metric_objs = model._compiled["loss"], model._compiled["metrics"]
    for m in metric_objs:
        m.reset_state()
    loss_tracker = metrics_mod.Mean(name="loss")
    source, stream, total_steps = batches.one_pass(x, y, sample_weight, batch_size, steps)
    iterator = source.iterator
    mapping = say_alignment(model, iterator)
    mode = getattr(iterator, "class_mode", None)
    n_model = model_class_count(model)
    verbose = 1 if verbose == "auto" else verbose
    bar = Progbar(total_steps, verbose=verbose) if verbose else None
    step, skipped, scored = 0, [], 0
    names = ["loss"] + [m.name for m in metric_objs]

    def logs():
        vals = {"loss": float(loss_tracker.result())}
        for m in metric_objs:
            vals[m.name] = float(m.result())
        return vals

    def shown(vals):
        keys = sorted(vals) if (bar and bar.style == "keras3") else names
        return [(k, vals[k]) for k in keys]

    for bx, by, bw, ok, _, _ in stream:
        step += 1
        if step == 1:
            warn_if_unscaled(model, bx)
        if by is None:
            raise ValueError("evaluate: the data has no labels (class_mode=None or 'input' gives none)")
        if mode == "input":
            raise ValueError("evaluate: class_mode='input' labels are images; covidx models output classes")
        by = apply_alignment(by, mapping, mode, n_model)
        if ok is not None and not ok.all():
            bx, by, bw = bx[ok], by[ok], (None if bw is None else bw[ok])
            if not len(bx):
                continue
        pred = model.predict_on_batch(bx)
        scored += len(bx)
        per_sample = _resolve_loss(loss_obj, by, pred)(by, pred)
        if bw is not None:
            per_sample = per_sample * bw
        loss_tracker.update_state(np.mean(per_sample, dtype=np.float32), sample_weight=len(bx))
        for m in metric_objs:
            m.update_state(by, pred)
        if bar:
            bar.update(step, shown(logs()), finalize=False)
    source.on_epoch_end()
    if iterator is not None:
        skipped = list(getattr(iterator, "skipped", []))
    if step == 0 and iterator is None:
        raise ValueError(EMPTY_GENERATOR)
    if scored == 0:
        raise nothing_scored("evaluate", skipped)
    result = logs()
    if bar:
        bar.update(total_steps if total_steps is not None else step, shown(result), finalize=True)
    if skipped:
        print("covidx: %d file(s) could not be read and were left out: %s"
              % (len(skipped), "; ".join("%s (%s)" % s for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")))
    if return_dict:
        return dict(sorted(result.items()))
    values = [result[k] for k in names]
    return values[0] if len(values) == 1 else values


def predict(model, x, batch_size, verbose, steps, output="head", unfamiliar=False):
    batches.require_data(x, "predict")
    source, stream, total_steps = batches.one_pass(x, None, None, batch_size, steps)
    iterator = source.iterator
    warn_if_shuffled(iterator)
    verbose = (1 if iterator is not None else 0) if verbose == "auto" else verbose
    bar = Progbar(total_steps, verbose=verbose) if verbose else None
    parts, scores, step = [], [], 0
    for bx, _, _, ok, _, _ in stream:
        step += 1
        if isinstance(bx, list):
            raise ValueError("predict: models with several inputs are not supported")
        if step == 1:
            warn_if_unscaled(model, bx)
        if ok is not None and not ok.all():
            out = np.full((len(bx),) + model._output_tail(output, bx.shape), np.nan, np.float32)
            score = np.full(len(bx), np.nan, np.float32)
            if ok.any():
                got = model._forward(bx[ok], output, unfamiliar)
                out[ok], score[ok] = got if unfamiliar else (got, np.nan)
        else:
            got = model._forward(bx, output, unfamiliar)
            out, score = got if unfamiliar else (got, None)
        parts.append(out)
        scores.append(score)
        if bar:
            bar.update(step, [], finalize=False)
    source.on_epoch_end()
    if bar:
        bar.update(total_steps if total_steps is not None else step, [], finalize=True)
    if not parts:
        raise ValueError("predict: the data produced no batches")
    if unfamiliar:
        return np.concatenate(parts), np.concatenate(scores)
    return np.concatenate(parts)
