"""Keras's batch iterators: Iterator (indexing, shuffling, infinite next()), DirectoryIterator
(flow_from_directory) and NumpyArrayIterator (flow).

Shuffling and seeding use NumPy's global random state exactly as Keras does, so the same seed gives
the same order. Images of a batch are decoded and resized in worker threads (Pillow releases the
GIL); the random transforms then run in file order, so the draws are Keras's."""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import checks
from ..errors import ImageFileError
from .arrays import array_to_img, img_to_array
from .reader import check_target_size, load_img

_decode_pool = None
_decode_pool_lock = threading.Lock()


def decode_pool():
    """One process-wide thread pool for decoding images."""
    global _decode_pool
    with _decode_pool_lock:
        if _decode_pool is None:
            _decode_pool = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)),
                                              thread_name_prefix="covidx-decode")
        return _decode_pool


def _reset_pool_after_fork():
    global _decode_pool, _decode_pool_lock
    _decode_pool, _decode_pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


class Iterator:
    """Base of the image iterators: a Keras Sequence (len, [i], on_epoch_end) that is also an
    infinite Python iterator (next() cycles through epochs, reshuffling each pass)."""

    # Keras's list, plus DICOM (read through pydicom, an optional extra)
    white_list_formats = ("png", "jpg", "jpeg", "bmp", "ppm", "tif", "tiff", "dcm")

    def __init__(self, n, batch_size, shuffle, seed):
        self.n = n
        self.batch_size = checks.positive_int(batch_size, "batch_size", allow_none=False)
        self.seed = seed
        self.shuffle = shuffle
        self.batch_index = 0
        self.total_batches_seen = 0
        self.lock = threading.Lock()
        self.index_array = None
        self.index_generator = self._flow_index()
        self.workers, self.use_multiprocessing, self.max_queue_size = 1, False, 10

    def _set_index_array(self):
        self.index_array = np.arange(self.n)
        if self.shuffle:
            self.index_array = np.random.permutation(self.n)

    def _batch_indices(self, idx):
        """The sample indices of batch idx, with Keras's seeding and lazy shuffling."""
        if idx >= len(self):
            raise ValueError("Asked to retrieve element {idx}, but the Sequence has length {length}"
                             .format(idx=idx, length=len(self)))
        if self.seed is not None:
            np.random.seed(self.seed + self.total_batches_seen)
        self.total_batches_seen += 1
        if self.index_array is None:
            self._set_index_array()
        # Negative indices slice from the end, as in Keras (-1 gives an empty batch).
        return self.index_array[self.batch_size * idx:self.batch_size * (idx + 1)]

    def __getitem__(self, idx):
        return self._get_batches_of_transformed_samples(self._batch_indices(idx))

    def batch_indices(self, i):
        """The sample indices of batch i, in Keras's order (its seeding and lazy shuffling)."""
        return self._batch_indices(i)

    def load_batch(self, indices):
        """The samples at indices as (x, y or None, sample weights or None, ok or None): ok[j] is
        False where sample j could not be read (its row of x is zeros), None where all were. The
        batch pipeline (covidx.batches) reads covidx's iterators through this and batch_indices."""
        out = self._get_batches_of_transformed_samples(indices)
        if not isinstance(out, tuple):
            return out, None, None, None
        return tuple(out) + (None,) * (3 - len(out)) + (None,)

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    @property
    def num_batches(self):
        return len(self)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        self._set_index_array()

    def reset(self):
        self.batch_index = 0

    def _flow_index(self):
        self.reset()
        while True:
            if self.seed is not None:
                np.random.seed(self.seed + self.total_batches_seen)
            if self.batch_index == 0:
                self._set_index_array()
            current = 0 if self.n == 0 else (self.batch_index * self.batch_size) % self.n
            if self.n > current + self.batch_size:
                self.batch_index += 1
            else:
                self.batch_index = 0
            self.total_batches_seen += 1
            yield self.index_array[current:current + self.batch_size]

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self):
        with self.lock:
            index_array = next(self.index_generator)
        return self._get_batches_of_transformed_samples(index_array)

    def _get_batches_of_transformed_samples(self, index_array):
        raise NotImplementedError


def _walk_files(directory, follow_links):
    """(root, file name) pairs under directory: directories in sorted path order, names sorted.
    With follow_links, a directory reached twice (a symlink loop) is walked once."""
    seen = set()
    walked = []
    for root, dirs, files in os.walk(directory, followlinks=follow_links):
        if follow_links:
            try:
                st = os.stat(root)
            except OSError:
                dirs[:] = []
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                dirs[:] = []
                continue
            seen.add(key)
        walked.append((root, files))
    for root, files in sorted(walked, key=lambda t: t[0]):
        for fname in sorted(files):
            yield root, fname


def _list_class_files(directory, white_list_formats, split, follow_links):
    files = []
    for root, fname in _walk_files(directory, follow_links):
        lower = fname.lower()
        if lower.endswith(".tiff"):
            warnings.warn('Using ".tiff" files with multiple bands will cause distortion. Please verify your output.')
        if lower.endswith(white_list_formats):
            files.append(os.path.join(root, fname))
    if split:
        n = len(files)
        files = files[int(split[0] * n):int(split[1] * n)]
    dirname = os.path.basename(directory)
    return [os.path.join(dirname, os.path.relpath(p, directory)) for p in files]


class BatchFromFiles:
    """Batches built from image files: parallel decoding, then Keras's per-image pipeline."""

    def batch_indices(self, i):
        """The sample indices of batch i, in the iterator's order."""
        return self._batch_indices(i)

    def load_batch(self, indices):
        """The samples at indices as (x, y or None, sample weights or None, ok): ok[j] is False
        where file j could not be read (its row of x is zeros, and the file is in .skipped), so
        that predict's rows stay aligned with the files."""
        x, y, ok = self._get_batch_with_mask(indices)
        weights = getattr(self, "sample_weight", None)  # flow_from_dataframe(weight_col=...)
        return x, y, None if weights is None else np.asarray(weights)[np.asarray(indices, np.intp)], ok

    def _load_one(self, j):
        return img_to_array(load_img(self.filepaths[j], color_mode=self.color_mode, target_size=self.target_size,
                                     interpolation=self.interpolation, keep_aspect_ratio=self.keep_aspect_ratio,
                                     xray=self.xray), data_format=self.data_format)

    def _load_arrays(self, index_array):
        """Decoded images of a batch, in order; an ImageFileError in place of a bad one when
        on_error='skip'."""
        if len(index_array) > 1:
            futures = [decode_pool().submit(self._load_one, j) for j in index_array]
            results = []
            for fut in futures:
                try:
                    results.append(fut.result())
                except ImageFileError as e:
                    results.append(e)
        else:
            results = []
            for j in index_array:
                try:
                    results.append(self._load_one(j))
                except ImageFileError as e:
                    results.append(e)
        if self.on_error == "raise":
            for r in results:
                if isinstance(r, ImageFileError):
                    raise r
        return results

    def _labels(self, index_array, batch_x):
        if self.class_mode == "input":
            return batch_x.copy()
        if self.class_mode in ("binary", "sparse"):
            return self.classes[index_array].astype(self.dtype)
        if self.class_mode == "categorical":
            y = np.zeros((len(batch_x), len(self.class_indices)), dtype=self.dtype)
            y[np.arange(len(batch_x)), self.classes[index_array]] = 1.0
            return y
        return None

    def _get_batch_with_mask(self, index_array):
        """(batch_x, batch_y or None, ok): ok[i] is False where file i could not be read (its row
        is zeros); used by covidx's evaluate/predict to keep rows aligned with the files."""
        index_array = np.asarray(index_array, dtype=np.intp)
        arrays = self._load_arrays(index_array)
        batch_x = np.zeros((len(index_array),) + self.image_shape, dtype=self.dtype)
        ok = np.ones(len(index_array), bool)
        gen = self.image_data_generator
        for i, (j, x) in enumerate(zip(index_array, arrays)):
            if not isinstance(x, ImageFileError) and gen:
                params = gen.get_random_transform(x.shape)
                x = gen.apply_transform(x, params)
                x = gen.standardize(x)
            if not isinstance(x, ImageFileError) and not np.isfinite(x).all():
                # a model would still give a confident answer: said instead, naming the file
                x = ImageFileError(self.filepaths[j], "NaN or infinite values after preprocessing (%d of %d); "
                                   "check preprocessing_function and rescale" % (np.size(x) - np.isfinite(x).sum(),
                                                                                 np.size(x)))
                if self.on_error == "raise":
                    raise x
            if isinstance(x, ImageFileError):
                ok[i] = False
                self._record_skip(self.filepaths[j], x.reason)
                continue
            batch_x[i] = x
        if self.save_to_dir:
            for i, j in enumerate(index_array):
                img = array_to_img(batch_x[i], self.data_format, scale=True)
                fname = "{prefix}_{index}_{hash}.{format}".format(prefix=self.save_prefix, index=j,
                                                                  hash=np.random.randint(1e7),
                                                                  format=self.save_format)
                img.save(os.path.join(self.save_to_dir, fname))
        return batch_x, self._labels(index_array, batch_x), ok

    def _record_skip(self, path, reason):
        with self.lock:
            if path not in self._skipped_paths:
                self._skipped_paths.add(path)
                self.skipped.append((path, reason))
                warnings.warn("skipped unreadable image %s (%s)" % (path, reason), stacklevel=3)

    def _get_batches_of_transformed_samples(self, index_array):
        batch_x, batch_y, ok = self._get_batch_with_mask(index_array)
        if not ok.all():
            batch_x = batch_x[ok]
            batch_y = None if batch_y is None else batch_y[ok]
        if batch_y is None:
            return batch_x
        return batch_x, batch_y

    @property
    def filepaths(self):
        if self._filepaths is None:
            self._filepaths = [os.path.join(self.directory, f) for f in self.filenames]
        return self._filepaths

    @property
    def labels(self):
        return self.classes

    @property
    def sample_weight(self):
        return None


class DirectoryIterator(BatchFromFiles, Iterator):
    """Images from a directory with one sub-directory per class (flow_from_directory)."""

    allowed_class_modes = {"categorical", "binary", "sparse", "input", None}

    def __init__(self, directory, image_data_generator, target_size=(256, 256), color_mode="rgb", classes=None,
                 class_mode="categorical", batch_size=32, shuffle=True, seed=None, data_format="channels_last",
                 save_to_dir=None, save_prefix="", save_format="png", follow_links=False, subset=None,
                 interpolation="nearest", keep_aspect_ratio=False, dtype="float32", *, on_error="raise",
                 xray=False):
        if color_mode not in ("rgb", "rgba", "grayscale"):
            raise ValueError('Invalid color mode: %s; expected "rgb", "rgba", or "grayscale".' % (color_mode,))
        self.directory = directory
        self.image_data_generator = image_data_generator
        check_target_size(target_size)  # a bad size is the argument's fault, said once, not every file's
        self.target_size = tuple(int(v) for v in target_size)
        self.color_mode = color_mode
        self.data_format = data_format
        channels = {"rgba": 4, "rgb": 3, "grayscale": 1}[color_mode]
        self.image_shape = (self.target_size + (channels,) if data_format == "channels_last"
                            else (channels,) + self.target_size)
        self.keep_aspect_ratio = keep_aspect_ratio
        self.interpolation = interpolation
        self.dtype = dtype
        self.save_to_dir, self.save_prefix, self.save_format = save_to_dir, save_prefix, save_format
        if subset is not None:
            vs = image_data_generator._validation_split if image_data_generator is not None else 0.0
            if subset == "validation":
                split = (0, vs)
            elif subset == "training":
                split = (vs, 1)
            else:
                raise ValueError('Invalid subset name: %s; expected "training" or "validation"' % (subset,))
        else:
            split = None
        self.split, self.subset = split, subset
        # covidx accepts class modes in any case ('Binary'); Keras accepts only lower case.
        if isinstance(class_mode, str):
            class_mode = class_mode.lower()
        if class_mode not in self.allowed_class_modes:
            raise ValueError("Invalid class_mode: %s; expected one of: %s" % (class_mode, self.allowed_class_modes))
        self.class_mode = class_mode
        if on_error not in ("raise", "skip"):
            raise ValueError("on_error: expected 'raise' or 'skip', got %r" % (on_error,))
        self.on_error, self.xray = on_error, xray
        self.skipped, self._skipped_paths, self._filepaths = [], set(), None
        self.follow_links = follow_links
        # Interpolation names are checked up front (Keras waits for the first resize).
        if interpolation not in ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos"):
            raise ValueError("Invalid interpolation method %s specified. Supported methods are nearest, bilinear, "
                             "bicubic, hamming, box, lanczos" % (interpolation,))

        dir_str = os.fspath(directory)
        if not os.path.isdir(dir_str):
            raise FileNotFoundError("flow_from_directory: no such directory: %s" % (dir_str,))
        if not classes:
            classes = sorted(d for d in os.listdir(dir_str) if os.path.isdir(os.path.join(dir_str, d)))
        self.num_classes = len(classes)
        self.class_indices = dict(zip(classes, range(len(classes))))
        self.filenames, labels = [], []
        for name in classes:
            class_dir = os.path.join(dir_str, name)
            if not os.path.isdir(class_dir):
                continue  # a named class without a folder contributes no files, as in Keras
            files = _list_class_files(class_dir, self.white_list_formats, split, follow_links)
            self.filenames += files
            labels += [self.class_indices[name]] * len(files)
        self.samples = len(self.filenames)
        self.classes = np.array(labels, dtype="int32")
        print("Found %d images belonging to %d classes." % (self.samples, self.num_classes))
        super().__init__(self.samples, batch_size, shuffle, seed)


class DataFrameIterator(BatchFromFiles, Iterator):
    """Images listed in a pandas DataFrame (flow_from_dataframe), with Keras's checks, filtering
    of missing or non-image files, class discovery and class modes."""

    allowed_class_modes = {"binary", "categorical", "input", "multi_output", "raw", "sparse", None}

    def __init__(self, dataframe, directory=None, image_data_generator=None, x_col="filename", y_col="class",
                 weight_col=None, target_size=(256, 256), color_mode="rgb", classes=None, class_mode="categorical",
                 batch_size=32, shuffle=True, seed=None, data_format="channels_last", save_to_dir=None,
                 save_prefix="", save_format="png", subset=None, interpolation="nearest", keep_aspect_ratio=False,
                 dtype="float32", validate_filenames=True):
        if color_mode not in ("rgb", "rgba", "grayscale"):
            raise ValueError('Invalid color mode: %s; expected "rgb", "rgba", or "grayscale".' % (color_mode,))
        if interpolation not in ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos"):
            raise ValueError("Invalid interpolation method %s specified. Supported methods are nearest, bilinear, "
                             "bicubic, hamming, box, lanczos" % (interpolation,))
        self.image_data_generator = image_data_generator
        check_target_size(target_size)
        self.target_size = tuple(int(v) for v in target_size)
        self.color_mode, self.data_format = color_mode, data_format
        channels = {"rgba": 4, "rgb": 3, "grayscale": 1}[color_mode]
        self.image_shape = (self.target_size + (channels,) if data_format == "channels_last"
                            else (channels,) + self.target_size)
        self.save_to_dir, self.save_prefix, self.save_format = save_to_dir, save_prefix, save_format
        self.interpolation, self.keep_aspect_ratio, self.dtype = interpolation, keep_aspect_ratio, dtype
        self.on_error, self.xray = "raise", False
        self.skipped, self._skipped_paths = [], set()
        if subset is not None:
            vs = image_data_generator._validation_split if image_data_generator is not None else 0.0
            if subset not in ("training", "validation"):
                raise ValueError('Invalid subset name: %s; expected "training" or "validation"' % (subset,))
            self.split = (0, vs) if subset == "validation" else (vs, 1)
        else:
            self.split = None
        self.subset = subset
        df = dataframe.copy()
        self.directory = directory or ""
        self.class_mode = class_mode
        self._check_params(df, x_col, y_col, weight_col, classes)
        if validate_filenames:
            df = self._filter_valid_filepaths(df, x_col)
        if class_mode not in ("input", "multi_output", "raw", None):
            df, classes = self._filter_classes(df, y_col, classes)
            num_classes = len(classes)
            self.class_indices = dict(zip(classes, range(len(classes))))
        else:
            self.class_indices = {}
        if self.split:
            n = len(df)
            df = df.iloc[int(self.split[0] * n):int(self.split[1] * n), :]
        self.classes = None
        if class_mode not in ("input", "multi_output", "raw", None):
            self.classes = self._get_classes(df, y_col)
        self.filenames = df[x_col].tolist()
        self._sample_weight = df[weight_col].values if weight_col else None
        self._targets = None
        if class_mode == "multi_output":
            self._targets = [np.array(df[col].tolist()) for col in y_col]
        if class_mode == "raw":
            self._targets = df[y_col].values
        self.samples = len(self.filenames)
        validated = "validated" if validate_filenames else "non-validated"
        if class_mode in ("input", "multi_output", "raw", None):
            print("Found %d %s image filenames." % (self.samples, validated))
        else:
            print("Found %d %s image filenames belonging to %d classes." % (self.samples, validated, num_classes))
        self._filepaths = [os.path.join(self.directory, f) for f in self.filenames]
        super().__init__(self.samples, batch_size, shuffle, seed)

    def _check_params(self, df, x_col, y_col, weight_col, classes):
        if self.class_mode not in self.allowed_class_modes:
            raise ValueError("Invalid class_mode: %s; expected one of: %s"
                             % (self.class_mode, self.allowed_class_modes))
        if self.class_mode == "multi_output" and not isinstance(y_col, list):
            raise TypeError('If class_mode="multi_output", y_col must be a list. Received %s.' % type(y_col).__name__)
        if x_col not in df.columns:
            raise KeyError("flow_from_dataframe: the dataframe has no column x_col=%r (columns: %s)"
                           % (x_col, list(df.columns)))
        for col in ([] if self.class_mode in ("input", None) else y_col if isinstance(y_col, list) else [y_col]):
            if col not in df.columns:
                raise KeyError("flow_from_dataframe: the dataframe has no column y_col=%r (columns: %s)"
                               % (col, list(df.columns)))
        if not all(df[x_col].apply(lambda x: isinstance(x, str))):
            raise TypeError("All values in column x_col=%s must be strings." % x_col)
        if self.class_mode in ("binary", "sparse") and not all(df[y_col].apply(lambda x: isinstance(x, str))):
            raise TypeError('If class_mode="%s", y_col="%s" column values must be strings.' % (self.class_mode, y_col))
        if self.class_mode == "binary":
            if classes:
                if len(set(classes)) != 2:
                    raise ValueError('If class_mode="binary" there must be 2 classes. %d class/es were given.'
                                     % len(set(classes)))
            elif df[y_col].nunique() != 2:
                raise ValueError('If class_mode="binary" there must be 2 classes. Found %d classes.'
                                 % df[y_col].nunique())
        if self.class_mode == "categorical" and not all(df[y_col].apply(lambda x: isinstance(x, (str, list, tuple)))):
            raise TypeError('If class_mode="categorical", y_col="%s" column values must be type string, list or '
                            "tuple." % y_col)
        if classes and self.class_mode in ("input", "multi_output", "raw", None):
            warnings.warn('`classes` will be ignored given the class_mode="%s"' % self.class_mode)
        if weight_col and not issubclass(df[weight_col].dtype.type, np.number):
            raise TypeError("Column weight_col=%s must be numeric." % weight_col)

    def _get_classes(self, df, y_col):
        labels = []
        for label in df[y_col]:
            if isinstance(label, (list, tuple)):
                labels.append([self.class_indices[c] for c in label])
            else:
                labels.append(self.class_indices[label])
        if all(isinstance(label, int) for label in labels):
            return np.array(labels, dtype="int32")
        return labels  # several labels per image (categorical): a list of lists, as in Keras

    @staticmethod
    def _filter_classes(df, y_col, classes):
        df = df.copy()

        def keep(labels):
            if isinstance(labels, (list, tuple)):
                labels = [c for c in labels if c in classes]
                return labels or None
            if isinstance(labels, str):
                return labels if labels in classes else None
            raise TypeError("Expect string, list or tuple but found %s in %s column " % (type(labels), y_col))

        if classes:
            classes = list(dict.fromkeys(classes))
            df[y_col] = df[y_col].apply(keep)
        else:
            found = set()
            for v in df[y_col]:
                found.update(v) if isinstance(v, (list, tuple)) else found.add(v)
            classes = sorted(found)
        return df.dropna(subset=[y_col]), classes

    def _filter_valid_filepaths(self, df, x_col):
        paths = df[x_col].map(lambda name: os.path.join(self.directory, name))
        mask = paths.apply(lambda p: p.lower().endswith(self.white_list_formats) and os.path.isfile(p))
        n_invalid = int((~mask).sum())
        if n_invalid:
            warnings.warn('Found %d invalid image filename(s) in x_col="%s". These filename(s) will be ignored.'
                          % (n_invalid, x_col))
        return df[mask]

    def _labels(self, index_array, batch_x):
        if self.class_mode == "raw":
            return self._targets[index_array]
        if self.class_mode == "multi_output":
            return [t[index_array] for t in self._targets]
        if self.class_mode == "categorical" and isinstance(self.classes, list):
            y = np.zeros((len(batch_x), len(self.class_indices)), dtype=self.dtype)
            for i, j in enumerate(index_array):
                y[i, self.classes[j]] = 1.0
            return y
        return super()._labels(index_array, batch_x)

    def _get_batches_of_transformed_samples(self, index_array):
        out = super()._get_batches_of_transformed_samples(index_array)
        if self._sample_weight is None or not isinstance(out, tuple):
            return out
        return out + (self._sample_weight[np.asarray(index_array, dtype=np.intp)],)

    @property
    def labels(self):
        return self._targets if self.class_mode in ("multi_output", "raw") else self.classes

    @property
    def sample_weight(self):
        return self._sample_weight


class NumpyArrayIterator(Iterator):
    """Batches from arrays in memory (ImageDataGenerator.flow)."""

    def __init__(self, x, y, image_data_generator, batch_size=32, shuffle=False, sample_weight=None, seed=None,
                 data_format="channels_last", save_to_dir=None, save_prefix="", save_format="png",
                 subset=None, ignore_class_split=False, dtype="float32"):
        self.dtype = dtype
        if isinstance(x, (tuple, list)):
            if not isinstance(x[1], list):
                x_misc = [np.asarray(x[1])]
            else:
                x_misc = [np.asarray(xx) for xx in x[1]]
            x = x[0]
            for xx in x_misc:
                if len(x) != len(xx):
                    raise ValueError("All of the arrays in `x` should have the same length. Found a pair with: "
                                     "len(x[0]) = %s, len(x[?]) = %s" % (len(x), len(xx)))
        else:
            x_misc = []
        if y is not None and len(x) != len(y):
            raise ValueError("`x` (images tensor) and `y` (labels) should have the same length. Found: "
                             "x.shape = %s, y.shape = %s" % (np.asarray(x).shape, np.asarray(y).shape))
        if sample_weight is not None and len(x) != len(sample_weight):
            raise ValueError("`x` (images tensor) and `sample_weight` should have the same length. Found: "
                             "x.shape = %s, sample_weight.shape = %s"
                             % (np.asarray(x).shape, np.asarray(sample_weight).shape))
        if subset is not None:
            if subset not in {"training", "validation"}:
                raise ValueError('Invalid subset name: %s; expected "training" or "validation".' % (subset,))
            split_idx = int(len(x) * image_data_generator._validation_split)
            if (y is not None and not ignore_class_split
                    and not np.array_equal(np.unique(y[:split_idx]), np.unique(y[split_idx:]))):
                raise ValueError("Training and validation subsets have different number of classes after the "
                                 "split. If your numpy arrays are sorted by the label, you might want to shuffle "
                                 "them.")
            sl = slice(None, split_idx) if subset == "validation" else slice(split_idx, None)
            x = x[sl]
            x_misc = [np.asarray(xx[sl]) for xx in x_misc]
            if y is not None:
                y = y[sl]
        self.x = np.asarray(x, dtype=self.dtype)
        self.x_misc = x_misc
        if self.x.ndim != 4:
            raise ValueError("Input data in `NumpyArrayIterator` should have rank 4. You passed an array with "
                             "shape %s" % (self.x.shape,))
        channels_axis = 3 if data_format == "channels_last" else 1
        if self.x.shape[channels_axis] not in {1, 3, 4}:
            warnings.warn('NumpyArrayIterator is set to use the data format convention "%s" (channels on axis '
                          "%d), i.e. expected either 1, 3, or 4 channels on axis %d. However, it was passed an "
                          "array with shape %s (%d channels)." % (data_format, channels_axis, channels_axis,
                                                                   self.x.shape, self.x.shape[channels_axis]))
        self.y = np.asarray(y) if y is not None else None
        self.sample_weight = np.asarray(sample_weight) if sample_weight is not None else None
        self.image_data_generator = image_data_generator
        self.data_format = data_format
        self.save_to_dir, self.save_prefix, self.save_format = save_to_dir, save_prefix, save_format
        super().__init__(self.x.shape[0], batch_size, shuffle, seed)

    def _get_batches_of_transformed_samples(self, index_array):
        gen = self.image_data_generator
        batch_x = np.zeros((len(index_array),) + self.x.shape[1:], dtype=self.dtype)
        for i, j in enumerate(index_array):
            x = self.x[j]
            params = gen.get_random_transform(x.shape)
            x = gen.apply_transform(x.astype(self.dtype), params)
            batch_x[i] = gen.standardize(x)
        if self.save_to_dir:
            for i, j in enumerate(index_array):
                img = array_to_img(batch_x[i], self.data_format, scale=True)
                fname = "{prefix}_{index}_{hash}.{format}".format(prefix=self.save_prefix, index=j,
                                                                  hash=np.random.randint(1e4),
                                                                  format=self.save_format)
                img.save(os.path.join(self.save_to_dir, fname))
        miscs = [xx[index_array] for xx in self.x_misc]
        output = (batch_x if not miscs else [batch_x] + miscs,)
        if self.y is None:
            return output[0]
        output += (self.y[index_array],)
        if self.sample_weight is not None:
            output += (self.sample_weight[index_array],)
        return output


BATCH_SOURCES = (Iterator, BatchFromFiles)  # covidx's iterators: batch_indices and load_batch (covidx.batches)
