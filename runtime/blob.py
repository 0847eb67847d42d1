"""Blob: Caffe's N-D array pair, ``data`` and ``diff``, float32 and C-contiguous.

Host memory is authoritative: compiled functions read a blob's arrays when they run
and write results back into them, so ``blob.data[...] = x`` is seen by the next call
on every backend (the cuda backend copies host values to the device around each call).
"""
from __future__ import annotations

import math

import numpy as np


class Blob:
    def __init__(self, shape=(), name=""):
        self.name = name
        self._data = np.zeros(tuple(int(d) for d in shape), dtype=np.float32)
        self._diff = np.zeros_like(self._data)

    # ---- arrays (assignment keeps the array object, as pycaffe users expect)
    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value):
        self._data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff[...] = value

    # ---- shape
    @property
    def shape(self) -> tuple:
        return self._data.shape

    @property
    def count(self) -> int:
        return int(self._data.size)

    @property
    def num_axes(self) -> int:
        return self._data.ndim

    def _legacy(self, axis):
        if self._data.ndim > 4:
            raise ValueError(f"blob '{self.name}': legacy accessors need at most 4 axes, "
                             f"shape is {self.shape}")
        shape = self.shape + (1,) * (4 - self._data.ndim)
        return shape[axis]

    @property
    def num(self):
        return self._legacy(0)

    @property
    def channels(self):
        return self._legacy(1)

    @property
    def height(self):
        return self._legacy(2)

    @property
    def width(self):
        return self._legacy(3)

    def reshape(self, *shape):
        """New shape; the values are kept when the count is unchanged, else zeroed."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob '{self.name}': negative size in shape {shape}")
        if shape == self.shape:
            return
        if math.prod(shape) == self.count:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._data = np.zeros(shape, dtype=np.float32)
            self._diff = np.zeros(shape, dtype=np.float32)

    def __repr__(self):
        return f"Blob('{self.name}', shape={self.shape})"

    @classmethod
    def wrap(cls, data, diff=None, name=""):
        """A Blob over existing float32 arrays (no copy): a Python layer's view of a
        compiled function's buffers."""
        blob = cls.__new__(cls)
        blob.name = name
        blob._data = data
        blob._diff = diff if diff is not None else np.zeros_like(data)
        return blob
