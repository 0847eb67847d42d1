"""sn.grad / sn.vjp: broadcasting gradients, second derivatives, Caffe's kink
conventions, zero gradients of integer-valued ops and of unrelated tensors, and the
backward pass being ordinary graph."""
import numpy as np
import pytest

import symnet as sn
from symnet import ops
from snhelp import check_grad, close

R = np.random.default_rng(7)
X = R.standard_normal((3, 4))


def grads(build, arrays, wrt_index=None):
    """Evaluate sn.grad(build(*inputs), inputs[wrt_index or all])."""
    arrays = [np.asarray(a, np.float64) for a in arrays]
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", a.shape) for i, a in enumerate(arrays)]
        wrt = xs if wrt_index is None else [xs[i] for i in wrt_index]
        gs = sn.grad(build(*xs), wrt)
        return sn.function(xs, gs, backend="numpy")(*arrays)


# ------------------------------------------------------------------ broadcasting

def test_broadcast_add_grad_sums_back():
    a, b, w = R.standard_normal((3, 1)), R.standard_normal((1, 4)), R.standard_normal((3, 4))
    ga, gb = grads(lambda x, y: ((x + y) * w).sum(), [a, b])
    assert ga.shape == (3, 1) and gb.shape == (1, 4)
    close(ga, w.sum(1, keepdims=True))
    close(gb, w.sum(0, keepdims=True))
    check_grad(lambda x, y: (x + y) * (x - y) / (1 + y * y), a, b)


def test_per_channel_weight_grad():
    x, c = R.standard_normal((2, 3, 4, 5)), R.standard_normal((1, 3, 1, 1))
    w = R.standard_normal((2, 3, 4, 5))
    gx, gc = grads(lambda t, s: (t * s * w).sum(), [x, c])
    close(gc, (x * w).sum(axis=(0, 2, 3), keepdims=True), rtol=1e-4)
    close(gx, c * w)
    check_grad(lambda t, s: sn.where(t > 0, t, s * t), x, c)
    check_grad(lambda t, s: t * s.reshape(3, 1, 1), x, c.reshape(3))


def test_broadcast_against_leading_axes_and_scalars():
    a, b = R.standard_normal((4,)), R.standard_normal((2, 3, 4))
    check_grad(lambda x, y: sn.sigmoid(x * y) + x, a, b)
    check_grad(lambda x: x * 3.0 - 1.0 / (2.0 + x * x), a)


# ------------------------------------------------------------------ second order

def test_second_derivative_tanh():
    (d2,) = grads(lambda x: sn.grad(sn.tanh(x).sum(), x).sum(), [X])
    t = np.tanh(X)
    close(d2, -2 * t * (1 - t * t), rtol=1e-5)


def test_second_derivative_softplus():
    (d2,) = grads(lambda x: sn.grad(sn.softplus(x).sum(), x).sum(), [X])
    s = 1 / (1 + np.exp(-X))
    close(d2, s * (1 - s))


def test_third_derivative_and_gradcheck_of_gradients():
    (d3,) = grads(lambda x: sn.grad(sn.grad((x ** 4).sum(), x).sum(), x).sum(), [X])
    close(d3, 24 * X, rtol=1e-5)
    check_grad(lambda x: sn.grad((sn.sigmoid(x) * x).sum(), x), X)
    check_grad(lambda x, y: sn.grad((sn.tanh(x @ y) ** 2).sum(), y), X, X.T)


# ------------------------------------------------------------------ kinks

KINK = np.array([-1.0, 0.0, 2.0])


@pytest.mark.parametrize("fn, want", [
    (lambda x: sn.maximum(x, 0), [0, 0, 1]),          # ReLU: 0 at 0
    (lambda x: sn.maximum(0.0, x), [0, 0, 1]),
    (lambda x: sn.minimum(x, 0), [1, 0, 0]),
    (lambda x: sn.abs(x), [-1, 0, 1]),                # |x|: sign(0) = 0
    (lambda x: abs(x), [-1, 0, 1]),
    (lambda x: sn.sign(x), [0, 0, 0]),
    (lambda x: sn.where(x > 0, x, 0.25 * x), [0.25, 0.25, 1]),   # PReLU: slope at 0
    (lambda x: sn.maximum(x, 0.1 * x), [0.1, 0.55, 1]),   # tie of two tensors: shared
    (lambda x: sn.maximum(x, x), [1, 1, 1]),
    (lambda x: sn.minimum(x * 2, x), [2, 1.5, 1]),
], ids=["relu", "relu_swapped", "min", "abs", "builtin_abs", "sign", "prelu", "leaky_max",
        "max_self", "min_tie"])
def test_kink_conventions(fn, want):
    (g,) = grads(lambda x: fn(x).sum(), [KINK])
    np.testing.assert_array_equal(g, np.asarray(want, np.float32))


def test_heaviside_half_is_overridden_in_second_order():
    # d/dx of relu'(x) * x = relu'(x) away from 0 and exactly 0 at 0
    (g,) = grads(lambda x: (sn.grad(sn.maximum(x, 0).sum(), x) * x).sum(), [KINK])
    np.testing.assert_array_equal(g, [0, 0, 1])


# ------------------------------------------------------------------ zero gradients

def test_integer_valued_ops_have_zero_gradient():
    s = R.standard_normal((3, 5))
    labels = np.array([[1.0], [4.0], [0.0]])
    gx, gl = grads(lambda x, l: (sn.argmax(x).reshape(3, 1) * l).sum()
                   + (x > 0).sum() + sn.eq(x, l).sum() + sn.gather(x, l, 1).sum() * 0
                   + sn.gather(x * 0 + 1, l, 1).sum(), [s, labels])
    np.testing.assert_array_equal(gx, 0)
    np.testing.assert_array_equal(gl, np.argmax(s, 1).reshape(3, 1))   # only via the product
    (gl,) = grads(lambda x, l: sn.gather(x, l, 1).sum(), [s, labels], wrt_index=[1])
    np.testing.assert_array_equal(gl, 0)


def test_unrelated_tensor_gets_zeros():
    with sn.graph_scope():
        x, y = sn.input("x", (3,)), sn.input("y", (2, 2))
        gx, gy = sn.grad((x * x).sum(), [x, y])
        assert gy.shape == (2, 2)
        out = sn.function([x, y], [gx, gy], backend="numpy")(np.arange(3), np.ones((2, 2)))
        close(out[0], 2 * np.arange(3))
        np.testing.assert_array_equal(out[1], 0)
        with pytest.raises(sn.GradientError, match="does not depend on 'y'"):
            sn.grad(x.sum(), y, disconnected="raise")


# ------------------------------------------------------------------ structure

def test_shared_arguments_accumulate():
    close(grads(lambda x: (x * x).sum(), [X])[0], 2 * X)
    close(grads(lambda x: (x * x * x).sum(), [X])[0], 3 * X * X, rtol=1e-5)
    close(grads(lambda x: (x / x).sum(), [X + 3])[0], 0, atol=1e-6)
    def diamond(x):
        y = sn.tanh(x)
        return (y * 2 + y * y + sn.exp(y)).sum()
    check_grad(diamond, X)


def test_grad_wrt_intermediate_and_self():
    with sn.graph_scope():
        x = sn.input("x", (3, 4))
        y = sn.sigmoid(x)
        loss = (y * y).sum()
        gy, gl = sn.grad(loss, [y, loss])
        out = sn.function([x], [gy, gl], backend="numpy")(X)
    close(out[0], 2 / (1 + np.exp(-X)))
    close(out[1], 1.0)


def test_grad_wrt_param_and_single_tensor_form():
    with sn.graph_scope():
        x = sn.input("x", (4,))
        w = sn.param("w", (4,), filler=sn.fillers.constant(0.5))
        gw = sn.grad((w * x * x).sum(), w)
        assert isinstance(gw, sn.Tensor)
        close(sn.function([x], gw, backend="numpy")(np.arange(4.0)), np.arange(4.0) ** 2)


def test_vjp_with_explicit_cotangents():
    with sn.graph_scope():
        x = sn.input("x", (3, 4))
        c = sn.input("c", (4, 3))
        (g,) = sn.vjp([sn.tanh(x).T], [c], [x])
        c_v = R.standard_normal((4, 3))
        out = sn.function([x, c], g, backend="numpy")(X, c_v)
    close(out, c_v.T * (1 - np.tanh(X) ** 2))


def test_backward_is_ordinary_graph():
    with sn.graph_scope() as g:
        x = sn.input("x", (3, 4))
        loss = sn.softplus(x @ x.T).sum()
        before = g.nx.number_of_nodes()
        gx = sn.grad(loss, x)
        assert g.nx.number_of_nodes() > before
        assert gx.graph is g
        for n in g.ancestors([gx.id]):
            op = g.op(n)
            assert isinstance(op, ops.Op)
            assert not callable(getattr(op, "backward", None))
        g.verify([gx.id])
        kinds = {g.op(n).kind for n in g.ancestors([gx.id])}
        assert {"matmul", "elementwise"} <= kinds


def test_grad_rejects_non_scalar_cost():
    with sn.graph_scope():
        x = sn.input("x", (3,))
        with pytest.raises(sn.GradientError, match=r"shape \(3,\).*scalar"):
            sn.grad(x * 2, x)
        with pytest.raises(sn.GraphError, match="cost must be a Tensor"):
            sn.grad(1.0, x)


# ------------------------------------------------------------------ backward ops' own vjps

def _add(op, *args):
    return args[0].graph.add(op, list(args))


PP = ops.PoolParams(3, 2, 1)
CP = ops.ConvParams(stride=2, pad=1, dilation=1, group=2)
DISTINCT = R.permutation(50).reshape(1, 2, 5, 5) / 7.0
BACKWARD_OPS = {
    "slice_grad": (lambda g: _add(ops.SliceGrad(((3, -1, -2), (1, 4, 1)), (4, 4)), g),
                   [R.standard_normal((2, 3))]),
    "conv_weight_grad": (lambda x, gy: _add(ops.ConvWeightGrad(CP, (3, 3)), x, gy),
                         [R.standard_normal((1, 4, 5, 5)), R.standard_normal((1, 2, 3, 3))]),
    "maxpool_grad": (lambda x, g: _add(ops.MaxPoolGrad(PP), x, g),
                     [DISTINCT, R.standard_normal((1, 2, 3, 3))]),
    "maxpool_select": (lambda x, g: _add(ops.MaxPoolSelect(PP), x, g),
                       [DISTINCT, R.standard_normal((1, 2, 5, 5))]),
    "avepool_grad": (lambda g: _add(ops.AvePoolGrad(PP, (1, 2, 5, 5)), g),
                     [R.standard_normal((1, 2, 3, 3))]),
    "gather_grad": (lambda g: _add(ops.GatherGrad(1, (3, 5)),
                                   sn.constant(np.array([[0, 0, 4], [2, -1, 9], [1, 3, 3]])), g),
                    [R.standard_normal((3, 3))]),
}


@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_backward_ops_have_correct_vjps(name):
    fn, arrays = BACKWARD_OPS[name]
    check_grad(fn, *arrays)
