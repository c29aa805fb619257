"""Model files of other frameworks, made by the real frameworks (test-only dependencies: Keras 3
on its torch backend, PyTorch, h5py), and the checks the tests of those files share
(test_keras_files.py, test_keras_writer.py, test_torch_files.py, test_onnx_export.py,
test_damaged_model_files.py; conftest.py makes the `articles` and `torchvision_files` fixtures
from this module once per run): covidx's predictions must match the framework's own within 1e-5.

The test networks have random weights, conditioned like trained ones so that the comparison means
something: batchnorm statistics measured on real X-rays, small gains on the last batchnorm of each
residual branch (float32 error then stays ~1e-6 instead of growing through 50 layers), and a last
layer scaled so probabilities spread over roughly 0.1-0.9."""
import collections
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
from torch import nn  # noqa: E402

from conftest import ARTICLES_HEAD  # noqa: E402
from covidx.applications.resnet50 import ResNet50, preprocess_input  # noqa: E402
from covidx.data import sample_files  # noqa: E402
from covidx.preprocessing.image import img_to_array, load_img  # noqa: E402
from torch_resnet50 import calibrated_model  # noqa: E402

torch.set_num_threads(2)

SIZE = 128
TOLERANCE = 1e-5
HEAD_NAMES = ["dense", "dense_1", "dense_2", "dense_3", "dense_4"]
CLASSES = ["COVID-19", "Normal"]


def xrays(size, flip=False):
    """The 8 bundled chest X-rays at size x size, caffe-preprocessed."""
    x = np.stack([img_to_array(load_img(p, target_size=(size, size))) for p, _ in sample_files()])
    return np.ascontiguousarray(preprocess_input(x[:, :, ::-1] if flip else x))


def conditioned_reference(variant, head, seed):
    """A TorchResNet50 with random weights conditioned like a trained network (see the module
    docstring); batchnorm statistics come from the mirrored X-rays, not the test inputs."""
    calibration = torch.from_numpy(xrays(SIZE, flip=True))
    return calibrated_model(variant, head, seed, calibration, spread=2.0, residual_gain=0.2)


def assert_meaningful(probs):
    """Outputs far from saturation and varying between images, or a match would prove little."""
    assert 0.02 < probs.min() and probs.max() < 0.98, probs
    assert probs[:, 0].std() > 0.05, probs


def assert_matches(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE, np.abs(got - want).max()


# --- Keras models ------------------------------------------------------------------------------


def keras_articles_model(weights, size=SIZE):
    """The articles' model in Keras 3: ResNet50 without top, GAP, Dense(1024, relu) x3,
    Dense(512, relu), Dense(2, softmax); weights {'layer/weight': array}."""
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(base.output)
    for name, (units, activation) in zip(HEAD_NAMES, ARTICLES_HEAD):
        x = keras.layers.Dense(units, activation=activation, name=name)(x)
    model = keras.Model(base.input, x, name="articles")
    assert [v.path for v in model.weights] == list(weights)  # Keras's order is covidx's
    model.set_weights(list(weights.values()))
    return model


def keras_predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def covidx_order(weights, arch_kwargs):
    model = ResNet50(weights=None, **arch_kwargs)
    return {k: weights[k] for k in model._weight_keys()}


def save_legacy_weights(model, path):
    """save_weights in the legacy HDF5 layout (Keras 2's model.save_weights('x.h5'))."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


ARTICLES = dict(classes=2, head=(1024, 1024, 1024, 512))


def articles(tmp_path_factory):
    """The articles' Keras model, its predictions, and the files Keras writes of it."""
    ref = conditioned_reference("v1", ARTICLES_HEAD, seed=0)
    weights = covidx_order(ref.keras_weights(HEAD_NAMES), ARTICLES)
    model = keras_articles_model(weights)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x = xrays(SIZE)
    want = keras_predict(model, x)
    assert_meaningful(want)
    folder = tmp_path_factory.mktemp("keras")
    paths = {kind: folder / ("articles" + kind) for kind in (".h5", ".keras", ".weights.h5")}
    for path in paths.values():
        model.save_weights(path) if path.name.endswith(".weights.h5") else model.save(path)
    paths["legacy_weights.h5"] = folder / "articles_legacy_weights.h5"
    save_legacy_weights(model, paths["legacy_weights.h5"])
    return {"x": x, "want": want, "paths": paths, "weights": weights}


def keras_model_with_head(weights, head_layers, pre_layers=()):
    """Keras's ResNet50 (with `weights` for its layers) behind pre_layers at the input, then GAP
    and head_layers."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for layer in pre_layers:
        x = layer(x)
    base = keras.applications.ResNet50(weights=None, include_top=False, input_tensor=x)
    base.set_weights([weights[v.path] for v in base.weights])
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    for layer in head_layers:
        x = layer(x)
    return keras.Model(inputs, x)


def articles_head(weights):
    """The articles' Dense layers (Keras), with their weights set once built."""
    layers = [keras.layers.Dense(units, activation=activation, name=name)
              for name, (units, activation) in zip(HEAD_NAMES, ARTICLES_HEAD)]
    return layers, lambda: [layer.set_weights([weights[layer.name + "/kernel"], weights[layer.name + "/bias"]])
                            for layer in layers]


def input_norm_model(weights):
    """The articles' model behind LayerNormalization(axis=[1, 2, 3], center=False, scale=False), the
    input normalisation covidx's architecture records as "input_norm"."""
    head, set_head = articles_head(weights)
    norm = keras.layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-5,
                                           name="input_norm")
    model = keras_model_with_head(weights, head, [norm])
    set_head()
    return model


# --- PyTorch state_dicts -----------------------------------------------------------------------


def torchvision_state_dict(ref, fc_keys):
    """ref's weights under torchvision's ResNet50 keys (fc_keys: the head's Linear layers)."""
    sd = collections.OrderedDict()

    def put(prefix, module):
        if isinstance(module, nn.Conv2d):
            sd[prefix + ".weight"] = module.weight.detach().clone()
        else:
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                sd["%s.%s" % (prefix, name)] = getattr(module, name).detach().clone()

    put("conv1", ref.conv1)
    put("bn1", ref.bn1)
    for s, stage in enumerate(ref.stages):
        for b, block in enumerate(stage):
            p = "layer%d.%d" % (s + 1, b)
            for i in (1, 2, 3):
                put("%s.conv%d" % (p, i), getattr(block, "conv%d" % i))
                put("%s.bn%d" % (p, i), getattr(block, "bn%d" % i))
            if block.downsample is not None:
                put(p + ".downsample.0", block.downsample[0])
                put(p + ".downsample.1", block.downsample[1])
    for key, layer in zip(fc_keys, ref.head):
        sd[key + ".weight"] = layer.weight.detach().clone()
        sd[key + ".bias"] = layer.bias.detach().clone()
    return sd


def torchvision_files(tmp_path_factory):
    """A torchvision-layout ResNet50 with a replaced head (fc = Sequential(Linear, ReLU, Linear)),
    its predictions (softmax of its logits), and torch.save files of its state_dict."""
    ref = conditioned_reference("v1.5", [(256, "relu"), (2, "softmax")], seed=2)
    x = xrays(SIZE)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert_meaningful(want)
    sd = torchvision_state_dict(ref, ["fc.0", "fc.2"])
    folder = tmp_path_factory.mktemp("torch")
    paths = {"zip": folder / "resnet50.pt", "legacy": folder / "resnet50_legacy.pth",
             "checkpoint": folder / "checkpoint.pth.tar"}
    torch.save(sd, paths["zip"])
    torch.save(sd, paths["legacy"], _use_new_zipfile_serialization=False)
    wrapped = collections.OrderedDict(("module." + k, v) for k, v in sd.items())  # nn.DataParallel
    torch.save({"epoch": 7, "state_dict": wrapped, "class_names": CLASSES, "best_acc": 0.9}, paths["checkpoint"])
    return {"x": x, "want": want, "paths": paths, "sd": sd, "ref": ref}
