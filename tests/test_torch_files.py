"""PyTorch files (torchvision-layout ResNet50 state_dicts, torch.save's zip and legacy formats,
training checkpoints) read by covidx, made by the real PyTorch: covidx's predictions must match
PyTorch's own within 1e-5. The reference network: tests/framework_files.py."""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

import covidx  # noqa: E402
from covidx.applications.resnet50 import ResNet50  # noqa: E402
from covidx.formats import ModelFileError  # noqa: E402
from framework_files import CLASSES, assert_matches  # noqa: E402


@pytest.mark.parametrize("kind", ["zip", "legacy", "checkpoint"])
def test_torchvision_state_dicts_match_torch(torchvision_files, kind):
    model = covidx.load_model(torchvision_files["paths"][kind])
    assert model.architecture["variant"] == "v1.5"
    assert [(d["units"], d["activation"]) for d in model.architecture["head"]] == [(256, "relu"), (2, "softmax")]
    assert model.class_names == (CLASSES if kind == "checkpoint" else None)
    assert model.preprocessing == "torch"
    assert_matches(model.predict(torchvision_files["x"], verbose=0), torchvision_files["want"])


def test_torchvision_state_dict_into_an_architecture(torchvision_files):
    path = str(torchvision_files["paths"]["zip"])
    model = ResNet50(weights=path, variant="v1.5", classes=2, head=(256,), class_names=CLASSES)
    assert_matches(model.predict(torchvision_files["x"], verbose=0), torchvision_files["want"])
    logits = ResNet50(weights=path, variant="v1.5", classes=2, head=(256,), classifier_activation=None)
    with torch.no_grad():
        want, _ = torchvision_files["ref"].logits_and_output(torch.from_numpy(torchvision_files["x"]))
    assert np.abs(logits.predict(torchvision_files["x"], verbose=0) - want.numpy()).max() <= 1e-4
    with pytest.raises(ModelFileError, match="variant='v1.5'"):
        ResNet50(weights=path, classes=2, head=(256,))


def test_plain_torchvision_fc_and_no_fc(torchvision_files, tmp_path):
    sd = {k: v for k, v in torchvision_files["sd"].items() if not k.startswith("fc.")}
    torch.save(dict(sd, **{"fc.weight": torch.zeros(5, 2048), "fc.bias": torch.zeros(5)}), tmp_path / "fc.pt")
    model = covidx.load_model(tmp_path / "fc.pt", class_names=list("abcde"))
    assert model.architecture["head"] == [{"name": "fc", "units": 5, "activation": "softmax"}]
    assert model.class_names == list("abcde")
    torch.save(sd, tmp_path / "features.pt")  # fc replaced by nn.Identity: pooled features
    features = covidx.load_model(tmp_path / "features.pt")
    assert features.output_shape == (None, 2048)
