"""sn.gradcheck itself: passes right gradients, names the worst element of wrong ones,
finds kinks of any slope and skips them, checks params, works in float64."""
import numpy as np
import pytest

import symnet as sn
from symnet import functions as F
from symnet import ops
from snhelp import check_grad

R = np.random.default_rng(8)
X = R.standard_normal((3, 4))


def test_passes_and_reports_counts():
    res = sn.gradcheck(lambda t: (t * sn.sigmoid(t)).sum(), [X])
    assert res and res.checked == X.size and res.skipped == 0
    assert res.max_abs_err < 1e-6
    assert "checked=12" in repr(res)


def test_non_scalar_output_is_projected():
    res = check_grad(lambda a, b: sn.tanh(a) * b, X, X.T.reshape(3, 4))
    assert res.checked == 24


def test_runs_in_float64():
    # in float32 these finite differences would be pure rounding noise
    check_grad(lambda t: (t * 1e3 + 1e4) ** 2 * 1e-8, X)


def test_wrong_gradient_names_worst_element(monkeypatch):
    def wrong_vjp(self, args, out, g):       # forgets to swap before and after
        return [F.graph_of(g).add(ops.WindowSum(self.axis, self.before, self.after), [g])]
    monkeypatch.setattr(ops.WindowSum, "vjp", wrong_vjp)
    with pytest.raises(sn.GradientError) as e:
        sn.gradcheck(lambda t: sn.window_sum(t, 1, 0, 2), [X])
    msg = str(e.value)
    assert "gradient of 'x0' (shape (3, 4)) at index (" in msg
    for part in ("derived", "finite differences", "abs error", "elements checked"):
        assert part in msg


@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
def test_kinks_are_skipped_at_any_slope(scale):
    x = np.array([[0.0, 1.0, -2.0, 0.0]])
    res = sn.gradcheck(lambda t: sn.maximum(t, 0) * scale, [x])
    assert (res.checked, res.skipped) == (2, 2)
    res = sn.gradcheck(lambda t: abs(t) * scale, [x])
    assert (res.checked, res.skipped) == (2, 2)
    # a kink on a steep slope: the jump is small next to the gradient, not to the tolerance
    res = sn.gradcheck(lambda t: sn.maximum(t, 0) * scale + 300 * t, [x])
    assert res.checked + res.skipped == 4


def test_max_ties_are_kinks():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [0.5, -1.0, 2.0, 0.25]])
    res = sn.gradcheck(lambda t: sn.max(t, axis=1), [x])
    assert res.skipped == 2 and res.checked == 6


def test_curvature_is_not_a_kink():
    x = np.array([0.0, 1e-3, 2.0, -0.5])
    res = sn.gradcheck(lambda t: (t * t * 50).sum() + sn.exp(3 * t).sum(), [x])
    assert res.skipped == 0 and res.checked == 4
    res = sn.gradcheck(lambda t: 1 / (t + 1.01), [x])
    assert res.skipped == 0


def test_all_elements_on_kinks_is_an_error():
    with pytest.raises(sn.GradientError, match="all 3 elements sit on kinks"):
        sn.gradcheck(lambda t: sn.maximum(t, 0).sum(), [np.zeros(3)])


def test_checks_params_by_name():
    def fn(t):
        w = sn.param("w", (4,), filler=sn.fillers.gaussian(std=1.0))
        b = sn.param("b", (4,), filler=sn.fillers.constant(0.1))
        return sn.tanh(t * w + b)
    res = check_grad(fn, X, params=["w", "b"])
    assert res.checked == X.size + 8
    res = check_grad(fn, X, params=["w"])
    assert res.checked == X.size + 4


def test_non_finite_values_fail():
    with pytest.raises(sn.GradientError, match="value is nan at the given point"):
        sn.gradcheck(lambda t: sn.log(t), [np.array([1.0, -1.0, 2.0])])
    with pytest.raises(sn.GradientError, match=r"index \(1,\).*derived -?inf"):
        sn.gradcheck(lambda t: sn.sqrt(t), [np.array([1.0, 0.0, 2.0])])
