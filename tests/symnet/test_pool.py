"""pool2d (max, ave) against a direct loop of Caffe's PoolingLayer: ceil rounding, the
padding rule for the last window, padding ignored by MAX and counted by AVE;
gradients; window_sum (and an LRN built from it)."""
import numpy as np
import pytest

import loops
import symnet as sn
from snhelp import check_grad, close, run

R = np.random.default_rng(5)

# (H, W, kernel, stride, pad)
POOL = [
    (4, 4, 2, 2, 0),
    (5, 5, 2, 2, 0),          # ceil: 3 outputs, the last window hangs over the edge
    (7, 6, 3, 2, 0),          # ceil on H (3 -> 3) and W (2.5 -> 3)
    (6, 6, 3, 2, 1),
    (5, 7, 3, 3, 1),
    (4, 4, 3, 2, 2),          # Caffe's rule drops the last window (starts in the padding)
    (6, 5, 2, 2, 1),          # dropped window again
    (7, 7, 3, 1, 1),
    (5, 6, (3, 2), (2, 1), (1, 0)),
    (3, 3, 3, 1, 0),
    (2, 2, 3, 1, 1),          # kernel larger than the image
]
IDS = [f"{h}x{w}k{k}s{s}p{p}" for h, w, k, s, p in POOL]


@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("h, w, k, s, p", POOL, ids=IDS)
def test_pool_matches_caffe_loop(method, h, w, k, s, p):
    x = R.standard_normal((2, 3, h, w))
    out = run(lambda a: sn.pool2d(a, k, s, p, method), x)
    want = loops.pool2d(x, k, s, p, method)
    assert out.shape == want.shape
    close(out, want)


@pytest.mark.parametrize("n, k, s, p, out", [(5, 2, 2, 0, 3), (4, 2, 2, 0, 2),
                                             (4, 3, 2, 2, 3), (6, 2, 2, 1, 4),
                                             (7, 3, 2, 1, 4), (112, 3, 2, 0, 56),
                                             (13, 3, 2, 0, 6), (14, 3, 2, 1, 8)])
def test_output_size(n, k, s, p, out):
    assert loops.pool_out_len(n, k, s, p) == out
    with sn.graph_scope():
        assert sn.max_pool2d(sn.input("x", (1, 1, n, n)), k, s, p).shape == (1, 1, out, out)


def test_max_ignores_padding_ave_counts_it():
    x = -np.ones((1, 1, 3, 3)) - np.arange(9).reshape(1, 1, 3, 3)   # all negative
    mx = run(lambda a: sn.max_pool2d(a, 2, 2, 1), x)
    close(mx, [[[[-1, -2], [-4, -5]]]])      # never the padded zeros
    av = run(lambda a: sn.avg_pool2d(a, 2, 2, 1), x)
    # 2x2 windows at stride 2 offset by the pad: every window covers 4 cells of the
    # padded image, of which 1, 2, 2 or 4 are real
    close(av, [[[[-1 / 4, (-2 - 3) / 4], [(-4 - 7) / 4, (-5 - 6 - 8 - 9) / 4]]]])


def test_ave_divisor_clipped_to_padded_image():
    # k=3, s=2, p=1 on 4: windows [-1,2) [1,4) [3,5): the last is clipped to H + p = 5,
    # so its divisor is 2 (not 3) along that axis
    x = np.ones((1, 1, 4, 4))
    out = run(lambda a: sn.avg_pool2d(a, 3, 2, 1), x)
    assert out.shape == (1, 1, 3, 3)
    edge = np.array([2 / 3, 1.0, 1 / 2])     # real cells / divisor per axis
    close(out[0, 0], np.outer(edge, edge))


@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("h, w, k, s, p", POOL[1::2], ids=IDS[1::2])
def test_pool_grad(method, h, w, k, s, p):
    x = R.permutation(2 * h * w).reshape(1, 2, h, w) / 7.0     # distinct: no max ties
    check_grad(lambda a: sn.pool2d(a, k, s, p, method), x)


def test_max_pool_grad_goes_to_first_maximum():
    x = np.array([[[[1.0, 5.0, 5.0], [5.0, 0.0, 2.0], [1.0, 5.0, 0.0]]]])
    with sn.graph_scope():
        a = sn.input("a", x.shape)
        g = sn.grad(sn.max_pool2d(a, 2, 1).sum(), a)
        out = sn.function([a], g, backend="numpy")(x)
    # windows (row-major): [1 5;5 0] -> (0,1); [5 5;0 2] -> (0,1); [5 0;1 5] -> (1,0);
    # [0 2;5 0] -> (2,1)
    want = np.zeros((3, 3))
    want[0, 1], want[1, 0], want[2, 1] = 2, 1, 1
    close(out[0, 0], want)


def test_pool_second_order():
    x = R.permutation(50).reshape(1, 2, 5, 5) / 9.0
    check_grad(lambda a: sn.grad((sn.max_pool2d(a, 3, 2, 1) ** 2).sum(), a) * a, x)
    check_grad(lambda a: sn.grad((sn.avg_pool2d(a * a, 3, 2, 1) ** 2).sum(), a), x)


@pytest.mark.parametrize("axis, before, after", [(1, 2, 2), (1, 0, 3), (-1, 1, 0), (0, 4, 4)])
def test_window_sum(axis, before, after):
    x = R.standard_normal((2, 5, 3))
    close(run(lambda a: sn.window_sum(a, axis, before, after), x),
          loops.window_sum(x, axis, before, after))
    check_grad(lambda a: sn.window_sum(a, axis, before, after), x)


def test_lrn_from_window_sum():
    """Caffe's across-channel LRN: x / (k + alpha/n * sum of x^2 over n channels)^beta."""
    x = R.standard_normal((2, 6, 3, 3))
    n, alpha, beta, k = 5, 1e-1, 0.75, 2.0
    lrn = lambda a: a / (k + alpha / n * sn.window_sum(a * a, 1, n // 2, n // 2)) ** beta
    want = x / (k + alpha / n * loops.window_sum(x * x, 1, 2, 2)) ** beta
    close(run(lrn, x), want)
    check_grad(lrn, x)
