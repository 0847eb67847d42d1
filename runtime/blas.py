"""The BLAS the cpu backend's modules link: OpenBLAS from the ``scipy-openblas32``
wheel (the build NumPy and SciPy ship), its CBLAS symbols carrying the ``scipy_``
prefix. Generated modules call ``sgemm`` from their own OpenMP threads, so OpenBLAS
runs single-threaded: one thread pool (OpenMP's) serves kernels and GEMMs alike, and
no second pool of spinning threads competes for the cores."""
from __future__ import annotations

import ctypes
import functools
import os


@functools.lru_cache(maxsize=None)
def _package():
    try:
        import scipy_openblas32
    except ImportError:
        raise ImportError("the cpu backend links OpenBLAS from the scipy-openblas32 "
                          "package: pip install scipy-openblas32") from None
    return scipy_openblas32


@functools.lru_cache(maxsize=None)
def build_flags() -> tuple:
    """(compile flags, link flags) for a module that includes <cblas.h> and calls
    SN_SGEMM; loading OpenBLAS here also makes it single-threaded."""
    pkg = _package()
    inc, lib, name = pkg.get_include_dir(), pkg.get_lib_dir(), pkg.get_library()
    path = os.path.join(lib, f"lib{name}.so")
    handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    prefix = name.rsplit("openblas", 1)[0]              # "scipy_"
    getattr(handle, f"{prefix}openblas_set_num_threads")(1)
    return ([f"-I{inc}", f"-DSN_SGEMM={prefix}cblas_sgemm"],
            [f"-L{lib}", f"-l{name}", f"-Wl,-rpath,{lib}"])
