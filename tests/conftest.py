import os
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 (a test-only reference) runs on PyTorch here

# The tests import covidx from the environment (an installed wheel), never from the checkout.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

ARTICLES_HEAD = [(1024, "relu"), (1024, "relu"), (1024, "relu"), (512, "relu"), (2, "softmax")]
SIGMOID_HEAD = [(1, "sigmoid")]


@pytest.fixture(autouse=True)
def _restore_threads():
    import covidx

    n = covidx.get_num_threads()
    yield
    covidx.set_num_threads(n)
