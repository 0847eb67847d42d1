"""The cuda backend: a thin pycuda adapter (device memory, counted copies, launches with
argument buffers packed once per plan) and cuBLAS (runtime/cublas.py) for GEMM steps.

Everything else (the module text, grids, argument lists, which memory lives where) is
shared with cuda-emu, which is how this path is tested on machines without a GPU.
pycuda and cuBLAS share the device's primary context (``pycuda.autoprimaryctx``), since
cuBLAS uses the runtime API.
"""
from __future__ import annotations

import functools
import struct

import numpy as np

from .memory import DeviceBuffer, count_transfer

INSTALL_HINT = ("the cuda backend needs pycuda and an NVIDIA GPU with its driver: "
                "pip install 'symnet[cuda]'; without a GPU use backend='cpu' or 'cuda-emu'")

_STRUCT = {"p": "P", "l": "q", "f": "f"}


def _driver():
    try:
        import pycuda.autoprimaryctx  # noqa: F401 - retains the primary context
        import pycuda.driver as drv
        from pycuda.compiler import SourceModule
    except ImportError as e:
        raise RuntimeError(f"{INSTALL_HINT} ({e})") from e
    except Exception as e:   # pycuda raises its own errors when no device/driver exists
        raise RuntimeError(f"{INSTALL_HINT} (CUDA initialisation failed: {e})") from e
    return drv, SourceModule


class CudaDevice:
    """The GPU's memory through pycuda; every host<->device copy is counted."""
    name = "cuda"
    is_host = False

    def __init__(self):
        self.drv, _ = _driver()
        dev = self.drv.Context.get_device()
        self.sm_count = dev.get_attribute(self.drv.device_attribute.MULTIPROCESSOR_COUNT)

    def alloc(self, nbytes) -> DeviceBuffer:
        nbytes = max(int(nbytes), 4)
        mem = self.drv.mem_alloc(nbytes)
        self.drv.memset_d8(mem, 0, nbytes)
        return DeviceBuffer(self, int(mem), nbytes, mem)

    def htod(self, dst, src: np.ndarray):
        src = np.ascontiguousarray(src, dtype=np.float32)
        self.drv.memcpy_htod(dst, src)
        count_transfer("h2d", src.nbytes)

    def dtoh(self, dst: np.ndarray, src):
        self.drv.memcpy_dtoh(dst, src)
        count_transfer("d2h", dst.nbytes)

    def dtod(self, dst, src, nbytes):
        self.drv.memcpy_dtod(dst, src, nbytes)

    def memset0(self, ptr, nbytes):
        self.drv.memset_d8(ptr, 0, nbytes)

    def check(self, ptr, nbytes=0) -> bool:
        return True          # the driver itself faults on a bad address


class CudaBackend:
    def __init__(self, plan):
        from .memory import get_device
        self.device = get_device("cuda")
        drv, SourceModule = _driver()
        self.drv = drv
        self.module = SourceModule(plan.sources["cuda"], no_extern_c=True,
                                   options=["-std=c++17"])
        self.fns = {name: self.module.get_function(name) for name in plan.kernels}
        self._blas = None

    def prepare(self, step, packed):
        """The launch with its argument buffer packed once (cuLaunchKernel's params)."""
        fmt = "".join(_STRUCT[t] for t, _ in packed)
        buf = struct.pack(fmt, *[v for _, v in packed])
        grid = _grid_for(step, self.device.sm_count)
        return functools.partial(self.fns[step.name]._launch_kernel, (grid, 1, 1),
                                 (step.block, 1, 1), buf, 0, None)

    def prepare_gemm(self, step, a, b, c):
        if self._blas is None:
            from .cublas import handle
            self._blas = handle()
        t = step.attrs
        return functools.partial(self._blas.sgemm_strided_batched, t["transa"], t["transb"],
                                 t["m"], t["n"], t["k"], t["alpha"], a, t["lda"],
                                 t["strideA"], b, t["ldb"], t["strideB"], t["beta"], c,
                                 t["ldc"], t["strideC"], t["batch"])

    def synchronize(self):
        self.drv.Context.synchronize()


def _grid_for(step, sm_count):
    """The plan's grid, re-derived for this device's SM count when the plan recorded
    the threads a step wants (grids are sized for a model device at lowering)."""
    extent = step.attrs.get("extent")
    per_sm = step.attrs.get("blocks_per_sm")
    if not extent or not per_sm:
        return step.grid
    return max(1, min(-(-int(extent) // step.block), sm_count * int(per_sm)))
