"""The cpu backend: the C module built with the system compiler (-O3, OpenMP, the C
library's vector math, OpenBLAS for GEMMs) and called through ctypes; buffers are
NumPy arrays."""
from __future__ import annotations

import ctypes
import functools
import os

from . import blas, cache
from .memory import get_device

CC = os.environ.get("CC", "gcc")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11",
         "-fno-math-errno", "-w"]


@functools.lru_cache(maxsize=None)
def compile_flags() -> list:
    """FLAGS, plus 512-bit vectors where the CPU has AVX-512: libmvec's 16-lane
    variants are what makes transcendental-heavy kernels memory-bound here."""
    flags = list(FLAGS)
    if " avx512f" in cache.cpu_identity():
        flags.append("-mprefer-vector-width=512")
    return flags

# float functions that glibc's libmvec provides in vector form
_VECTOR_MATH = ["expf", "logf", "sinf", "cosf", "tanf", "tanhf", "sinhf", "coshf", "atanf",
                "asinf", "acosf", "erff", "erfcf", "log1pf", "expm1f", "cbrtf", "exp2f",
                "log2f", "log10f"]
_VECTOR_MATH2 = ["powf", "atan2f"]


@functools.lru_cache(maxsize=None)
def vector_math_header() -> str:
    """Declarations that let gcc vectorise libm calls with libmvec's variants, for the
    functions this machine's libmvec has (IEEE semantics kept: no -ffast-math)."""
    try:
        mvec = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return ""
    lines = []
    for names, proto in ((_VECTOR_MATH, "float {0}(float);"),
                         (_VECTOR_MATH2, "float {0}(float, float);")):
        for name in names:
            arity = "v" if proto.count("float") == 2 else "vv"
            if all(hasattr(mvec, f"_ZGV{isa}N{w}{arity}_{name}")
                   for isa, w in (("b", 4), ("c", 8), ("d", 8), ("e", 16))):
                lines.append('__attribute__((simd("notinbranch"))) ' + proto.format(name))
    return "#include <math.h>\n" + "\n".join(lines) + "\n"


_CTYPES = {"p": ctypes.c_void_p, "l": ctypes.c_long, "f": ctypes.c_float}


class CpuBackend:
    """Kernels of the C module called through ctypes on host memory."""

    def __init__(self, plan):
        self.device = get_device("cpu")
        header = vector_math_header()
        blas_cflags, blas_libs = blas.build_flags()
        libs = blas_libs + (["-lmvec", "-lm"] if header else ["-lm"])
        source = header + plan.sources["cpu"]
        self.path = cache.build(source, ".c", CC, compile_flags() + blas_cflags, libs)
        self.lib = ctypes.CDLL(str(self.path))
        self.fns = {}
        for name, info in plan.kernels.items():
            fn = getattr(self.lib, name)
            fn.argtypes = [_CTYPES[t] for t in info.arg_types]
            fn.restype = None
            self.fns[name] = fn

    def prepare(self, step, packed):
        return functools.partial(self.fns[step.name], *[v for _, v in packed])

    def prepare_gemm(self, step, a, b, c):
        raise ValueError(f"cpu plans call BLAS from kernels; step {step.name!r} is a "
                         "device GEMM (the plan was lowered for another backend)")

    def synchronize(self):
        pass
