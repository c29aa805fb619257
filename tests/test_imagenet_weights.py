"""ResNet50(weights='imagenet'): Keras's cache first, else a download checked against the published
hash and written atomically, tested end to end against a local HTTP server serving a file in the
official layout (random weights; its md5 and size stand in for the published ones)."""
import hashlib
import http.server
import os
import socket
import threading

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from covidx import architecture, layer_table  # noqa: E402
from covidx.applications import imagenet  # noqa: E402
from covidx.applications.resnet50 import ResNet50, resnet50_architecture  # noqa: E402


def write_official_layout(path, include_top, seed):
    """Keras's ImageNet weight files as keras-applications wrote them: root attributes layer_names
    (every layer, with weights or not), backend and keras_version; a group per layer whose
    weight_names ('conv1_conv/kernel:0', ...) are datasets below it. Returns {name: array}."""
    arch = resnet50_architecture(include_top=include_top, pooling=None, classes=1000)
    rows = layer_table.build(arch, (224, 224), input_name="input_1")
    spec = dict(architecture.weight_spec(arch))
    rng = np.random.default_rng(seed)
    weights = {}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [row[0].encode() for row in rows]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name, *_ in rows:
            group = f.create_group(name)
            names = [("%s/%s:0" % (name, w)).encode() for w, _ in spec.get(name, [])]
            group.attrs["weight_names"] = names if names else np.zeros(0)
            for w, shape in spec.get(name, []):
                if w == "moving_variance":
                    array = rng.uniform(0.5, 1.5, shape)
                elif w in ("gamma",):
                    array = rng.uniform(0.8, 1.2, shape)
                else:
                    array = rng.normal(0.0, 0.05, shape)
                weights["%s/%s" % (name, w)] = array.astype(np.float32)
                group.create_dataset("%s/%s:0" % (name, w), data=weights["%s/%s" % (name, w)])
    return weights


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """{include_top: (file bytes, weights, md5)} for both official files."""
    folder = tmp_path_factory.mktemp("official")
    out = {}
    for include_top in (False, True):
        path = folder / imagenet.FILE_NAMES[include_top]
        weights = write_official_layout(path, include_top, seed=int(include_top))
        data = path.read_bytes()
        out[include_top] = (data, weights, hashlib.md5(data).hexdigest(), path)
    return out


class Server:
    """A local HTTP server: routes {file name: (bytes, mode)}; mode 'interrupt' announces the
    full length, sends a third and closes. Records the paths requested."""

    def __init__(self):
        self.routes, self.requests = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body, mode = server.routes.get(self.path.rsplit("/", 1)[-1], (None, None))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 3] if mode == "interrupt" else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/models/" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return "http://127.0.0.1:%d/" % port


@pytest.fixture
def env(tmp_path, monkeypatch, official):
    """KERAS_HOME in tmp_path, published hashes replaced by the fixture's, no proxies, a server
    serving both files."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    hashes = {imagenet.FILE_NAMES[top]: (md5, len(data)) for top, (data, _, md5, _) in official.items()}
    monkeypatch.setattr(imagenet, "FILE_HASHES", hashes)
    server = Server()
    for top, (data, *_rest) in official.items():
        server.routes[imagenet.FILE_NAMES[top]] = (data, None)
    monkeypatch.setenv(imagenet.BASE_URL_ENV, server.url)
    yield server, tmp_path / "keras" / "models"
    server.close()


def assert_weights(model, weights):
    for key, array in weights.items():
        np.testing.assert_array_equal(model.named_weights[key], array)


def test_download_verify_cache_then_no_network(env, official, monkeypatch):
    server, cache = env
    model = ResNet50(weights="imagenet", include_top=False, pooling="avg")
    assert_weights(model, official[False][1])
    assert len(server.requests) == 1 and server.requests[0].endswith(imagenet.FILE_NAMES[False])
    assert sorted(os.listdir(cache)) == [imagenet.FILE_NAMES[False]]
    assert (cache / imagenet.FILE_NAMES[False]).read_bytes() == official[False][0]
    monkeypatch.setenv(imagenet.BASE_URL_ENV, closed_port_url())  # offline from here on
    again = ResNet50(weights="imagenet", include_top=False, pooling=None)
    assert_weights(again, official[False][1])
    assert len(server.requests) == 1


def test_with_top_is_keras_default(env, official):
    model = ResNet50()  # include_top=True, weights='imagenet', classes=1000
    assert model.output_shape == (None, 1000)
    assert model.architecture["head"] == [{"name": "predictions", "units": 1000, "activation": "softmax"}]
    assert_weights(model, official[True][1])


def test_cache_hit_needs_no_network(env, official, monkeypatch):
    server, cache = env
    cache.mkdir(parents=True)
    (cache / imagenet.FILE_NAMES[False]).write_bytes(official[False][0])
    monkeypatch.setenv(imagenet.BASE_URL_ENV, closed_port_url())
    assert_weights(ResNet50(weights="imagenet", include_top=False), official[False][1])
    assert server.requests == []


def test_hash_mismatch_is_refused_and_nothing_cached(env, monkeypatch):
    server, cache = env
    name = imagenet.FILE_NAMES[False]
    monkeypatch.setitem(imagenet.FILE_HASHES, name, ("0" * 32, imagenet.FILE_HASHES[name][1]))
    with pytest.raises(imagenet.WeightsDownloadError, match="md5 .* not the published 0{32}") as e:
        ResNet50(weights="imagenet", include_top=False)
    assert str(cache / name) in str(e.value)
    assert not cache.exists() or os.listdir(cache) == []


def test_interrupted_download_leaves_no_partial_file(env):
    server, cache = env
    name = imagenet.FILE_NAMES[False]
    server.routes[name] = (server.routes[name][0], "interrupt")
    with pytest.raises(imagenet.WeightsDownloadError, match="interrupted"):
        ResNet50(weights="imagenet", include_top=False)
    assert len(server.requests) == 1
    assert not cache.exists() or os.listdir(cache) == []


def test_download_never_follows_a_planted_link(env, official):
    """A link planted at the temporary name downloads used to write through (`<file>.part-<pid>`):
    the download writes a new file of its own and the link's target is untouched."""
    server, cache = env
    name = imagenet.FILE_NAMES[False]
    os.makedirs(cache)
    victim = cache.parent / "victim.txt"
    victim.write_bytes(b"precious")
    link = cache / ("%s.part-%d" % (name, os.getpid()))
    os.symlink(victim, link)
    assert_weights(ResNet50(weights="imagenet", include_top=False), official[False][1])
    assert victim.read_bytes() == b"precious" and os.path.islink(link)
    assert sorted(os.listdir(cache)) == sorted([name, link.name])
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(cache / name).st_mode & 0o777 == 0o666 & ~umask


def test_offline_error_says_which_file_to_place_where(env, monkeypatch):
    _, cache = env
    monkeypatch.setenv(imagenet.BASE_URL_ENV, closed_port_url())
    name = imagenet.FILE_NAMES[True]
    with pytest.raises(imagenet.WeightsDownloadError) as e:
        ResNet50(weights="imagenet")
    message = str(e.value)
    assert "could not download" in message and name in message
    assert "place it at %s" % (cache / name) in message


def test_missing_file_on_the_server(env):
    server, _ = env
    del server.routes[imagenet.FILE_NAMES[False]]
    with pytest.raises(imagenet.WeightsDownloadError, match="could not download .*404"):
        ResNet50(weights="imagenet", include_top=False)


def test_damaged_cached_file_is_downloaded_again(env, official):
    server, cache = env
    cache.mkdir(parents=True)
    (cache / imagenet.FILE_NAMES[False]).write_bytes(official[False][0][:1000])
    assert_weights(ResNet50(weights="imagenet", include_top=False), official[False][1])
    assert len(server.requests) == 1
    assert (cache / imagenet.FILE_NAMES[False]).read_bytes() == official[False][0]


def test_cache_dir_follows_keras(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert imagenet.cache_dir() == str(tmp_path / "kh" / "models")
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert imagenet.cache_dir() == str(tmp_path / ".keras" / "models")


def test_imagenet_argument_checks():
    with pytest.raises(ValueError, match="classes"):
        ResNet50(weights="imagenet", classes=2)
    with pytest.raises(ValueError, match="classifier_activation"):
        ResNet50(weights="imagenet", classifier_activation="sigmoid")
    with pytest.raises(ValueError, match="variant"):
        ResNet50(weights="imagenet", include_top=False, variant="v1.5")
    with pytest.raises(ValueError, match="head"):
        ResNet50(weights="imagenet", head=(1024,))
    with pytest.raises(ValueError, match="weights"):
        ResNet50(weights="/nonexistent/weights.h5")


def test_keras_loads_the_official_layout_the_same_way(official):
    """Keras's own loader (by layer order, as ResNet50(weights=...) does) gives the same tensors."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    _, weights, _, path = official[False]
    reference = keras.applications.ResNet50(weights=str(path), include_top=False)
    model = ResNet50(weights=str(path), include_top=False)
    assert len(reference.get_weights()) == len(model.get_weights())
    for theirs, ours in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(theirs, ours)
