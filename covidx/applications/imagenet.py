"""Keras's official ImageNet weights for ResNet50, found where Keras keeps them.

The files are looked up in Keras's cache ($KERAS_HOME/models, else ~/.keras/models; /tmp/.keras/
models when that is not writable, as Keras does), so a machine that has run Keras needs no
download. Otherwise the file is downloaded from Keras's URL (COVIDX_IMAGENET_BASE_URL replaces the
base), checked against its published size and md5, and moved into the cache only when complete,
so an interrupted download leaves nothing behind."""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request

from .. import atomic

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
BASE_URL_ENV = "COVIDX_IMAGENET_BASE_URL"
FILE_NAMES = {True: "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
              False: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"}
# (md5, size in bytes), as published with Keras's applications
FILE_HASHES = {
    "resnet50_weights_tf_dim_ordering_tf_kernels.h5": ("2cb95161c43110f7111970584f804107", 102967424),
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": ("4d473c1dd8becc155b73f8504c6f6626", 94765736),
}
TIMEOUT_S = 60
CHUNK = 1 << 20


class WeightsDownloadError(OSError):
    """The ImageNet weights are neither in the cache nor downloadable (offline, interrupted,
    or not the published file). The message says which file to place where."""


def cache_dir():
    """Keras's model cache: $KERAS_HOME/models, else ~/.keras/models, falling back to
    /tmp/.keras/models when the base is not writable."""
    base = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    probe = base
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)  # a missing directory is writable if its parent is
    if not os.access(probe, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models")


def base_url():
    url = os.environ.get(BASE_URL_ENV) or BASE_URL
    return url if url.endswith("/") else url + "/"


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_published_file(path, md5, size):
    return (size is None or os.path.getsize(path) == size) and _md5(path) == md5


def weights_path(include_top=True):
    """The path of the official weight file (with or without the top), downloading it into the
    cache first when it is not there or not the published file."""
    name = FILE_NAMES[bool(include_top)]
    md5, size = FILE_HASHES[name]
    path = os.path.join(cache_dir(), name)
    if os.path.isfile(path):
        if _is_published_file(path, md5, size):
            return path
        print("%s does not match the published file (md5 %s); downloading it again" % (path, md5), file=sys.stderr)
    download(base_url() + name, path, md5, size)
    return path


def _where_to_put(url, path, md5):
    return ("download %s on a machine with network access and place it at %s (md5 %s); "
            "covidx then uses it without a network" % (url, path, md5))


def download(url, path, md5, size=None):
    """Downloads url to path atomically: into a temporary file beside it, checked for length and
    md5, then renamed. Raises WeightsDownloadError, leaving no partial file."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise WeightsDownloadError("cannot create the weights cache %s (%s); %s"
                                   % (folder, e, _where_to_put(url, path, md5))) from None
    where = _where_to_put(url, path, md5)
    try:  # a new file under an unpredictable name (O_EXCL): a link planted at a predictable one was followed
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path)[:40], suffix=".part", dir=folder)
        os.fchmod(fd, atomic.new_file_mode())
        os.close(fd)
    except OSError as e:
        raise WeightsDownloadError("cannot write in the weights cache %s (%s); %s" % (folder, e, where)) from None
    print("Downloading data from %s" % url, file=sys.stderr)
    try:
        try:
            got_md5 = _fetch(url, tmp, size)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if isinstance(e, urllib.error.HTTPError):
                why = "HTTP %d %s" % (e.code, e.reason)
            else:
                why = e.reason if isinstance(e, urllib.error.URLError) else e
            raise WeightsDownloadError("could not download %s (%s); %s" % (url, why, where)) from None
        if got_md5 != md5:
            raise WeightsDownloadError("%s: the downloaded file has md5 %s, not the published %s (damaged, or "
                                       "not the official file); %s" % (url, got_md5, md5, where))
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise WeightsDownloadError("cannot write %s (%s); %s" % (path, e, where)) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _fetch(url, tmp, size):
    """Writes url's body to tmp; returns its md5. Refuses short or overlong bodies."""
    digest, received = hashlib.md5(), 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
        announced = response.headers.get("Content-Length")
        announced = int(announced) if announced and announced.isdigit() else None
        limit = size if size is not None else announced
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            received += len(chunk)
            if limit is not None and received > limit:
                raise WeightsDownloadError("more data than the %d bytes expected" % limit)
            out.write(chunk)
            digest.update(chunk)
    if announced is not None and received < announced:
        raise WeightsDownloadError("the download stopped after %d of %d bytes (interrupted)" % (received, announced))
    if size is not None and received != size:
        raise WeightsDownloadError("received %d bytes, the published file has %d" % (received, size))
    return digest.hexdigest()
