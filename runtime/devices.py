"""Which backends work on this machine."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def cuda_usable() -> bool:
    """True when pycuda imports and a CUDA device can be initialised."""
    try:
        import pycuda.driver as drv
        drv.init()
        return drv.Device.count() > 0
    except Exception:   # ImportError, or pycuda's LogicError/RuntimeError without a driver
        return False
