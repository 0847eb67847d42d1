"""The cuda-emu backend: the CUDA module text compiled for the host by the C++
compiler against include/sn_cuda_emu.h, launched with the same grid, block and
argument packing as the cuda backend. It is how the CUDA path runs without a GPU."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from . import cache
from .host import HostMemory

CXX = os.environ.get("CXX", "g++")
FLAGS = ["-O2", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-w"]
HEADER = Path(__file__).parent / "include" / "sn_cuda_emu.h"

_CTYPES = {"p": ctypes.c_void_p, "l": ctypes.c_long, "f": ctypes.c_float}
_CXX_TYPES = {"p": "float*", "l": "long", "f": "float"}


def launcher_source(name, arg_types, sync) -> str:
    params = ", ".join(f"{_CXX_TYPES[t]} a{i}" for i, t in enumerate(arg_types))
    args = ", ".join(f"a{i}" for i in range(len(arg_types)))
    sep = ", " if params else ""
    return (f'extern "C" int sn_launch_{name}(unsigned grid, unsigned block{sep}{params}) {{\n'
            f"  return sn_emu_launch(grid, block, {'true' if sync else 'false'}, "
            f"[=]() {{ {name}({args}); }});\n}}\n")


def uses_barriers(source, name) -> bool:
    """Whether kernel ``name`` synchronises its block (shared memory, __syncthreads)."""
    start = source.find(f"SN_KERNEL {name}(")
    end = source.find("SN_KERNEL ", start + 1)
    body = source[start:end if end > 0 else len(source)]
    return "__syncthreads" in body or "sn_block_" in body


class CudaEmuBackend(HostMemory):
    def __init__(self, plan):
        module = plan.sources[plan.backend]
        launchers = [launcher_source(k.name, k.arg_types, uses_barriers(module, k.name))
                     for k in plan.kernels.values()]
        source = HEADER.read_text() + "\n" + module + "\n" + "\n".join(launchers)
        self.path = cache.build(source, ".cpp", CXX, FLAGS)
        self.lib = ctypes.CDLL(str(self.path))
        self.fns = {}
        for name, info in plan.kernels.items():
            fn = getattr(self.lib, f"sn_launch_{name}")
            fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [_CTYPES[t] for t in info.arg_types]
            fn.restype = ctypes.c_int
            self.fns[name] = fn

    def launch(self, step, packed):
        status = self.fns[step.name](step.grid, step.block, *[v for _, v in packed])
        if status:
            raise RuntimeError(f"cuda-emu: OpenMP could not start {step.block} threads for a "
                               f"block of kernel {step.name}; raise OMP_THREAD_LIMIT")
