"""Library calls of CPU plans: strided batched GEMM through NumPy's BLAS."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _view(buf, offset, shape, strides):
    base = buf[offset:]
    return as_strided(base, shape=shape, strides=tuple(4 * s for s in strides))


def gemm(bufs, args, attrs):
    """C[b0, b1] = alpha A[b0, b1] @ B[b0, b1] + beta C[b0, b1] (argument order of the
    CUDA sn_gemm kernel)."""
    (nb0, nb1, M, N, K, alpha, beta, a, sAm, sAk, sA0, sA1, b, sBk, sBn, sB0, sB1,
     c, sC0, sC1) = args
    A = _view(bufs[a[0]], a[1], (nb0, nb1, M, K), (sA0, sA1, sAm, sAk))
    B = _view(bufs[b[0]], b[1], (nb0, nb1, K, N), (sB0, sB1, sBk, sBn))
    C = _view(bufs[c[0]], c[1], (nb0, nb1, M, N), (sC0, sC1, N, 1))
    if beta == 0.0 and alpha == 1.0:
        np.matmul(A, B, out=C)
    else:
        C *= beta
        C += alpha * np.matmul(A, B)


FUNCTIONS = {"gemm": gemm}
