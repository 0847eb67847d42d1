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


def flatten_blobs(blobs, data=True, diff=True):
    """Lay the blobs' ``data`` (and ``diff``) end to end in flat float32 arrays, values
    kept, and make each blob's arrays views into them, so one kernel can update every
    blob at once (a solver's parameter update). Blob's API is unchanged: ``blob.data``
    is the view, and writing through it writes the flat array.

    Returns ``(data_flat, diff_flat, offsets)``; a flat array is None when not asked
    for. ``offsets[i]`` is where blob i starts. A blob whose count later changes
    (``reshape`` to another size) gets arrays of its own again; check with
    ``is_view_of``.
    """
    sizes = [b.count for b in blobs]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += n
    flats = []
    for want, attr in ((data, "_data"), (diff, "_diff")):
        if not want:
            flats.append(None)
            continue
        flat = np.empty(total, dtype=np.float32)
        for b, off, n in zip(blobs, offsets, sizes):
            view = flat[off:off + n]
            view[...] = getattr(b, attr).reshape(-1)
            setattr(b, attr, view.reshape(b.shape))
        flats.append(flat)
    return flats[0], flats[1], offsets


def is_view_of(blob, flat, offset, which="data") -> bool:
    """True when ``blob.data`` (or ``diff``) still lies in ``flat`` at ``offset``."""
    arr = blob._data if which == "data" else blob._diff
    if flat is None or not arr.flags.c_contiguous:
        return False
    return (arr.ctypes.data == flat.ctypes.data + 4 * offset
            and offset + arr.size <= flat.size and arr.base is not None)
