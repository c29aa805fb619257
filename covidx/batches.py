"""The one batch pipeline (Keras's data adapter and epoch iterator): arrays, covidx's image
iterators, Keras Sequences and Python generators become one stream of batches, read by evaluate,
predict (arrays too), the features methods, fit (its feature cache too), fit_unfamiliar and
calibrate_int8.

    source = batches.adapter(x, y, sample_weight, batch_size)  # x and batch_size checked here
    for batch in source.epoch(steps, shuffle):                  # Batch(x, y, w, ok, indices, loaded)
        ...
    source.on_epoch_end()

A source is indexed (arrays, covidx's iterators: each batch says which samples it holds, so fit
can keep their features) or a stream (a Sequence's batches, a generator's). Every source but
arrays in memory is read in a background thread (decoding itself runs on the decode pool), at
most two batches ahead of the engine; slicing an array needs no thread.

Order: unshuffled, batch i is the i-th; shuffled (fit), arrays are permuted sample by sample
with NumPy's global random state, iterators and Sequences in the order of their batches with
Python's (an iterator made with shuffle=True also shuffles its samples, as in Keras); a generator
is read as it comes. An unreadable file of an iterator made with on_error='skip' is a False in
the batch's `ok` (its row zeros), never a lost batch."""
from __future__ import annotations

import queue
import random
import threading
import warnings
from collections.abc import Mapping
from typing import NamedTuple, Optional

import numpy as np

from . import checks
from .preprocessing.iterators import BATCH_SOURCES

DEFAULT_BATCH_SIZE = 32  # arrays without a batch_size, as in Keras

_DONE = object()


class Prefetcher:
    """Runs produce(i) for i = 0..n-1 (n may be None: until StopIteration) in one background
    thread, at most `depth` batches ahead, and yields the results in order. Errors re-raise in
    the consumer; closing stops the producer at its next batch."""

    def __init__(self, produce, n, depth=2):
        self.produce, self.n = produce, n
        self.q = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="covidx-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        i = 0
        try:
            while (self.n is None or i < self.n) and not self.stop.is_set():
                try:
                    item = self.produce(i)
                except StopIteration:
                    break
                if not self._put((True, item)):
                    return
                i += 1
        except BaseException as e:  # handed to the consumer
            self._put((False, e))
            return
        self._put((True, _DONE))

    def __iter__(self):
        try:
            while True:
                while True:
                    try:
                        ok, item = self.q.get(timeout=0.1)  # short waits keep Ctrl-C responsive
                        break
                    except queue.Empty:
                        if not self.thread.is_alive() and self.q.empty():
                            return
                if not ok:
                    raise item
                if item is _DONE:
                    return
                yield item
        finally:
            self.close()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


class Batch(NamedTuple):
    """One batch: images (or features) x, labels y and sample weights w (None where there are
    none), ok (None, or False where a file could not be read: its row of x is zeros), indices (the
    samples of an indexed source's batch, else None) and loaded (None: x holds every sample of the
    batch; else which of `indices` it holds, and x is None when it holds none)."""
    x: object
    y: object = None
    w: object = None
    ok: Optional[np.ndarray] = None
    indices: Optional[np.ndarray] = None
    loaded: Optional[np.ndarray] = None


def unpack(batch):
    """(x, y, sample_weight) of a batch a Sequence or generator gives: x, (x,), (x, y) or
    (x, y, w); a list is read as a tuple, as Keras 3 reads it."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if isinstance(batch, tuple):
        if len(batch) == 1:
            return batch[0], None, None
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) == 3:
            return batch
        raise ValueError("a batch must be x, (x,), (x, y) or (x, y, sample_weight); got a tuple of %d" % len(batch))
    return batch, None, None


def is_sequence(x):
    """A Keras Sequence (len and [i] of batches; covidx's iterators are): not an array or a list."""
    return hasattr(x, "__getitem__") and hasattr(x, "__len__") and not isinstance(x, (np.ndarray, list, tuple))


def is_generator(x):
    """A Python generator or other iterable of batches (not a Sequence, an array or a list)."""
    return not is_sequence(x) and (hasattr(x, "__next__") or (
        hasattr(x, "__iter__") and not isinstance(x, (np.ndarray, list, tuple))))


def batch_size_of(value):
    """The batch size: value checked (a positive integer), DEFAULT_BATCH_SIZE where None. The
    one check of every entry point's batch_size."""
    value = checks.positive_int(value, "batch_size")
    return DEFAULT_BATCH_SIZE if value is None else value


def require_data(x, caller):
    """Data that has nothing in it is said so up front (Keras fails later with unrelated errors)."""
    if is_sequence(x) and len(x) == 0:
        directory = getattr(x, "directory", None)
        if directory is not None and getattr(x, "samples", None) == 0:
            raise ValueError("%s: found no images in %s: flow_from_directory expects one sub-folder per class "
                             "holding that class's images (e.g. %s)"
                             % (caller, directory, "/".join([str(directory).rstrip("/"), "COVID-19", "x.png"])))
        raise ValueError("%s: the data is empty (a %s of length 0)" % (caller, type(x).__name__))
    if isinstance(x, (np.ndarray, list)) and len(x) == 0:
        raise ValueError("%s: the data is empty (no images in x)" % caller)


# --- the sources ----------------------------------------------------------------------------------

class Source:
    """What every kind of data offers the pipeline. kind: 'array', 'iterator' (covidx's),
    'sequence' or 'generator'; iterator: the Sequence itself (its classes, class_mode,
    on_epoch_end), else None; num_batches: None for a generator."""

    kind = None
    indexed = False      # batches name their samples (Batch.indices)
    background = True    # loaded in a background thread
    iterator = None
    num_batches = None
    samples = None       # the number of samples of an indexed source

    def order(self, shuffle):
        """The batch numbers of one pass, in order."""
        order = list(range(self.num_batches))
        if shuffle:  # Keras 3 also shuffles the order of a dataset's batches
            random.shuffle(order)
        return order

    def epoch(self, steps=None, shuffle=False, need=None, ran_out=None):
        """One pass of Batches: the first `steps` batches where given (ran_out, a message with
        %(steps)d and %(batches)d, is warned where the source has fewer; None: fewer silently).
        need(indices) -> a mask of the samples to load (indexed sources; fit's feature cache
        loads only those it has not seen). Runs lazily, from the first batch taken."""
        if self.num_batches is None:  # a generator: as many as it gives, at most steps
            produce, count = self._next, steps
        else:
            order = self.order(shuffle)
            if steps is not None:
                if steps > len(order) and ran_out is not None:
                    warnings.warn(ran_out % {"steps": steps, "batches": len(order)}, stacklevel=3)
                order = order[:steps]
            count = len(order)
            if self.indexed:
                produce = lambda i: self._indexed(order[i], need)  # noqa: E731
            else:
                produce = lambda i: self._numbered(order[i])  # noqa: E731
        if self.background:
            yield from Prefetcher(produce, count)
        else:
            for i in range(count):
                yield produce(i)

    def _indexed(self, b, need):
        idx = np.asarray(self.batch_indices(b), np.intp)
        if need is None:
            return Batch(*self.load(idx), indices=idx)
        mask = np.asarray(need(idx), bool)
        if not mask.any():
            return Batch(None, indices=idx, loaded=mask)
        return Batch(*self.load(idx[mask]), indices=idx, loaded=mask)

    def on_epoch_end(self):
        """The iterator's or Sequence's on_epoch_end (a shuffling one reorders its samples)."""
        if self.iterator is not None and hasattr(self.iterator, "on_epoch_end"):
            self.iterator.on_epoch_end()


class ArraySource(Source):
    """Arrays in memory: images (batch, height, width, 3), or pooled features for fit_features.
    Unshuffled batches are slices (views: a memmap is read a batch at a time); shuffled, the
    samples are permuted every pass (Keras shuffles samples, not just batches)."""

    kind, indexed, background = "array", True, False

    def __init__(self, x, y=None, sample_weight=None, batch_size=None):
        self.batch_size = batch_size_of(batch_size)
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        if not isinstance(x, np.ndarray):
            raise TypeError("x: expected a numpy array, an image iterator or a generator, got %s" % type(x).__name__)
        if y is not None and len(y) != len(x):
            raise ValueError("x and y: %d samples but %d labels" % (len(x), len(y)))
        if sample_weight is not None and len(sample_weight) != len(x):
            raise ValueError("x and sample_weight: %d samples but %d weights" % (len(x), len(sample_weight)))
        self.x, self.y = x, (None if y is None else np.asarray(y))
        self.w = None if sample_weight is None else np.asarray(sample_weight, np.float32)
        self.samples = len(x)
        self.num_batches = (len(x) + self.batch_size - 1) // self.batch_size
        self._permutation = None

    def first(self, steps):
        """Only the samples of the first `steps` batches (all where None): predict(x, steps=...)
        checks and computes no more."""
        if steps is not None and steps < self.num_batches:
            keep = slice(0, steps * self.batch_size)
            self.x = self.x[keep]
            self.y = None if self.y is None else self.y[keep]
            self.w = None if self.w is None else self.w[keep]
            self.samples, self.num_batches = len(self.x), steps
        return self

    def order(self, shuffle):
        self._permutation = np.random.permutation(self.samples) if shuffle else None
        return list(range(self.num_batches))

    def batch_indices(self, b):
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.samples)
        if self._permutation is None:
            return np.arange(start, stop)
        return self._permutation[start:stop]

    def load(self, idx):
        idx = np.asarray(idx, np.intp)
        if len(idx) and (len(idx) == 1 or (np.diff(idx) == 1).all()):  # a run of samples: a view
            idx = slice(int(idx[0]), int(idx[-1]) + 1)
        part = lambda a: None if a is None else a[idx]  # noqa: E731
        return self.x[idx], part(self.y), part(self.w), None


class IteratorSource(Source):
    """A covidx image iterator (flow_from_directory, flow, image_dataset_from_directory): its
    batches by its own order and seeding (batch_indices), read through load_batch, whose `ok`
    marks unreadable files."""

    kind, indexed = "iterator", True

    def __init__(self, iterator):
        self.iterator = iterator
        self.samples = iterator.n
        self.num_batches = len(iterator)

    def batch_indices(self, b):
        return self.iterator.batch_indices(b)

    def load(self, idx):
        return self.iterator.load_batch(idx)


class SequenceSource(Source):
    """A Keras Sequence: batch i is sequence[i]."""

    kind = "sequence"

    def __init__(self, sequence):
        self.iterator = sequence
        self.num_batches = len(sequence)

    def _numbered(self, b):
        return Batch(*unpack(self.iterator[b]))


class GeneratorSource(Source):
    """A Python generator (or any iterable of batches), read as it comes: one pass ends where it
    stops or after `steps` batches, and the next pass goes on from there."""

    kind = "generator"

    def __init__(self, generator):
        self._it = iter(generator)

    def _next(self, i):
        return Batch(*unpack(next(self._it)))  # StopIteration ends the pass


def adapter(x, y=None, sample_weight=None, batch_size=None):
    """The Source of x: arrays (with labels y and sample_weight), a covidx image iterator, a Keras
    Sequence or a Python generator (which bring their own labels). batch_size is for arrays; it
    is checked for every kind (batch_size_of)."""
    if isinstance(x, Mapping):  # has __getitem__ and __len__, but is not a sequence of batches
        raise ValueError("x: a dict of inputs (keys %s) is not supported: covidx models have one image input; "
                         "pass the images as one array" % (sorted(map(str, x))[:5],))
    if is_sequence(x) or is_generator(x):
        if y is not None:
            raise ValueError("`y` argument is not supported when using %s"
                             % ("a data generator (the labels come from it)" if is_sequence(x)
                                else "a Python generator"))
        if sample_weight is not None:
            raise ValueError("`sample_weight` argument is not supported when using a data generator")
        batch_size_of(batch_size)  # these batch themselves, but a batch_size that cannot be right is said
        if isinstance(x, BATCH_SOURCES):
            return IteratorSource(x)
        return SequenceSource(x) if is_sequence(x) else GeneratorSource(x)
    return ArraySource(x, y, sample_weight, batch_size)


EVALUATION_RAN_OUT = ("Your input ran out of data; interrupting evaluation. Make sure that your dataset or generator "
                      "can generate at least `steps` batches (%(steps)d here, it has %(batches)d).")


def one_pass(x, y=None, sample_weight=None, batch_size=None, steps=None):
    """(source, its batches in order, the progress bar's target): one unshuffled pass over x, the
    first `steps` batches where given, as evaluate, predict, fit_unfamiliar and calibrate_int8 read
    their data. A Sequence asked for more steps than it has warns (EVALUATION_RAN_OUT)."""
    source = adapter(x, y, sample_weight, batch_size)
    if source.kind == "array":
        target = source.num_batches if steps is None else min(source.num_batches, steps)
    else:
        target = steps if steps is not None else source.num_batches
    ran_out = EVALUATION_RAN_OUT if source.kind in ("iterator", "sequence") else None
    return source, source.epoch(steps, ran_out=ran_out), target
