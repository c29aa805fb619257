"""covidx.calibration (the temperature fit and its folding into the last Dense layer) against
independent references: hand-computed likelihoods, SciPy's bounded scalar minimiser and a dense
grid, and softmax(z / T) computed directly."""
import math

import numpy as np
import pytest

from covidx.calibration import fit_temperature, fold_temperature, nll, unfold_temperature


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def test_nll_by_hand():
    # equal logits: -log(1/2); logits (log 3, 0) at label 0: -log(3/4); at T = 2 the same logits
    # are (log 3 / 2, 0): -log(sqrt(3) / (sqrt(3) + 1))
    assert nll([[0.0, 0.0]], [1]) == pytest.approx(math.log(2), rel=1e-12)
    assert nll([[math.log(3), 0.0]], [0]) == pytest.approx(-math.log(0.75), rel=1e-12)
    assert nll([[math.log(3), 0.0]], [0], 2.0) == pytest.approx(-math.log(math.sqrt(3) / (math.sqrt(3) + 1)),
                                                               rel=1e-12)
    # the mean over rows, and no overflow at large logits
    assert nll([[0.0, 0.0], [math.log(3), 0.0]], [1, 0]) == pytest.approx((math.log(2) - math.log(0.75)) / 2)
    assert nll([[1000.0, 0.0]], [1]) == pytest.approx(1000.0)


def overconfident_logits(seed, n=400, scale=3.0):
    """Logits of a classifier right about 80% of the time, sharper than its accuracy warrants."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    margin = rng.normal(1.0, 1.0, n) * scale
    z = np.zeros((n, 2))
    z[np.arange(n), y] = margin
    return z, y


@pytest.mark.parametrize("seed,scale", [(0, 3.0), (1, 0.3), (2, 8.0)])
def test_fit_temperature_matches_scipy_and_a_grid(seed, scale):
    from scipy.optimize import minimize_scalar

    z, y = overconfident_logits(seed, scale=scale)
    t = fit_temperature(z, y)
    ref = minimize_scalar(lambda lt: nll(z, y, math.exp(lt)), bounds=(math.log(0.05), math.log(20)),
                          method="bounded", options={"xatol": 1e-10})
    assert t == pytest.approx(math.exp(ref.x), rel=1e-4)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 4001))
    best = grid[np.argmin([nll(z, y, g) for g in grid])]
    assert t == pytest.approx(best, rel=2e-3)
    assert nll(z, y, t) <= nll(z, y, 1.0) + 1e-12
    if scale > 1:  # too sharp for its accuracy: the fitted temperature softens it
        assert t > 1


def test_fold_gives_softmax_over_temperature_and_unfold_undoes_it():
    rng = np.random.default_rng(3)
    w = {"dense_3/kernel": rng.normal(size=(6, 4)).astype(np.float32),
         "dense_4/kernel": rng.normal(size=(4, 2)).astype(np.float32),
         "dense_4/bias": rng.normal(size=2).astype(np.float32)}
    x = rng.normal(size=(5, 4)).astype(np.float32)
    t = 0.723
    folded = fold_temperature(w, "dense_4", t)
    assert folded["dense_3/kernel"] is not w["dense_3/kernel"]  # a copy: the input is untouched
    np.testing.assert_array_equal(folded["dense_3/kernel"], w["dense_3/kernel"])
    z = x.astype(np.float64) @ w["dense_4/kernel"] + w["dense_4/bias"]
    zf = x.astype(np.float64) @ folded["dense_4/kernel"] + folded["dense_4/bias"]
    np.testing.assert_allclose(softmax(zf), softmax(z / t), rtol=1e-6, atol=1e-7)
    record = {"method": "temperature", "temperature": t, "folded_into": "dense_4"}
    back = unfold_temperature(folded, record)
    for k in w:
        assert back[k].dtype == np.float32
        np.testing.assert_allclose(back[k], w[k], rtol=1e-6)
    assert unfold_temperature(folded, None) is None
    assert unfold_temperature(folded, {"method": "isotonic"}) is None


def test_unfold_float16_weights_in_float32():
    """A file stored in float16: the unfolded layer comes back in float32, as T * the stored value."""
    k16 = np.array([[0.1, -0.2], [0.3, 0.4]], np.float16)
    b16 = np.array([0.5, -0.5], np.float16)
    back = unfold_temperature({"d/kernel": k16, "d/bias": b16},
                              {"method": "temperature", "temperature": 0.5, "folded_into": "d"})
    assert back["d/kernel"].dtype == np.float32
    np.testing.assert_array_equal(back["d/kernel"], k16.astype(np.float32) * np.float32(0.5))
    np.testing.assert_array_equal(back["d/bias"], b16.astype(np.float32) * np.float32(0.5))
