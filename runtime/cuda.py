"""The cuda backend: a thin pycuda adapter (allocation, copies, prepared launches).
Everything else, the module text, grid, block and argument packing, is shared with
cuda-emu, which is how this path is tested on machines without a GPU."""
from __future__ import annotations

import numpy as np

INSTALL_HINT = ("the cuda backend needs pycuda and an NVIDIA GPU with its driver: "
                "pip install 'symnet[cuda]'; without a GPU use backend='cpu' or 'cuda-emu'")

_STRUCT = {"p": "P", "l": "q", "f": "f"}


def _driver():
    try:
        import pycuda.autoinit  # noqa: F401 - creates the context
        import pycuda.driver as drv
        from pycuda.compiler import SourceModule
    except ImportError as e:
        raise RuntimeError(f"{INSTALL_HINT} ({e})") from e
    except Exception as e:   # pycuda raises its own errors when no device/driver exists
        raise RuntimeError(f"{INSTALL_HINT} (CUDA initialisation failed: {e})") from e
    return drv, SourceModule


class CudaBackend:
    def __init__(self, plan):
        self.drv, SourceModule = _driver()
        self.module = SourceModule(plan.sources["cuda"], no_extern_c=True,
                                   options=["-std=c++17"])
        self.fns = {}
        for name, info in plan.kernels.items():
            fn = self.module.get_function(name)
            fn.prepare("".join(_STRUCT[t] for t in info.arg_types))
            self.fns[name] = fn
        self.device = {}

    def alloc(self, size):
        mem = self.drv.mem_alloc(4 * size)
        self.drv.memset_d32(mem, 0, size)
        return mem

    def upload(self, array):
        return self.drv.to_device(np.ascontiguousarray(array, dtype=np.float32))

    def bind(self, bid, array):
        array = np.ascontiguousarray(array, dtype=np.float32)
        mem = self.device.get(bid)
        if mem is None or mem[1] != array.nbytes:
            mem = (self.drv.mem_alloc(array.nbytes), array.nbytes)
            self.device[bid] = mem
        self.drv.memcpy_htod(mem[0], array)
        return mem[0]

    def pointers(self, buffers):
        return [int(b) if b is not None else 0 for b in buffers]

    def launch(self, step, packed):
        self.fns[step.name].prepared_call((step.grid, 1), (step.block, 1, 1),
                                          *[v for _, v in packed])

    def host_view(self, buffer, offset, size):
        host = np.empty(size, dtype=np.float32)
        self.drv.memcpy_dtoh(host, int(buffer) + 4 * offset)
        return host

    def host_writeback(self, buffer, offset, view):
        self.drv.memcpy_htod(int(buffer) + 4 * offset, view)

    def bind_output(self, bid, array):
        mem = self.device.get(bid)
        if mem is None or mem[1] != array.nbytes:
            mem = (self.drv.mem_alloc(array.nbytes), array.nbytes)
            self.device[bid] = mem
        return mem[0]

    def download(self, buffer, dst):
        self.drv.memcpy_dtoh(dst, buffer)

    def synchronize(self):
        self.drv.Context.synchronize()
