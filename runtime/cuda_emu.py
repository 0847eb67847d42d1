"""The cuda-emu backend: the CUDA module text compiled for the host by the C++ compiler
against include/sn_cuda_emu.h, with an emulated device (runtime/memory.py's EmuDevice:
its own heap, counted copies).

It is launched as the cuda backend launches: each kernel takes one buffer of argument
addresses, packed once per plan (as cuLaunchKernel's kernelParams), and GEMM steps call a
shim with cuBLAS's argument list. Every address a kernel or GEMM receives must lie in a
device allocation; a host address is an error naming the kernel and the argument.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

from . import cache
from .memory import DeviceError, get_device

CXX = os.environ.get("CXX", "g++")
FLAGS = ["-O2", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-w"]
HEADER = Path(__file__).parent / "include" / "sn_cuda_emu.h"

_CTYPES = {"p": ctypes.c_void_p, "l": ctypes.c_long, "f": ctypes.c_float}
_CXX_TYPES = {"p": "float*", "l": "long", "f": "float"}


def launcher_source(name, arg_types, sync) -> str:
    """``sn_launch_<name>(grid, block, params)``: params holds one address per kernel
    argument, pointing at the argument's value (CUDA's kernelParams)."""
    unpack = "".join(f"  {_CXX_TYPES[t]} a{i} = *({_CXX_TYPES[t]}*)p[{i}];\n"
                     for i, t in enumerate(arg_types))
    args = ", ".join(f"a{i}" for i in range(len(arg_types)))
    return (f'extern "C" int sn_launch_{name}(unsigned grid, unsigned block, void** p) {{\n'
            f"{unpack}  return sn_emu_launch(grid, block, {'true' if sync else 'false'}, "
            f"[=]() {{ {name}({args}); }});\n}}\n")


# sn_emu_launch's error codes (include/sn_cuda_emu.h)
_LAUNCH_ERRORS = {
    1: "a block has more than 1024 threads",
    2: "deadlock: a barrier that not every live thread of the block reaches (divergent "
       "__syncthreads or warp primitive)",
    3: "a barrier or warp primitive in a kernel launched without fibers",
    4: "the fibers' stacks could not be mapped",
    5: "a fiber overflowed its stack",
}
_SYNC_TOKENS = ("__syncthreads", "sn_block_", "__shfl", "__syncwarp")


def uses_barriers(source, name) -> bool:
    """Whether kernel ``name`` synchronises its threads (__syncthreads, warp shuffles,
    __syncwarp, the prelude's sn_block_* reductions): its blocks then run as fibers."""
    start = source.find(f"SN_KERNEL {name}(")
    end = source.find("SN_KERNEL ", start + 1)
    body = source[start:end if end > 0 else len(source)]
    return any(t in body for t in _SYNC_TOKENS)


def gemm_extents(attrs):
    """The number of floats each of A, B and C spans in a column-major strided-batched
    GEMM with these attrs (cuBLAS's conventions)."""
    def span(rows, cols, ld, stride):
        if rows == 0 or cols == 0 or attrs["batch"] == 0:
            return 0
        return (attrs["batch"] - 1) * stride + (cols - 1) * ld + rows
    m, n, k = attrs["m"], attrs["n"], attrs["k"]
    a_rows, a_cols = (k, m) if attrs["transa"] else (m, k)
    b_rows, b_cols = (n, k) if attrs["transb"] else (k, n)
    return (span(a_rows, a_cols, attrs["lda"], attrs["strideA"]),
            span(b_rows, b_cols, attrs["ldb"], attrs["strideB"]),
            span(m, n, attrs["ldc"], attrs["strideC"]))


class CudaEmuBackend:
    def __init__(self, plan):
        self.device = get_device("cuda-emu")
        module = plan.sources[plan.backend]
        launchers = [launcher_source(k.name, k.arg_types, uses_barriers(module, k.name))
                     for k in plan.kernels.values()]
        source = HEADER.read_text() + "\n" + module + "\n" + "\n".join(launchers)
        self.path = cache.build(source, ".cpp", CXX, FLAGS)
        self.lib = ctypes.CDLL(str(self.path))
        self.fns = {}
        for name in plan.kernels:
            fn = getattr(self.lib, f"sn_launch_{name}")
            fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p]
            fn.restype = ctypes.c_int
            self.fns[name] = fn

    def prepare(self, step, packed):
        """A launch of ``step`` with its argument buffer packed now; every pointer
        argument is checked to be a device address."""
        values = []
        for i, (t, v) in enumerate(packed):
            if t == "p" and v and not self.device.check(v):
                raise DeviceError(f"cuda-emu: kernel {step.name}: argument {i} is "
                                  f"{v:#x}, not a device address (host memory must be "
                                  "copied to the device first)")
            values.append(_CTYPES[t](v))
        params = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        return functools.partial(self._launch, self.fns[step.name], step, params, values)

    @staticmethod
    def _launch(fn, step, params, _values):
        status = fn(step.grid, step.block, params)
        if status:
            why = _LAUNCH_ERRORS.get(status, f"status {status}")
            raise RuntimeError(f"cuda-emu: kernel {step.name} ({step.grid} blocks of "
                               f"{step.block} threads): {why}")

    def prepare_gemm(self, step, a, b, c):
        from . import cublas_emu
        for name, ptr, n in zip("ABC", (a, b, c), gemm_extents(step.attrs)):
            if n and not self.device.check(ptr, 4 * n):
                raise DeviceError(f"cuda-emu: GEMM {step.name}: matrix {name} at {ptr:#x} "
                                  f"({n} floats) is not in a device allocation")
        t = step.attrs
        return functools.partial(cublas_emu.sgemm_strided_batched, t["transa"], t["transb"],
                                 t["m"], t["n"], t["k"], t["alpha"], a, t["lda"],
                                 t["strideA"], b, t["ldb"], t["strideB"], t["beta"], c,
                                 t["ldc"], t["strideC"], t["batch"])

    def synchronize(self):
        pass
