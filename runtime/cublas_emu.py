"""cuBLAS's strided-batched SGEMM for the cuda-emu backend: a C shim with cuBLAS's
argument list (column-major, transposes, leading dimensions, strides, batch) over
OpenBLAS's ``cblas_sgemm``, so the exact call sequence the cuda backend makes through
runtime/cublas.py runs, and is tested, on the host.

Arguments are validated as cuBLAS validates them; an invalid one raises
:class:`CublasArgumentError` naming it (cuBLAS would return
CUBLAS_STATUS_INVALID_VALUE).
"""
from __future__ import annotations

import ctypes
import functools
import operator
import os
from pathlib import Path

from . import blas, cache

CC = os.environ.get("CC", "gcc")
FLAGS = ["-O2", "-fPIC", "-shared", "-std=gnu11", "-w"]
SOURCE = Path(__file__).parent / "include" / "sn_cublas_emu.c"

# the shim's argument list, in order (cuBLAS's, without the handle)
ARGS = ("transa", "transb", "m", "n", "k", "alpha", "A", "lda", "strideA", "B", "ldb",
        "strideB", "beta", "C", "ldc", "strideC", "batch")
_INT32 = ("m", "n", "k", "lda", "ldb", "ldc", "batch")     # C ints in cuBLAS's prototype


class CublasArgumentError(ValueError):
    """An argument cuBLAS would reject (CUBLAS_STATUS_INVALID_VALUE)."""


@functools.lru_cache(maxsize=None)
def _shim():
    cflags, libs = blas.build_flags()
    path = cache.build(SOURCE.read_text(), ".c", CC, FLAGS + cflags, libs)
    lib = ctypes.CDLL(str(path))
    fn = lib.sn_sgemm_strided_batched
    L, LL, P, F = ctypes.c_long, ctypes.c_longlong, ctypes.c_void_p, ctypes.c_float
    fn.argtypes = [ctypes.c_int, ctypes.c_int, L, L, L, F, P, L, LL, P, L, LL, F, P, L, LL, L]
    fn.restype = ctypes.c_int
    return fn


def _why(name, values):
    v = values[name]
    if name in ("transa", "transb"):
        return f"{name}={v!r}: expected 0 (N), 1 (T) or 2 (C)"
    if name in ("m", "n", "k", "batch"):
        return f"{name}={v}: must be >= 0"
    rows = {"lda": ("m" if values["transa"] == 0 else "k", "A"),
            "ldb": ("k" if values["transb"] == 0 else "n", "B"),
            "ldc": ("m", "C")}[name]
    return (f"{name}={v}: must be >= max(1, {rows[0]}={values[rows[0]]}), the rows of "
            f"{rows[1]} as stored")


def sgemm_strided_batched(transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                          beta, C, ldc, strideC, batch):
    """For b in range(batch): C_b = alpha op(A_b) op(B_b) + beta C_b, column-major, with
    X_b = X + b * strideX (elements); A, B, C are addresses (ints)."""
    values = dict(zip(ARGS, (transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb,
                             strideB, beta, C, ldc, strideC, batch)))
    for name in ARGS:
        v = values[name]
        try:
            values[name] = float(v) if name in ("alpha", "beta") else operator.index(v)
        except TypeError:
            what = "a number" if name in ("alpha", "beta") else \
                "an address (int)" if name in ("A", "B", "C") else "an int"
            raise CublasArgumentError(f"sgemm_strided_batched: {name}={v!r} is not "
                                      f"{what}") from None
        if name in _INT32 and values[name] >= 2 ** 31:
            raise CublasArgumentError(f"sgemm_strided_batched: {name}={v} does not fit "
                                      "cuBLAS's 32-bit int")
    status = _shim()(*(values[name] for name in ARGS))
    if status:
        raise CublasArgumentError(f"sgemm_strided_batched: invalid argument "
                                  f"{_why(ARGS[status - 1], values)}")
