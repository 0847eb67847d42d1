"""Products of a few rows (a fully connected layer at a small batch) on the cpu backend:
the column-split GEMV kernel for up to 8 rows against transposed weights, the BLAS GEMM
beyond, both against the NumPy reference and a float64 closed form."""
import numpy as np
import pytest

import symnet as sn
from snhelp import close

R = np.random.default_rng(11)


def _compile(fn, arrays, backend):
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", a.shape) for i, a in enumerate(arrays)]
        f = sn.function(xs, fn(*xs), backend=backend)
        return f, f(*arrays)


def _kernels(f):
    return [step.name for step in f.plan.steps]


# (M, K, N): odd K and N, a K with no multiple-of-8 tail, sizes under and over the
# kernel's threshold for a parallel loop (N * K >= 32768), and M past the GEMV's rows
CASES = [(m, 37, 9) for m in range(1, 10)] + \
        [(m, 1031, 301) for m in (1, 2, 3, 5, 8, 9)] + \
        [(1, 8, 1), (4, 64, 1), (7, 2048, 33), (2, 9216, 17)]


@pytest.mark.parametrize("M, K, N", CASES, ids=str)
def test_transposed_weights_with_bias(M, K, N):
    """y = x W^T + b as Caffe's InnerProduct computes it (W is N x K)."""
    x = R.standard_normal((M, K)).astype(np.float32)
    w = R.standard_normal((N, K)).astype(np.float32)
    b = R.standard_normal(N).astype(np.float32)

    def fn(xi, wi, bi):
        return sn.matmul(xi, sn.transpose(wi)) + bi
    f, out = _compile(fn, [x, w, b], "cpu")
    _, ref = _compile(fn, [x, w, b], "numpy")
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    tol = 2e-6 * np.sqrt(K) * 4
    close(out, ref, rtol=1e-4, atol=tol)
    close(out, want, rtol=1e-4, atol=tol)
    gemv = any(name.startswith("sn_gemv_cpu") for name in _kernels(f))
    assert gemv == (M <= 8), _kernels(f)


@pytest.mark.parametrize("M, K, N", [(1, 37, 9), (3, 1031, 301), (9, 37, 9)], ids=str)
def test_untransposed_weights(M, K, N):
    """x W with W stored K x N (InnerProduct's transpose: true) stays a BLAS GEMM."""
    x = R.standard_normal((M, K)).astype(np.float32)
    w = R.standard_normal((K, N)).astype(np.float32)
    f, out = _compile(lambda xi, wi: sn.matmul(xi, wi), [x, w], "cpu")
    close(out, x.astype(np.float64) @ w.astype(np.float64), rtol=1e-4, atol=1e-4)
    assert not any(name.startswith("sn_gemv_cpu") for name in _kernels(f))


def test_inner_product_layer_small_batch():
    """Caffe's InnerProduct layer at batch 3 with a 4-d bottom, forward and backward,
    against the NumPy reference backend."""
    x = R.standard_normal((3, 5, 3, 7)).astype(np.float32)
    w = R.standard_normal((19, 105)).astype(np.float32)
    b = R.standard_normal(19).astype(np.float32)

    def fn(xi, wi, bi):
        y = sn.matmul(sn.reshape(xi, (3, 105)), sn.transpose(wi)) + bi
        loss = sn.sum(y * y)
        return [y] + list(sn.grad(loss, [xi, wi, bi]))
    f, outs = _compile(fn, [x, w, b], "cpu")
    _, refs = _compile(fn, [x, w, b], "numpy")
    for out, ref in zip(outs, refs):
        close(out, ref, rtol=1e-4, atol=1e-3)
    assert any(name.startswith("sn_gemv_cpu") for name in _kernels(f))
