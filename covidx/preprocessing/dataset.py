"""keras.utils.image_dataset_from_directory without tf.data: an iterable of (images, labels)
batches read from class sub-folders, which fit, evaluate and predict accept.

Files are listed, labelled, shuffled (with the seed) and split exactly as Keras does
(keras.src.utils.dataset_utils.index_directory and its validation split), so `file_paths` and
`class_names` are Keras's. It is not a tf.data.Dataset: `for x, y in ds`, `ds.take(n)`, `len(ds)`
and `ds[i]` work, and `.prefetch()`/`.cache()` return the dataset (covidx loads batches ahead
anyway); `.map()` and the other tf.data transformations do not exist. Images are resized with
Pillow's filter of the same name (TensorFlow's resize gives slightly different pixel values)."""
from __future__ import annotations

import os
import threading

import numpy as np

from .. import checks
from .iterators import BatchFromFiles
from .reader import check_target_size

ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
INTERPOLATIONS = {"bilinear": "bilinear", "nearest": "nearest", "bicubic": "bicubic", "area": "box",
                  "lanczos3": "lanczos", "lanczos5": "lanczos"}
CLASS_MODES = {"int": "sparse", "categorical": "categorical", "binary": "binary", None: None}


def _index_directory(directory, labels, class_names, shuffle, seed, follow_links, verbose):
    """(file paths, integer labels or None, class names): Keras's index_directory."""
    if labels == "inferred":
        subdirs = [d for d in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")]
        if class_names is not None:
            if not set(class_names).issubset(set(subdirs)):
                raise ValueError("The `class_names` passed did not match the names of the subdirectories of the "
                                 "target directory. Expected: %s (or a subset of it), but received: class_names=%s"
                                 % (subdirs, class_names))
            subdirs = list(class_names)
    else:
        subdirs = [""]
        if class_names is not None:
            raise ValueError("When argument `labels` is specified (or None), argument `class_names` cannot be "
                             "specified")
    class_names = subdirs
    filenames, found = [], []
    for index, subdir in enumerate(subdirs):
        base = os.path.join(directory, subdir)
        dirname = os.path.basename(base)
        walk = os.walk(base, followlinks=follow_links)
        for root, _, files in sorted(walk, key=lambda x: x[0]):
            for fname in sorted(files):
                if fname.lower().endswith(ALLOWLIST_FORMATS):
                    filenames.append(os.path.join(dirname, os.path.relpath(os.path.join(root, fname), base)))
                    found.append(index)
    if labels == "inferred":
        labels = np.array(found, dtype="int32")
    elif labels is not None:
        if len(labels) != len(filenames):
            raise ValueError("Expected the lengths of `labels` to match the number of files in the target directory. "
                             "len(labels) is %d while we found %d files in directory %s."
                             % (len(labels), len(filenames), directory))
        class_names = [str(label) for label in sorted(set(labels))]
    else:
        class_names = None
    if verbose:
        if labels is None:
            print("Found %d files." % len(filenames))
        else:
            print("Found %d files belonging to %d classes." % (len(filenames), len(class_names)))
    paths = [os.path.join(directory, f) for f in filenames]
    if shuffle:
        if seed is None:
            seed = np.random.randint(1e6)
        np.random.RandomState(seed).shuffle(paths)
        if labels is not None:
            np.random.RandomState(seed).shuffle(labels)
    return paths, labels, class_names


def _split(paths, labels, validation_split, subset):
    """Keras's get_training_or_validation_split: the last fraction is the validation subset."""
    if not validation_split:
        return paths, labels
    n_val = int(validation_split * len(paths))
    if subset == "training":
        print("Using %d files for training." % (len(paths) - n_val))
        return paths[:-n_val], (None if labels is None else labels[:-n_val])
    print("Using %d files for validation." % n_val)
    return paths[-n_val:], (None if labels is None else labels[-n_val:])


class ImageDataset(BatchFromFiles):
    """Batches of (images, labels) from a list of files: images float32 (batch, height, width,
    channels) with values 0..255; labels int32 (batch,), float32 one-hot or float32 (batch, 1)."""

    def __init__(self, paths, labels, class_names, label_mode, color_mode, batch_size, image_size, shuffle, seed,
                 interpolation, crop_to_aspect_ratio, num_classes):
        self._filepaths = list(paths)
        self.file_paths = self._filepaths
        self.class_names = class_names
        self.class_indices = {name: i for i, name in enumerate(class_names)} if class_names else {}
        self.label_mode, self.class_mode = label_mode, CLASS_MODES[label_mode]
        self.classes = None if labels is None else np.asarray(labels, dtype="int32")
        self.num_classes = num_classes
        self.color_mode, self.target_size = color_mode, tuple(image_size)
        channels = {"rgb": 3, "rgba": 4, "grayscale": 1}[color_mode]
        self.image_shape = self.target_size + (channels,)
        self.interpolation, self.keep_aspect_ratio = interpolation, crop_to_aspect_ratio
        self.data_format, self.dtype, self.xray = "channels_last", "float32", False
        self.image_data_generator, self.save_to_dir = None, None
        self.on_error, self.skipped, self._skipped_paths = "raise", [], set()
        self.lock = threading.Lock()
        self.n = len(self._filepaths)
        self.batch_size = int(batch_size) if batch_size is not None else max(self.n, 1)
        self.shuffle, self.seed, self._epoch = shuffle, seed, 0
        self._order = self._epoch_order()

    def _epoch_order(self):
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.RandomState((self.seed + self._epoch) % (1 << 32)).permutation(self.n)

    # --- a Keras Sequence of batches ---

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    def _batch_indices(self, i):
        if not 0 <= i < len(self):
            raise IndexError("batch %d of a dataset of %d batches" % (i, len(self)))
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]

    def _labels(self, index_array, batch_x):
        if self.classes is None:
            return None
        y = self.classes[index_array]
        if self.label_mode == "int":
            return y.astype("int32")
        if self.label_mode == "binary":
            return y.astype("float32")[:, None]
        out = np.zeros((len(y), self.num_classes), "float32")
        out[np.arange(len(y)), y] = 1
        return out

    def __getitem__(self, i):
        return self._get_batches_of_transformed_samples(self._batch_indices(i))

    def on_epoch_end(self):
        """The next pass reads the files in a new order (when shuffling)."""
        self._epoch += 1
        self._order = self._epoch_order()

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
        self.on_epoch_end()

    # --- the tf.data methods notebooks chain, where they mean something here ---

    def take(self, count):
        """The first `count` batches (all with -1), as a list."""
        count = len(self) if count is None or count < 0 else min(int(count), len(self))
        return [self[i] for i in range(count)]

    def prefetch(self, buffer_size=None):
        """Returns the dataset: covidx already loads the next batch while the engine computes."""
        return self

    def cache(self, filename=""):
        """Returns the dataset: fit() already caches the backbone's features of unaugmented images."""
        return self

    def __getattr__(self, name):
        if name in ("map", "filter", "batch", "unbatch", "shuffle", "repeat", "skip", "apply", "interleave", "zip"):
            raise AttributeError("covidx's image datasets are not tf.data datasets (there is no TensorFlow here): "
                                 "`.%s()` does not exist. Iterate over the batches, or use ImageDataGenerator for "
                                 "augmentation and preprocessing" % name)
        raise AttributeError(name)

    def __repr__(self):
        return "<covidx ImageDataset: %d files, %d batches of %d, classes %s>" % (
            self.n, len(self), self.batch_size, self.class_names)


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None, color_mode="rgb",
                                 batch_size=32, image_size=(256, 256), shuffle=True, seed=None, validation_split=None,
                                 subset=None, interpolation="bilinear", follow_links=False, crop_to_aspect_ratio=False,
                                 pad_to_aspect_ratio=False, data_format=None, format="tf", verbose=True):
    """Keras's image_dataset_from_directory: (images, labels) batches from one sub-folder per class
    (labels='inferred'), with Keras's file order, shuffling, seed and validation split. Returns an
    ImageDataset (a pair of them for subset='both'), not a tf.data.Dataset: see the module notes."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError("image_dataset_from_directory: no such directory: %s" % directory)
    if labels not in ("inferred", None):
        if not isinstance(labels, (list, tuple)):
            raise ValueError("`labels` argument should be a list/tuple of integer labels, of the same size as the "
                             "number of image files in the target directory, 'inferred' or None. Received: labels=%s"
                             % (labels,))
        if class_names:
            raise ValueError("You can only pass `class_names` if `labels=\"inferred\"`.")
    if label_mode not in CLASS_MODES:
        raise ValueError('`label_mode` argument must be one of "int", "categorical", "binary", or None. Received: '
                         "label_mode=%s" % (label_mode,))
    if labels is None or label_mode is None:
        labels, label_mode = None, None
    if color_mode not in ("rgb", "rgba", "grayscale"):
        raise ValueError('`color_mode` must be one of {"rgb", "rgba", "grayscale"}. Received: color_mode=%s'
                         % (color_mode,))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    elif not isinstance(image_size, (list, tuple)) or len(image_size) != 2:
        raise ValueError("Invalid `image_size` value. Expected a tuple of 2 integers. Received: image_size=%s"
                         % (image_size,))
    check_target_size(image_size, "image_size")
    checks.positive_int(batch_size, "batch_size")
    interpolation = interpolation.lower()
    if interpolation not in INTERPOLATIONS:
        raise ValueError("Argument `interpolation` should be one of %s (covidx resizes with Pillow). Received: "
                         "interpolation=%s" % (tuple(INTERPOLATIONS), interpolation))
    if pad_to_aspect_ratio:
        raise ValueError("image_dataset_from_directory: pad_to_aspect_ratio=True is not supported by covidx "
                         "(crop_to_aspect_ratio=True is)")
    if data_format not in (None, "channels_last"):
        raise ValueError("image_dataset_from_directory: covidx images are channels_last, got data_format=%r"
                         % (data_format,))
    if validation_split and not 0 < validation_split < 1:
        raise ValueError("`validation_split` must be between 0 and 1, received: %s" % (validation_split,))
    if (validation_split or subset) and not (validation_split and subset):
        raise ValueError("If `subset` is set, `validation_split` must be set, and inversely.")
    if subset not in ("training", "validation", "both", None):
        raise ValueError('`subset` must be either "training", "validation" or "both", received: %s' % (subset,))
    if validation_split and shuffle and seed is None:
        raise ValueError("If using `validation_split` and shuffling the data, you must provide a `seed` argument, to "
                         "make sure that there is no overlap between the training and validation subset.")
    if seed is None:
        seed = np.random.randint(1e6)
    paths, labels, class_names = _index_directory(directory, labels, class_names, shuffle, seed, follow_links,
                                                  verbose)
    if label_mode == "binary" and len(class_names) != 2:
        raise ValueError('When passing `label_mode="binary"`, there must be exactly 2 class_names. Received: '
                         "class_names=%s" % (class_names,))

    def dataset(part_paths, part_labels):
        if not part_paths:
            raise ValueError("No images found in directory %s. Allowed formats: %s" % (directory, ALLOWLIST_FORMATS))
        return ImageDataset(part_paths, part_labels, class_names, label_mode, color_mode, batch_size, image_size,
                            shuffle, seed, INTERPOLATIONS[interpolation], crop_to_aspect_ratio,
                            len(class_names) if class_names else 0)

    if subset == "both":
        return (dataset(*_split(paths, labels, validation_split, "training")),
                dataset(*_split(paths, labels, validation_split, "validation")))
    return dataset(*_split(paths, labels, validation_split, subset))
