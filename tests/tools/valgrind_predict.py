"""A small predict for valgrind's memcheck (tests/run_valgrind.sh): builds a model, runs the fast
and the plain C paths, the pooled features and an error path, then frees everything."""
import gc

import numpy as np

import covidx
from covidx.applications.resnet50 import ResNet50

covidx.set_num_threads(2)
model = ResNet50(weights=None, classes=2, head=(16,), seed=0)
x = np.random.default_rng(0).uniform(0, 1, size=(2, 40, 48, 3)).astype(np.float32)
p = model.predict(x, verbose=0)
model.features(x)
model.feature_map(x[:1])
ref = model.predict_reference(x[:1])
assert np.allclose(ref, p[:1], atol=1e-4)
try:
    model.predict(np.zeros((1, 8, 8, 3), np.float32), verbose=0)
except ValueError:
    pass
del model
gc.collect()
print("valgrind predict: ok")
