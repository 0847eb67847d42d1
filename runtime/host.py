"""Host memory for the backends that run in this process (cpu, cuda-emu): buffers
are NumPy arrays, inputs and outputs are bound without copies."""
from __future__ import annotations

import numpy as np


class HostMemory:
    def alloc(self, size):
        return np.zeros(size, dtype=np.float32)

    def upload(self, array):
        return np.array(array, dtype=np.float32)

    def bind(self, bid, array):
        return np.ascontiguousarray(array, dtype=np.float32).reshape(-1)

    def bind_output(self, bid, array):
        return array.reshape(-1)

    def pointers(self, buffers):
        return [b.ctypes.data if b is not None else 0 for b in buffers]

    def host_view(self, buffer, offset, size):
        return buffer[offset:offset + size]

    def host_writeback(self, buffer, offset, view):
        pass      # the view is the buffer

    def download(self, buffer, dst):
        flat = dst.reshape(-1)
        if flat.ctypes.data != buffer.ctypes.data:
            flat[...] = buffer[:dst.size]

    def synchronize(self):
        pass
