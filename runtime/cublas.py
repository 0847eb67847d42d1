"""cuBLAS for the cuda backend: a thin ctypes binding of the library from NVIDIA's
wheel (``nvidia-cublas`` for CUDA 13, in the ``cuda`` extra; the CUDA 12 wheel
``nvidia-cublas-cu12`` or a system libcublas also load). One handle per process,
created in pycuda's primary context (cuBLAS uses the runtime API, which works in the
primary context), issuing on the null stream.

Exact FP32 by default; set ``symnet.runtime.cublas.allow_tf32 = True`` (or the
environment variable ``SYMNET_ALLOW_TF32=1``) to let cuBLAS use TF32 tensor cores, as
PyTorch's ``torch.backends.cuda.matmul.allow_tf32``.

runtime/cublas_emu.py has the same ``sgemm_strided_batched`` argument list and runs it
on the host, which is how the calls are tested without a GPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os

allow_tf32 = os.environ.get("SYMNET_ALLOW_TF32", "") == "1"

INSTALL_HINT = "cuBLAS not found: pip install 'symnet[cuda]' (NVIDIA's nvidia-cublas wheel)"

CUBLAS_DEFAULT_MATH = 0           # cublasMath_t: FP32 computed in FP32
CUBLAS_TF32_TENSOR_OP_MATH = 3    # FP32 inputs rounded to TF32 for tensor cores

STATUS = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED",
          3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
          8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
          13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
          15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}

# (directory under the ``nvidia`` namespace package, library file)
_WHEEL_LIBS = [("cu13/lib", "libcublas.so.13"), ("cublas/lib", "libcublas.so.13"),
               ("cublas/lib", "libcublas.so.12")]


class CublasError(RuntimeError):
    """A cuBLAS call returned a status other than CUBLAS_STATUS_SUCCESS."""


def library_path() -> str:
    """The libcublas to load: from NVIDIA's wheel if installed, else the system's."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub, name in _WHEEL_LIBS:
            path = os.path.join(root, sub, name)
            if os.path.exists(path):
                return path
    found = ctypes.util.find_library("cublas")
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


def _load():
    path = library_path()
    folder = os.path.dirname(path)
    if folder:          # libcublas needs libcublasLt from the same release
        suffix = os.path.basename(path).split(".so", 1)[1]
        lt = os.path.join(folder, f"libcublasLt.so{suffix}")
        if os.path.exists(lt):
            ctypes.CDLL(lt, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(path)
    P, I, LL = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(P)]
    lib.cublasDestroy_v2.argtypes = [P]
    lib.cublasSetStream_v2.argtypes = [P, P]
    lib.cublasSetMathMode.argtypes = [P, I]
    lib.cublasSgemmStridedBatched.argtypes = [
        P, I, I, I, I, I, ctypes.POINTER(ctypes.c_float), P, I, LL, P, I, LL,
        ctypes.POINTER(ctypes.c_float), P, I, LL, I]
    for fn in (lib.cublasCreate_v2, lib.cublasDestroy_v2, lib.cublasSetStream_v2,
               lib.cublasSetMathMode, lib.cublasSgemmStridedBatched):
        fn.restype = I
    return lib


def _check(status, call):
    if status != 0:
        raise CublasError(f"{call} failed: {STATUS.get(status, f'cuBLAS status {status}')}")


class Cublas:
    """The process's cuBLAS handle (use :func:`handle`)."""

    def __init__(self):
        import pycuda.autoprimaryctx  # noqa: F401 - the primary context, current
        self.lib = _load()
        self._handle = ctypes.c_void_p()
        _check(self.lib.cublasCreate_v2(ctypes.byref(self._handle)), "cublasCreate_v2")
        _check(self.lib.cublasSetStream_v2(self._handle, None), "cublasSetStream_v2")
        self._tf32 = None
        self._math_mode()

    def _math_mode(self):
        if self._tf32 != bool(allow_tf32):
            mode = CUBLAS_TF32_TENSOR_OP_MATH if allow_tf32 else CUBLAS_DEFAULT_MATH
            _check(self.lib.cublasSetMathMode(self._handle, mode), "cublasSetMathMode")
            self._tf32 = bool(allow_tf32)

    def sgemm_strided_batched(self, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb,
                              strideB, beta, C, ldc, strideC, batch):
        """cublasSgemmStridedBatched: column-major, transa/transb 0 (N) or 1 (T), A, B, C
        device addresses (ints), strides in elements; alpha and beta on the host."""
        self._math_mode()
        a, b = ctypes.c_float(alpha), ctypes.c_float(beta)
        _check(self.lib.cublasSgemmStridedBatched(
            self._handle, transa, transb, m, n, k, ctypes.byref(a), A, lda, strideA,
            B, ldb, strideB, ctypes.byref(b), C, ldc, strideC, batch),
            "cublasSgemmStridedBatched")


_instance = None


def handle() -> Cublas:
    """The process's Cublas, created on first use."""
    global _instance
    if _instance is None:
        _instance = Cublas()
    return _instance
