"""conv2d and conv_transpose2d against direct loops (stride, pad, dilation, group,
output_padding), their adjointness, first and second order gradients."""
import numpy as np
import pytest

import loops
import symnet as sn
from snhelp import check_grad, close, run

R = np.random.default_rng(4)

# (input shape, weight shape, stride, pad, dilation, group)
CONV = [
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1, 1),
    ((2, 3, 6, 5), (4, 3, 3, 2), 1, 1, 1, 1),
    ((1, 2, 7, 7), (3, 2, 3, 3), 2, 0, 1, 1),
    ((1, 2, 8, 7), (2, 2, 3, 3), 3, 2, 1, 1),      # stride does not divide evenly
    ((1, 2, 7, 8), (2, 2, 3, 2), 1, (2, 1), (2, 3), 1),
    ((2, 4, 5, 5), (6, 2, 3, 3), 1, 1, 1, 2),
    ((1, 6, 6, 6), (6, 1, 3, 3), 2, 1, 1, 6),      # depthwise
    ((1, 4, 9, 7), (4, 2, 2, 3), (2, 1), (0, 1), (3, 2), 2),
    ((1, 3, 4, 4), (2, 3, 1, 1), 1, 0, 1, 1),
]
IDS = [f"x{c[0]}w{c[1]}s{c[2]}p{c[3]}d{c[4]}g{c[5]}" for c in CONV]


@pytest.mark.parametrize("xs, ws, s, p, d, g", CONV, ids=IDS)
def test_conv2d_matches_loops(xs, ws, s, p, d, g):
    x, w = R.standard_normal(xs), R.standard_normal(ws)
    out = run(lambda a, b: sn.conv2d(a, b, stride=s, pad=p, dilation=d, group=g), x, w)
    want = loops.conv2d(x, w, s, p, d, g)
    assert out.shape == want.shape
    close(out, want, atol=1e-4)


# (input shape, weight shape (in, out/group, kh, kw), stride, pad, dilation, group, out_pad)
DECONV = [
    ((1, 1, 3, 3), (1, 1, 3, 3), 1, 0, 1, 1, 0),
    ((2, 2, 3, 4), (2, 3, 3, 3), 2, 0, 1, 1, 0),
    ((1, 2, 4, 3), (2, 2, 4, 4), 2, 1, 1, 1, 0),       # the classic 2x upsampling
    ((1, 3, 3, 3), (3, 2, 3, 2), 3, 1, 1, 1, (2, 1)),
    ((1, 2, 3, 4), (2, 2, 3, 3), (2, 3), (1, 0), (2, 1), 1, (1, 2)),
    ((1, 4, 3, 3), (4, 1, 3, 3), 2, 1, 1, 2, 1),
    ((2, 4, 2, 3), (4, 3, 2, 3), (1, 2), (0, 1), (2, 2), 4, (0, 1)),
]
DIDS = [f"x{c[0]}w{c[1]}s{c[2]}p{c[3]}d{c[4]}g{c[5]}op{c[6]}" for c in DECONV]


@pytest.mark.parametrize("xs, ws, s, p, d, g, op", DECONV, ids=DIDS)
def test_conv_transpose2d_matches_loops(xs, ws, s, p, d, g, op):
    x, w = R.standard_normal(xs), R.standard_normal(ws)
    out = run(lambda a, b: sn.conv_transpose2d(a, b, s, p, d, g, output_padding=op), x, w)
    want = loops.conv_transpose2d(x, w, s, p, d, g, op)
    assert out.shape == want.shape
    close(out, want, atol=1e-4)


@pytest.mark.parametrize("xs, ws, s, p, d, g, op", DECONV, ids=DIDS)
def test_conv_transpose_is_adjoint_of_conv(xs, ws, s, p, d, g, op):
    """<deconv(x), y> == <x, conv(y)> for the same weights and parameters."""
    x, w = R.standard_normal(xs), R.standard_normal(ws)
    dx = loops.conv_transpose2d(x, w, s, p, d, g, op)
    y = R.standard_normal(dx.shape)
    cy = run(lambda a, b: sn.conv2d(a, b, stride=s, pad=p, dilation=d, group=g), y, w)
    assert cy.shape == x.shape
    np.testing.assert_allclose(np.vdot(dx, y), np.vdot(x, cy), rtol=1e-4)


def test_conv_transpose2d_output_size():
    x, w = R.standard_normal((1, 2, 3, 3)), R.standard_normal((2, 1, 3, 3))
    out = run(lambda a, b: sn.conv_transpose2d(a, b, stride=2, output_size=(7, 8)), x, w)
    assert out.shape == (1, 1, 7, 8)
    close(out, loops.conv_transpose2d(x, w, 2, 0, 1, 1, (0, 1)), atol=1e-4)


@pytest.mark.parametrize("xs, ws, s, p, d, g", CONV[1:8:2], ids=IDS[1:8:2])
def test_conv2d_grad(xs, ws, s, p, d, g):
    check_grad(lambda a, b: sn.conv2d(a, b, s, p, d, g),
               R.standard_normal(xs), R.standard_normal(ws))


@pytest.mark.parametrize("xs, ws, s, p, d, g, op", DECONV[2:7:2], ids=DIDS[2:7:2])
def test_conv_transpose2d_grad(xs, ws, s, p, d, g, op):
    check_grad(lambda a, b: sn.conv_transpose2d(a, b, s, p, d, g, output_padding=op),
               R.standard_normal(xs), R.standard_normal(ws))


def test_conv2d_second_order():
    """Gradients of gradients: the conv family's vjps are themselves differentiable."""
    x, w = R.standard_normal((1, 2, 5, 4)), R.standard_normal((2, 1, 3, 2))
    conv = lambda a, b: sn.conv2d(a, b, stride=(2, 1), pad=1, group=2)
    check_grad(lambda a, b: sn.grad((conv(a, b) ** 2).sum(), a), x, w)
    check_grad(lambda a, b: sn.grad((sn.tanh(conv(a, b))).sum(), b), x, w)


def test_conv2d_with_bias_and_numpy_weights():
    x = R.standard_normal((2, 3, 5, 5))
    w, b = R.standard_normal((4, 3, 3, 3)), R.standard_normal(4)
    out = run(lambda a: sn.conv2d(a, sn.constant(w), pad=1) + b.reshape(1, 4, 1, 1), x)
    close(out, loops.conv2d(x, w, 1, 1, 1, 1) + b.reshape(1, 4, 1, 1), atol=1e-4)
