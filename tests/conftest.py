import os
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 (a test-only reference) runs on PyTorch here

# The tests import covidx from the environment (an installed wheel), never from the checkout.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
# The independent PyTorch ResNet50 (torch_resnet50.py) lives beside the training scripts, which
# train it; appended, so that nothing there hides an installed module.
WEIGHTS = os.path.join(os.path.dirname(HERE), "weights")
if WEIGHTS not in sys.path:
    sys.path.append(WEIGHTS)

# The slow tier: files whose tests take minutes (full networks against PyTorch and Keras, training,
# notebooks, clusters, memory caps). `bash tests/run.sh --quick` leaves them out; CI runs them all.
SLOW_FILES = {"test_engine_vs_torch.py", "test_notebooks.py", "test_distributed.py", "test_fit.py",
              "test_articles.py", "test_keras_parity.py", "test_unfamiliar.py", "test_memory.py",
              "test_precision.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


ARTICLES_HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu"), (2, "softmax")]
SIGMOID_HEAD = [(1, "sigmoid")]


@pytest.fixture(scope="session")
def articles(tmp_path_factory):
    """The articles' Keras model: its weights, test images, Keras's predictions, and the files Keras
    writes of it (.h5, .keras, .weights.h5, legacy weights); made once per run (framework_files.py)."""
    import framework_files

    return framework_files.articles(tmp_path_factory)


@pytest.fixture(scope="session")
def torchvision_files(tmp_path_factory):
    """A torchvision-layout ResNet50, its predictions and torch.save files of its state_dict; made
    once per run (framework_files.py)."""
    import framework_files

    return framework_files.torchvision_files(tmp_path_factory)


@pytest.fixture(autouse=True)
def _restore_threads():
    import covidx

    n = covidx.get_num_threads()
    yield
    covidx.set_num_threads(n)
